#!/bin/sh
# Prefect server on PostgreSQL; the database credentials come from the compose secrets named by
# POSTGRES_USER_FILE / POSTGRES_PASSWORD_FILE (and Redis's password from REDIS_PASSWORD_FILE, `ha` profile)
# and live only in this process's environment.
# Without arguments: `prefect server start` (API, UI and background services). With arguments: that
# `prefect` command, e.g. the `ha` profile's `server start ... --no-services`, `server services start`,
# `server database upgrade -y` (docker-compose.yml).
set -eu
PREFECT_SERVER_DATABASE_USER="$(cat "$POSTGRES_USER_FILE")"
PREFECT_SERVER_DATABASE_PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
export PREFECT_SERVER_DATABASE_USER PREFECT_SERVER_DATABASE_PASSWORD
# The `ha` profile: Redis's password (the compose secret named by REDIS_PASSWORD_FILE) for prefect-redis's
# connections and, inside PREFECT_SERVER_DOCKET_URL (percent-encoded), for the background services' Docket.
if [ -n "${REDIS_PASSWORD_FILE:-}" ]; then
    PREFECT_REDIS_MESSAGING_PASSWORD="$(cat "$REDIS_PASSWORD_FILE")"
    PREFECT_REDIS_WORKER_CLEANUP_QUEUE_PASSWORD="$PREFECT_REDIS_MESSAGING_PASSWORD"
    PREFECT_SERVER_DOCKET_URL="$(printf '%s' "$PREFECT_REDIS_MESSAGING_PASSWORD" | python -c '
import os, sys, urllib.parse
url = urllib.parse.urlsplit(os.environ["PREFECT_SERVER_DOCKET_URL"])
if "@" not in url.netloc:  # a URL with credentials of its own is left as it is
    url = url._replace(netloc=":" + urllib.parse.quote(sys.stdin.read(), safe="") + "@" + url.netloc)
print(url.geturl())
')"
    export PREFECT_REDIS_MESSAGING_PASSWORD PREFECT_REDIS_WORKER_CLEANUP_QUEUE_PASSWORD PREFECT_SERVER_DOCKET_URL
fi
if [ "$#" -eq 0 ]; then
    set -- server start --host 0.0.0.0 --port 4200
fi
exec prefect "$@"
