#!/bin/bash
# Only `mc ready local`, as MinIO's healthcheck uses it.
if [ "${1:-}" = ready ]; then
    exec curl -fsS -o /dev/null http://127.0.0.1:9000/moto-api/
fi
echo "mc stand-in: only 'mc ready local' is supported" >&2
exit 2
