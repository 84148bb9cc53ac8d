#!/bin/bash
# Arguments of `minio server ...` are accepted and ignored: moto serves S3 on 9000 regardless.
set -euo pipefail
mkdir -p /srv/console
echo '<html><body><h1>S3 stand-in (moto)</h1><p>The MinIO console is not available offline.</p></body></html>' \
    > /srv/console/index.html
/opt/moto/bin/python -m http.server 9001 --directory /srv/console >/dev/null 2>&1 &
exec /opt/moto/bin/moto_server -H 0.0.0.0 -p 9000
