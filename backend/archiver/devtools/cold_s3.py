"""A cold storage tier in front of a real S3 server, for tests: an HTTP proxy that refuses to read archived objects
until they were restored, as AWS S3 does for the GLACIER and DEEP_ARCHIVE storage classes.

Every request is forwarded byte for byte (its Host header kept, so the client's SigV4 signature, made for the
proxy's address, stays valid upstream; `Expect` is dropped, it is never signed) except RestoreObject, which the
proxy answers itself. S3's rules, and where they come from:

- An object's storage class is the one it was written with (`x-amz-storage-class` on PutObject and
  CreateMultipartUpload); the upstream server (SeaweedFS) keeps it and names it on HEAD and GET answers, which is
  where the proxy reads it. Cold: GLACIER and DEEP_ARCHIVE (GLACIER_IR is read at once).
- GetObject of a cold object that is not restored: 403 `InvalidObjectState`, the XML error body naming the
  StorageClass ("Object is archived and inaccessible until restored", botocore's S3 `InvalidObjectState`
  exception; docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html).
- RestoreObject (`POST /bucket/key?restore`, docs.aws.amazon.com/AmazonS3/latest/API/API_RestoreObject.html):
  202 Accepted when a restore starts, 409 `RestoreAlreadyInProgress` while it runs, 200 OK when the object is
  restored already (its expiry set anew from the Days asked); 403 `InvalidObjectState` for an object of another
  storage class; 404 `NoSuchKey` for no object.
- HeadObject and GetObject name the restore in `x-amz-restore`: `ongoing-request="true"` while it runs,
  `ongoing-request="false", expiry-date="<HTTP date>"` once the copy is readable (API_HeadObject.html; boto3's
  `Object.restore`). After the expiry date the restored copy is gone: GET is refused again.
- CopyObject and UploadPartCopy of an archived source that is not restored: 403 `InvalidObjectState`
  (API_CopyObject.html: an archived object is copied only once restored).

What a test sets (`ColdTier`): how long a restore takes, that restores never finish, how long a restored copy
stays (in place of S3's Days), how long RestoreObject takes to answer, and that every restored copy expires now
(`expire_restores`). What it reads: each RestoreObject asked (`restore_requests`) and its answer
(`restore_answers`). Not modelled: SelectObjectContent, the Intelligent-Tiering archive tiers, restore tiers'
differing speeds, S3 rounding expiry dates to midnight UTC, virtual-host-style addressing (path style only, as the
archiver's clients use). The proxy does not check
RestoreObject's signature (it asks upstream about the object with its own account).
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from botocore.exceptions import ClientError

from archiver.storage.s3 import S3Credentials, error_code, s3_client

COLD_STORAGE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
UNSIGNED_HOP_HEADERS = frozenset({"expect", "connection", "keep-alive", "proxy-connection"})
COPY_BUFFER = 256 * 1024


@dataclass
class Restore:
    etag: str  # of the object version restored: a new object under the key is cold again
    ready_at: float | None  # monotonic; None: never (ColdTier.restores_fail)
    days: int  # asked for in the RestoreRequest
    expires_at: float | None = None  # monotonic; set when ready


@dataclass
class ColdTier:
    """The cold tier's behaviour, changeable while the proxy runs."""

    restore_delay_s: float = 1.0
    restores_fail: bool = False  # a restore asked now never finishes
    restored_for_s: float | None = None  # how long a restored copy stays; None: the Days asked, as S3
    restore_latency_s: float = 0.0  # how long RestoreObject takes to answer (and to take effect)
    restores: dict[tuple[str, str], Restore] = field(default_factory=dict)
    restore_requests: list[tuple[str, str, str]] = field(default_factory=list)  # (bucket, key, tier), in order
    restore_answers: list[tuple[str, str, int]] = field(default_factory=list)  # (bucket, key, HTTP status), in order
    lock: threading.Lock = field(default_factory=threading.Lock)

    def expire_restores(self) -> None:
        """Every restored copy gone, as once the days asked for have passed (restores under way are dropped too)."""
        with self.lock:
            self.restores.clear()

    def state(self, bucket: str, key: str, etag: str, now: float) -> Restore | None:
        """The restore of this version of the object, if one is asked and not expired."""
        restore = self.restores.get((bucket, key))
        if restore is None or restore.etag != etag:
            return None
        if restore.ready_at is not None and restore.expires_at is None and now >= restore.ready_at:
            restore.expires_at = restore.ready_at + self.lifetime(restore)
        if restore.expires_at is not None and now >= restore.expires_at:
            del self.restores[(bucket, key)]
            return None
        return restore

    def lifetime(self, restore: Restore) -> float:
        return self.restored_for_s if self.restored_for_s is not None else restore.days * 86400.0


