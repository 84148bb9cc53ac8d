#!/bin/sh
# Prefect server on PostgreSQL; the database credentials come from the compose secrets named by
# POSTGRES_USER_FILE / POSTGRES_PASSWORD_FILE and live only in this process's environment.
set -eu
PREFECT_SERVER_DATABASE_USER="$(cat "$POSTGRES_USER_FILE")"
PREFECT_SERVER_DATABASE_PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
export PREFECT_SERVER_DATABASE_USER PREFECT_SERVER_DATABASE_PASSWORD
exec prefect server start --host 0.0.0.0 --port 4200
