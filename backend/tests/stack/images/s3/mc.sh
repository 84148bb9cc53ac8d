#!/bin/bash
# Only `mc ready local`, as MinIO's healthcheck uses it: ready once the S3 gateway answers and the volume server
# has registered with the master (before that, writes fail).
if [ "${1:-}" = ready ]; then
    curl -fs -o /dev/null http://127.0.0.1:9000/healthz || exit 1
    exec grep -q '"DataCenters":\[{' <(curl -fs http://127.0.0.1:9333/dir/status)
fi
echo "mc stand-in: only 'mc ready local' is supported" >&2
exit 2
