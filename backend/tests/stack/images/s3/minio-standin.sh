#!/bin/bash
# `minio server DIR ...` as SeaweedFS: master, volume server, filer and S3 gateway in one process, all of their
# data under DIR. No identities are configured, so (as with the earlier moto stand-in) any access key is accepted;
# the S3 policies themselves are checked by backend/tests/integration/test_s3_policies.py.
set -euo pipefail
data=${2:-/data}
mkdir -p "$data" /srv/console
echo '<html><body><h1>S3 stand-in (SeaweedFS)</h1><p>The MinIO console is not available offline.</p></body></html>' \
    > /srv/console/index.html
python3 -m http.server 9001 --directory /srv/console >/dev/null 2>&1 &
# One volume per new collection (bucket) instead of 7.
export WEED_MASTER_VOLUME_GROWTH_COPY_1=1
exec /opt/seaweedfs/bin/weed server -dir="$data" -ip=127.0.0.1 -ip.bind=0.0.0.0 -filer -s3 -s3.port=9000 \
    -master.port=9333 -volume.port=8080 -filer.port=8888 -master.peers=none -master.telemetry=false \
    -s3.port.iceberg=0 -s3.port.lance=0 -s3.autoCreateBucket=false -s3.allowDeleteBucketNotEmpty=false \
    -volume.max=10000 -master.volumeSizeLimitMB=1024 -volume.preStopSeconds=0