def is_readable(restore: Restore | None, now: float) -> bool:
    return restore is not None and restore.ready_at is not None and now >= restore.ready_at


def restore_header(restore: Restore | None, now: float) -> str | None:
    if restore is None:
        return None
    if not is_readable(restore, now) or restore.expires_at is None:
        return 'ongoing-request="true"'
    expiry = time.time() + (restore.expires_at - now)
    return f'ongoing-request="false", expiry-date="{formatdate(expiry, usegmt=True)}"'


def error_body(code: str, message: str, resource: str, **extra: str) -> bytes:
    """S3's XML error document (docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html)."""
    fields = "".join(f"<{name}>{value}</{name}>" for name, value in extra.items())
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
        f"{fields}<Resource>{resource}</Resource><RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    ).encode()


def parse_restore_request(body: bytes) -> tuple[int, str]:
    """Days and tier of a RestoreRequest document (tier Standard when not given, as S3)."""
    days, tier = 1, "Standard"
    with contextlib.suppress(ET.ParseError):
        root = ET.fromstring(body)
        for element in root.iter():
            name = element.tag.rsplit("}", 1)[-1]
            if name == "Days" and element.text:
                days = int(element.text)
            elif name == "Tier" and element.text:
                tier = element.text
    return days, tier


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ColdS3Server

    def log_message(self, *args) -> None:
        pass

    def _bucket_key(self) -> tuple[str, str]:
        path = urlsplit(self.path).path
        bucket, _, key = path.lstrip("/").partition("/")
        return unquote(bucket), unquote(key)

    def _is_restore(self) -> bool:
        query = urlsplit(self.path).query
        return self.command == "POST" and "restore" in [part.split("=")[0] for part in query.split("&")]

    def do_POST(self) -> None:
        if self._is_restore():
            self._restore()
        else:
            self._forward()

    def do_GET(self) -> None:
        self._forward()

    do_HEAD = do_DELETE = do_GET

    def do_PUT(self) -> None:
        source = self.headers.get("x-amz-copy-source")
        if source is not None and self._is_frozen_source(source):
            self._read_body()
            self._answer(
                403,
                error_body(
                    "InvalidObjectState", "The source object of the COPY action is not in the active tier", self.path
                ),
            )
        else:
            self._forward()

    def _is_frozen_source(self, source: str) -> bool:
        """Whether CopyObject's (or UploadPartCopy's) source is archived and not restored: S3 copies it only once
        restored (API_CopyObject.html)."""
        bucket, _, key = unquote(source.split("?")[0]).lstrip("/").partition("/")
        try:
            head = self.server.admin.head_object(Bucket=bucket, Key=key)
        except ClientError:
            return False  # upstream answers the copy itself (NoSuchKey, AccessDenied)
        if head.get("StorageClass", "STANDARD") not in COLD_STORAGE_CLASSES:
            return False
        now = time.monotonic()
        with self.server.tier.lock:
            return not is_readable(self.server.tier.state(bucket, key, head["ETag"], now), now)

    def _read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", "application/xml")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _restore(self) -> None:
        bucket, key = self._bucket_key()
        days, tier = parse_restore_request(self._read_body())
        tier_state = self.server.tier
        time.sleep(tier_state.restore_latency_s)
        try:
            head = self.server.admin.head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            code = "NoSuchKey" if error_code(e) in ("404", "NoSuchKey") else error_code(e)
            status = e.response["ResponseMetadata"]["HTTPStatusCode"]
            self._answer(status, error_body(code, "The specified key does not exist.", self.path))
            return
        storage_class = head.get("StorageClass", "STANDARD")
        if storage_class not in COLD_STORAGE_CLASSES:
            self._answer(
                403,
                error_body(
                    "InvalidObjectState", "Restore is not allowed for the object's current storage class", self.path
                ),
            )
            return
        now = time.monotonic()
        with tier_state.lock:
            tier_state.restore_requests.append((bucket, key, tier))
            restore = tier_state.state(bucket, key, head["ETag"], now)
            if restore is None:
                ready_at = None if tier_state.restores_fail else now + tier_state.restore_delay_s
                restore = Restore(head["ETag"], ready_at, days)
                tier_state.restores[(bucket, key)] = restore
                status = 202
            elif not is_readable(restore, now):
                status = 409
            else:
                restore.days = days
                restore.expires_at = now + tier_state.lifetime(restore)
                status = 200
            tier_state.restore_answers.append((bucket, key, status))
        under_way = error_body("RestoreAlreadyInProgress", "Object restore is already in progress", self.path)
        self._answer(status, under_way if status == 409 else b"")

    def _forward(self) -> None:
        upstream = http.client.HTTPConnection(self.server.upstream_host, self.server.upstream_port, timeout=300)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in UNSIGNED_HOP_HEADERS:
                    upstream.putheader(name, value)
            upstream.endheaders()
            self._copy_request_body(upstream)
            response = upstream.getresponse()
            headers = response.getheaders()
            extra: dict[str, str] = {}
            if self.command in ("GET", "HEAD") and response.status in (200, 206, 304):
                refused = self._cold_answer(dict((k.lower(), v) for k, v in headers), extra)
                if refused is not None:
                    self._answer(403, refused)
                    return
            self._copy_response(response, headers, extra)
        finally:
            upstream.close()

    def _cold_answer(self, headers: dict[str, str], extra: dict[str, str]) -> bytes | None:
        """None when the object may be read (`extra`: the restore header to add), else the 403 body."""
        storage_class = headers.get("x-amz-storage-class", "STANDARD")
        if storage_class not in COLD_STORAGE_CLASSES:
            return None
        bucket, key = self._bucket_key()
        now = time.monotonic()
        with self.server.tier.lock:
            restore = self.server.tier.state(bucket, key, headers.get("etag", ""), now)
        header = restore_header(restore, now)
        if header is not None:
            extra["x-amz-restore"] = header
        if self.command == "HEAD" or is_readable(restore, now):
            return None
        return error_body(
            "InvalidObjectState",
            "The operation is not valid for the object's storage class",
            self.path,
            StorageClass=storage_class,
        )

    def _copy_request_body(self, upstream: http.client.HTTPConnection) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:  # the chunks as they come, framing included
                size_line = self.rfile.readline()
                upstream.send(size_line)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        line = self.rfile.readline()
                        upstream.send(line)
                        if line in (b"\r\n", b"\n", b""):
                            return
                upstream.send(self.rfile.read(size + 2))
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining:
            data = self.rfile.read(min(remaining, COPY_BUFFER))
            if not data:
                raise ConnectionError("client closed the connection mid-body")
            upstream.send(data)
            remaining -= len(data)

    def _copy_response(self, response: http.client.HTTPResponse, headers, extra: dict[str, str]) -> None:
        names = {k.lower(): v for k, v in headers}
        chunked = "chunked" in names.get("transfer-encoding", "").lower()
        until_close = not chunked and "content-length" not in names and response.status not in (204, 304)
        self.send_response_only(response.status, response.reason)
        if until_close and self.command != "HEAD":
            self.close_connection = True
            self.send_header("Connection", "close")
        for name, value in headers:
            if name.lower() not in ("connection", "keep-alive") and name.lower() not in extra:
                self.send_header(name, value)
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        while data := response.read1(COPY_BUFFER) if chunked else response.read(COPY_BUFFER):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")


class _ColdS3Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream_url: str, tier: ColdTier, admin, host: str) -> None:
        super().__init__((host, 0), _Handler)
        parts = urlsplit(upstream_url)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.tier, self.admin = tier, admin


@dataclass(frozen=True)
class RunningColdS3:
    url: str
    tier: ColdTier


@contextlib.contextmanager
def cold_s3_proxy(
    upstream_url: str, region: str, credentials: S3Credentials, tier: ColdTier | None = None, host: str = "127.0.0.1"
) -> Iterator[RunningColdS3]:
    """The cold tier in front of the S3 server at `upstream_url`, serving on `host` in a thread of this process
    until the `with` block ends. `credentials`: an account of the upstream server allowed to read every object's
    metadata (RestoreObject asks it about the object)."""
    tier = tier or ColdTier()
    server = _ColdS3Server(upstream_url, tier, s3_client(upstream_url, region, credentials), host)
    thread = threading.Thread(target=server.serve_forever, name="cold-s3-proxy", daemon=True)
    thread.start()
    try:
        yield RunningColdS3(f"http://{host}:{server.server_address[1]}", tier)
    finally:
        server.shutdown()
        server.server_close()
