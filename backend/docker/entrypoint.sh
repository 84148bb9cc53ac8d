#!/bin/sh
# Entry point of every container of the runtime image. Prefect reads its credentials only from the
# environment: here they are read from the compose secrets named by *_FILE variables, so they live in
# this process tree and never in the container's configuration (`docker inspect`).
set -eu
for name in PREFECT_API_AUTH_STRING PREFECT_SERVER_API_AUTH_STRING; do
    eval "file=\${${name}_FILE:-}"
    if [ -n "$file" ]; then
        value="$(cat "$file")" || { echo "entrypoint: cannot read $file (${name}_FILE)" >&2; exit 2; }
        export "$name=$value"
    fi
done
exec "$@"
