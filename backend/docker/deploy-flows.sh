#!/bin/sh
# Register the deployments of prefect.yaml. The LTS mount path of flow-run containers is
# LTS_STORAGE_ROOT of prefect-vars.toml (the one place it is configured); prefect.yaml reads it
# from the environment at deploy time. ARCHIVAL_JOBS_LIMIT and RETRIEVAL_JOBS_LIMIT (.env) are applied
# to their deployments afterwards.
set -eu
LTS_STORAGE_ROOT="$(python -c 'import tomllib; print(tomllib.load(open("prefect-vars.toml", "rb"))["lts"]["LTS_STORAGE_ROOT"])')"
ARCHIVER_HEARTBEAT_S="$(python -c 'import tomllib; print(tomllib.load(open("prefect-vars.toml", "rb"))["archiver"].get("ARCHIVER_HEARTBEAT_S", 30))')"
LTS_AUDIT_CRON="$(python -c 'import tomllib; print(tomllib.load(open("prefect-vars.toml", "rb"))["lts"].get("LTS_AUDIT_CRON", "0 2 * * *"))')"
python -m archiver.config.job_limits --check   # before anything is deployed
export LTS_STORAGE_ROOT ARCHIVER_HEARTBEAT_S LTS_AUDIT_CRON
prefect --no-prompt deploy --all --prefect-file prefect.yaml
# The jobs-at-once limits of .env (prefect.yaml cannot take them from the environment).
exec python -m archiver.config.job_limits
