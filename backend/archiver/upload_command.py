"""`archiver upload PID FILES...`: upload a dataset's files through the archiver API's presigned part URLs
(no S3 credentials), resuming what an earlier run left, verifying sizes and checksums, then finalize.

What is verified: each local file's size against its origdatablock entry before anything is sent; its
checksum too when the origdatablock gives one (md5 or sha256, the whole file read once); every part as it is
PUT (Content-MD5, so S3 refuses a part damaged on the way); parts a previous run uploaded against the ETag S3
reports for them (a part's MD5), so a file changed since is noticed; at completion the API compares each part's
local MD5 with what S3 received and the file's checksum with the origdatablock's, and checks the whole file's
size on S3; every file's presence and size at finalize (the API checks)."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from archiver.errors import ArchiverError

READ_CHUNK = 8 * 2**20
CHECKSUMS = {"md5": hashlib.md5, "sha256": hashlib.sha256}


class UploadError(ArchiverError):
    """The upload cannot go on; the message says why and what to do."""


@dataclass
class UploadReport:
    parts_put: int = 0
    bytes_put: int = 0
    files_completed: list[str] = field(default_factory=list)
    finalized: dict[str, Any] | None = None


class UploadApi:
    """The archiver API's upload endpoints, with the caller's token."""

    def __init__(self, api_url: str, token: str, timeout_s: float = 120):
        self._http = httpx.Client(
            base_url=api_url.rstrip("/"), timeout=timeout_s, headers={"Authorization": f"Bearer {token}"}
        )

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs) -> dict:
        try:
            response = self._http.request(method, "/uploads" + path, **kwargs)
        except httpx.HTTPError as e:
            raise UploadError(
                f"the archiver API at {self._http.base_url} did not answer: {e.__class__.__name__}: {e}"
            ) from e
        if not response.is_success:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:300]
            raise UploadError(f"the archiver API answered {response.status_code} to {method} /uploads{path}: {detail}")
        return response.json()

    def status(self, pid: str) -> dict:
        return self._call("GET", "/status", params={"pid": pid})

    def start(self, pid: str, files: list[dict]) -> dict:
        return self._call("POST", "", json={"pid": pid, "files": files})

    def resume(self, pid: str, path: str) -> dict:
        return self._call("POST", "/resume", json={"pid": pid, "path": path})

    def complete(
        self, pid: str, path: str, upload_id: str, parts: list[dict], checksum: tuple[str, str] | None = None
    ) -> dict:
        body = {"pid": pid, "path": path, "uploadId": upload_id, "parts": parts}
        if checksum is not None:
            body["chkAlg"], body["chk"] = checksum
        return self._call("POST", "/complete", json=body)

    def abort(self, pid: str, path: str, upload_id: str) -> dict:
        return self._call("POST", "/abort", json={"pid": pid, "path": path, "uploadId": upload_id})

    def finalize(self, pid: str, archive: bool) -> dict:
        return self._call("POST", "/finalize", json={"pid": pid, "archive": archive})


def local_files(paths: list[Path], root: Path) -> dict[str, Path]:
    """Remote path (relative to `root`, `/`-separated) -> local file; folders are taken whole."""
    found: dict[str, Path] = {}
    root = root.resolve()
    for given in paths:
        given = given.resolve()
        candidates = sorted(p for p in given.rglob("*") if p.is_file()) if given.is_dir() else [given]
        for path in candidates:
            if not path.is_file():
                raise UploadError(f"{path} is not a file; name the dataset's files or their folder")
            try:
                relative = path.relative_to(root)
            except ValueError:
                raise UploadError(
                    f"{path} is not below --root {root}; its path in the dataset is taken relative to --root"
                ) from None
            found[relative.as_posix()] = path
    if not found:
        raise UploadError("no files to upload")
    return found


def file_checksum(path: Path, algorithm: str) -> str:
    hasher = CHECKSUMS[algorithm]()
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def read_part(path: Path, plan: dict, number: int) -> bytes:
    offset = (number - 1) * plan["partSize"]
    length = max(0, min(plan["partSize"], plan["size"] - offset))
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise UploadError(f"{path} became shorter while uploading; upload it again once it is complete")
    return data


def check_local_files(files: dict[str, Path], listed: dict[str, dict]) -> dict[str, tuple[str, str]]:
    """Refuses local files that are not what the origdatablocks list; returns the checksums computed
    (algorithm, hex digest) per remote path, for the files listed with one."""
    checksums = {}
    for remote, path in files.items():
        entry = listed.get(remote)
        if entry is None:
            raise UploadError(
                f"{remote} is not in the dataset's origdatablocks; name files by their path in "
                "the dataset (relative to --root)"
            )
        size = path.stat().st_size
        if size != entry["size"]:
            raise UploadError(
                f"{path} has {size} bytes, the dataset's origdatablock lists {remote} with {entry['size']}"
            )
        algorithm = (entry.get("chkAlg") or "").lower()
        if entry.get("chk") and algorithm in CHECKSUMS:
            checksums[remote] = (algorithm, file_checksum(path, algorithm))
            if checksums[remote][1] != entry["chk"]:
                raise UploadError(
                    f"{path}: its {algorithm} differs from the checksum its origdatablock lists; "
                    "this is not the file SciCat describes"
                )
    return checksums


class _PartUploader:
    def __init__(self, http: httpx.Client, on_part: Callable[[str, int, int], None]):
        self._http = http
        self._on_part = on_part
        self._lock = threading.Lock()

    def put(self, remote: str, path: Path, plan: dict, number: int, url: str, report: UploadReport) -> dict:
        data = read_part(path, plan, number)
        digest = hashlib.md5(data)
        response = self._http.put(
            url, content=data, headers={"Content-MD5": base64.b64encode(digest.digest()).decode()}
        )
        if not response.is_success:
            raise UploadError(
                f"S3 refused part {number} of {remote} (HTTP {response.status_code}): "
                f"{response.text[:300]}; run the command again to resume"
            )
        etag = response.headers.get("ETag", "").strip('"')
        if etag and etag != digest.hexdigest():
            raise UploadError(f"part {number} of {remote}: S3 stored MD5 {etag}, sent {digest.hexdigest()}; run again")
        with self._lock:
            report.parts_put += 1
            report.bytes_put += len(data)
        self._on_part(remote, number, len(data))
        return {"partNumber": number, "etag": etag, "md5": digest.hexdigest()}


def _done_parts_md5(path: Path, plan: dict) -> dict[int, str] | None:
    """The local MD5 of each part S3 holds from an earlier run, or None when one differs from its ETag (a part's
    MD5 on S3): the local file changed since."""
    md5s = {d["partNumber"]: hashlib.md5(read_part(path, plan, d["partNumber"])).hexdigest() for d in plan["partsDone"]}
    return md5s if all(md5s[d["partNumber"]] == d["etag"].strip('"') for d in plan["partsDone"]) else None


def upload_file(
    api: UploadApi,
    uploader: _PartUploader,
    pool: ThreadPoolExecutor,
    pid: str,
    remote: str,
    path: Path,
    plan: dict,
    report: UploadReport,
    checksum: tuple[str, str] | None = None,
) -> None:
    """Send the parts S3 lacks, then complete the file, naming each part's local MD5 (and the file's checksum,
    when computed) for the API to compare with what S3 and SciCat hold."""
    md5s = _done_parts_md5(path, plan)
    if md5s is None:
        api.abort(pid, remote, plan["uploadId"])  # the local file changed since: start the file again
        plan = api.start(pid, [{"path": remote, "size": plan["size"]}])["files"][0]
        md5s = {}
    while plan["urls"]:
        futures = [
            pool.submit(uploader.put, remote, path, plan, u["partNumber"], u["url"], report) for u in plan["urls"]
        ]
        try:
            for future in futures:
                sent = future.result()
                md5s[sent["partNumber"]] = sent["md5"]
        except BaseException:
            for future in futures:  # parts not begun stay unsent: a later run resumes from what S3 holds
                future.cancel()
            raise
        plan = api.resume(pid, remote)
    if plan["state"] != "uploaded":
        parts = [
            {"partNumber": d["partNumber"], "etag": d["etag"]}
            | ({"md5": md5s[d["partNumber"]]} if d["partNumber"] in md5s else {})
            for d in plan["partsDone"]
        ]
        api.complete(pid, remote, plan["uploadId"], parts, checksum)
    report.files_completed.append(remote)


def upload_dataset(
    api: UploadApi,
    pid: str,
    files: dict[str, Path],
    *,
    parallel: int = 4,
    finalize: bool = False,
    archive: bool = False,
    on_part: Callable[[str, int, int], None] = lambda *a: None,
    on_start: Callable[[int, int], None] = lambda total, done: None,
) -> UploadReport:
    """Upload what S3 does not hold yet of `files`, complete each, then finalize if asked."""
    report = UploadReport()
    listed = {entry["path"]: entry for entry in api.status(pid)["files"]}
    checksums = check_local_files(files, listed)
    todo = [remote for remote in files if listed[remote]["state"] != "uploaded"]
    plans = api.start(pid, [{"path": r, "size": listed[r]["size"]} for r in todo])["files"] if todo else []
    total = sum(listed[r]["size"] for r in files)
    on_start(
        total,
        total - sum(p["size"] - sum(d["size"] for d in p["partsDone"]) for p in plans if p["state"] != "uploaded"),
    )
    with httpx.Client(timeout=300) as http, ThreadPoolExecutor(max(1, parallel), thread_name_prefix="part") as pool:
        uploader = _PartUploader(http, on_part)
        for plan in plans:
            remote = plan["path"]
            if plan["state"] == "uploaded":
                report.files_completed.append(remote)
                continue
            upload_file(api, uploader, pool, pid, remote, files[remote], plan, report, checksums.get(remote))
    if finalize or archive:
        report.finalized = api.finalize(pid, archive)
    return report


def run(
    pid: str, paths: list[Path], root: Path, api_url: str, token: str, parallel: int, finalize: bool, archive: bool
) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    files = local_files(paths, root)
    api = UploadApi(api_url, token)
    try:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(bar_width=30),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        ) as progress:
            bar = progress.add_task(f"uploading {pid}", total=None)
            report = upload_dataset(
                api,
                pid,
                files,
                parallel=parallel,
                finalize=finalize,
                archive=archive,
                on_part=lambda remote, number, size: progress.advance(bar, size),
                on_start=lambda total, done: progress.update(bar, total=total, completed=done),
            )
    finally:
        api.close()
    print(
        f"archiver upload: {len(report.files_completed)} file(s) of dataset {pid} in the landing zone, "
        f"{report.parts_put} part(s) ({report.bytes_put} bytes) sent now"
    )
    if report.finalized:
        job = report.finalized.get("jobId")
        print(f"dataset {pid} is archivable" + (f"; SciCat archive job {job} created" if job else ""))
    return 0


def read_token(token_file: Path | None, environ=os.environ) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise UploadError(f"--token-file {token_file} is not readable: {e.__class__.__name__}") from None
    else:
        token = environ.get("ARCHIVER_UPLOAD_TOKEN", "").strip()
    token = token.removeprefix("Bearer ").strip()
    if not token:
        raise UploadError("no token: give --token-file (a file holding your SciCat token) or set ARCHIVER_UPLOAD_TOKEN")
    return token
