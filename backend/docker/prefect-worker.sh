#!/bin/sh
# A Prefect Docker worker on work pool $1, running at most $2 flow-run containers at once. The pool gets the base job template named by
# PREFECT_JOB_TEMPLATE whether or not it exists already (`worker start --base-job-template`
# would apply it only when creating the pool); other pool settings (e.g. its concurrency
# limit set by an operator) are kept.
set -eu
pool="$1"
limit="${2:?give the most flow runs this worker runs at once}"
template="${PREFECT_JOB_TEMPLATE:?set PREFECT_JOB_TEMPLATE to the base job template file}"
if [ ! -r "$template" ]; then
    echo "prefect-worker: base job template $template (PREFECT_JOB_TEMPLATE) not found in $(pwd)" >&2
    exit 2
fi
if prefect work-pool inspect "$pool" >/dev/null 2>&1; then
    prefect work-pool update "$pool" --base-job-template "$template"
else
    prefect work-pool create "$pool" --type docker --base-job-template "$template"
fi
# The host name makes the name unique per container, so scaled workers are told apart in the UI.
exec prefect worker start --pool "$pool" --type docker --name "$pool-$(hostname)" --limit "$limit" --with-healthcheck
