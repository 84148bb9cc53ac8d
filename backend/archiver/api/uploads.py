"""Uploads without S3 credentials: presigned multipart URLs into a dataset's landing prefix, then finalize.

Every endpoint takes the caller's SciCat token (or a service account's) and works only on datasets whose
owner group the caller is in. Only files the dataset's origdatablocks list, with their listed size, can be
uploaded; finalize checks they are all there, marks the dataset archivable and can create the archive job."""

from __future__ import annotations

import base64
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

from archiver.api.errors import service_errors
from archiver.api.jobs import check_pid_at_the_door, shorten
from archiver.api.settings import ApiSettings
from archiver.api.upload_access import Caller, bearer_token, identify, require_write
from archiver.api.upload_backend import CachedBackend, UploadBackend
from archiver.packing.errors import InvalidNameError
from archiver.packing.naming import check_relative_path, landing_prefix
from archiver.scicat.client import ScicatError
from archiver.scicat.models import ArchiveStatus, DataFile
from archiver.storage import multipart
from archiver.storage.multipart import UploadedPart

MAX_KEY_BYTES = 1024  # S3's limit
BUSY_STATUSES = (ArchiveStatus.STARTED, ArchiveStatus.DATASET_ON_ARCHIVE_DISK)

SCICAT_TOKEN = APIKeyHeader(
    name="Authorization",
    auto_error=False,
    scheme_name="SciCatToken",
    description="`Bearer <your SciCat token>` (or a service account's token from ARCHIVER_UPLOAD_ACCOUNTS_FILE)",
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileSpec(_Body):
    path: str = Field(description="relative path below the dataset's landing prefix, as its origdatablock lists it")
    size: NonNegativeInt


class StartUpload(_Body):
    pid: str
    files: list[FileSpec] = Field(min_length=1, max_length=10_000)


class FileRef(_Body):
    pid: str
    path: str


MD5_HEX = "^[0-9a-fA-F]{32}$"


class PartMd5(_Body):
    partNumber: int = Field(ge=1, le=multipart.MAX_PARTS)
    md5: str = Field(pattern=MD5_HEX, description="hex MD5 of the part's bytes")


class ResumeFile(FileRef):
    partsMd5: list[PartMd5] = Field(
        [],
        max_length=multipart.MAX_PARTS,
        description="MD5s of parts to be sent: their URLs are signed with Content-MD5 "
        "too, so S3 takes only those bytes",
    )


class PartEtag(_Body):
    partNumber: int = Field(ge=1, le=multipart.MAX_PARTS)
    etag: str
    md5: str | None = Field(
        None,
        pattern=MD5_HEX,
        description="hex MD5 of the part's bytes as the uploader read them; compared with the "
        "part's ETag on S3 (the MD5 of what S3 received)",
    )


class CompleteFile(FileRef):
    uploadId: str
    parts: list[PartEtag] = Field(min_length=1, max_length=multipart.MAX_PARTS)
    chk: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="the whole file's checksum as the uploader computed it (with chkAlg)",
    )
    chkAlg: str | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="its algorithm: compared with the origdatablock's checksum when that has "
        "the same algorithm, and for md5 with S3's ETag of a one-part file",
    )


class AbortFile(FileRef):
    uploadId: str


class Finalize(_Body):
    pid: str
    archive: bool = Field(False, description="also create the archive job in SciCat (as SciCat's frontend does)")


class PartUrl(BaseModel):
    partNumber: int
    url: str


class PartDone(BaseModel):
    partNumber: int
    etag: str
    size: int


FileState = Literal["uploaded", "uploading", "missing", "wrong-size"]


class FilePlan(BaseModel):
    path: str
    size: int
    state: FileState
    uploadId: str | None = None
    partSize: int
    partCount: int
    partsDone: list[PartDone] = []
    urls: list[PartUrl] = Field(
        [], description="PUT URLs of missing parts, at most UPLOAD_URLS_PER_ANSWER; `resume` gives the next ones"
    )
    chk: str | None = None
    chkAlg: str | None = None


class DatasetUpload(BaseModel):
    pid: str
    files: list[FilePlan]
    complete: bool = Field(description="every file of the origdatablocks is uploaded with its size")


class Aborted(BaseModel):
    aborted: bool


class Finalized(BaseModel):
    pid: str
    archivable: bool
    jobId: str | None = None


# --- checks ---


def checked_path(path: str, prefix: str) -> str:
    """The object key of a file path, or 422: only relative paths that stay below the dataset's prefix."""
    try:
        check_relative_path(path, "file path")
    except InvalidNameError as e:
        raise HTTPException(422, str(e)[:300]) from None
    if not path.isprintable():
        raise HTTPException(422, f"file path {shorten(path)} contains a non-printable character; rename the file")
    key = prefix + path
    if len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        raise HTTPException(422, f"file path {shorten(path)} makes an S3 key longer than {MAX_KEY_BYTES} bytes")
    return key


class DatasetFiles:
    """A dataset as SciCat has it, after the caller's write right was checked."""

    def __init__(self, backend: UploadBackend, caller: Caller, pid: str):
        self.pid = check_pid_at_the_door(pid, "pid")
        self.prefix = landing_prefix(self.pid)
        self.backend = backend
        try:
            dataset = backend.scicat.get_dataset(self.pid)
        except ScicatError as e:
            if e.status_code in (403, 404):
                raise HTTPException(
                    404,
                    f"dataset {self.pid!r} is not in SciCat; register it (with its origdatablocks) before uploading",
                ) from None
            raise
        require_write(caller, self.pid, dataset.owner_group)
        self.lifecycle = dataset.datasetlifecycle
        self.listed: dict[str, tuple[DataFile, str | None]] = {}
        for block in backend.scicat.get_origdatablocks(self.pid):
            for data_file in block.data_file_list:
                self.listed[data_file.path] = (data_file, block.chk_alg)

    def refuse_if_archived(self) -> None:
        """409 for a dataset that is archived by the record (SciCat lists datablocks of it: the archive is
        write-once, whatever the lifecycle says, which the owner can reset with an ordinary dataset PATCH) or
        being archived (archiveStatusMessage `started`)."""
        registered = self.backend.scicat.get_datablocks(self.pid)
        if registered:
            raise HTTPException(
                409,
                f"dataset {self.pid!r} is archived: {len(registered)} datablock(s) registered "
                "in SciCat; a changed dataset is a new dataset in SciCat (register one and "
                "upload its files there)",
            )
        status = self.lifecycle.archive_status_message if self.lifecycle else None
        if status in BUSY_STATUSES:
            raise HTTPException(
                409,
                f"dataset {self.pid!r} is being archived or archived (archiveStatusMessage "
                f"{status!r}); its landing-zone files are no longer written",
            )

    def listed_file(self, path: str, size: int | None = None) -> DataFile:
        checked_path(path, self.prefix)
        found = self.listed.get(path)
        if found is None:
            raise HTTPException(
                422,
                f"file {shorten(path)} is not in the origdatablocks of dataset {self.pid!r}; "
                "register it there first (only listed files are uploaded)",
            )
        if size is not None and found[0].size != size:
            raise HTTPException(
                422,
                f"file {shorten(path)} has {size} bytes, its origdatablock of dataset "
                f"{self.pid!r} says {found[0].size}; upload the file SciCat lists",
            )
        return found[0]

    def plan(
        self,
        path: str,
        objects: dict[str, int],
        urls_left: list[int],
        upload_id: str | None = None,
        created: list[tuple[str, str]] | None = None,
        md5s: dict[int, str] | None = None,
    ) -> FilePlan:
        """What S3 holds of one file; given `created`, an upload is started when none is under way (its key and
        id appended there); part URLs for missing parts while `urls_left[0]` allows, each signed with its part's
        size and, for the parts in `md5s` (hex), its MD5."""
        s3, bucket, upload = self.backend.s3, self.backend.bucket, self.backend.settings.upload
        data_file, chk_alg = self.listed[path]
        key, size = self.prefix + path, data_file.size
        try:
            part_size = multipart.part_size_for(size, upload.part_size_mb * multipart.MIB)
        except multipart.TooLargeError as e:
            raise HTTPException(413, f"file {shorten(path)} of dataset {self.pid!r}: {e}; split it") from None
        count = multipart.part_count(size, part_size)
        plan = FilePlan(
            path=path,
            size=size,
            state="missing",
            partSize=part_size,
            partCount=count,
            chk=data_file.chk,
            chkAlg=chk_alg,
        )
        if objects.get(key) == size and upload_id is None:
            plan.state = "uploaded"
            return plan
        upload_id = upload_id or multipart.newest_unfinished_upload(s3, bucket, key)
        if upload_id is None:
            if created is None:
                plan.state = "wrong-size" if key in objects else "missing"
                return plan
            upload_id = multipart.start_upload(s3, bucket, key)
            multipart.reserve(s3, bucket, upload_id, size)
            created.append((key, upload_id))
        try:
            done = multipart.uploaded_parts(s3, bucket, key, upload_id)
        except KeyError:
            raise HTTPException(
                404,
                f"upload {shorten(upload_id)} of {shorten(path)} does not exist (finished, "
                "aborted or expired); start the file again",
            ) from None
        plan.state, plan.uploadId = "uploading", upload_id
        plan.partsDone = [
            PartDone(partNumber=p.number, etag=p.etag, size=p.size)
            for p in sorted(done.values(), key=lambda p: p.number)
        ]
        for number in range(1, count + 1):
            if urls_left[0] <= 0:
                break
            length = multipart.part_length(size, part_size, number)
            if number in done and done[number].size == length:
                continue
            md5 = (md5s or {}).get(number)
            url = multipart.presigned_part_url(
                self.backend.signer,
                bucket,
                key,
                upload_id,
                number,
                upload.url_expiration_s,
                length,
                base64.b64encode(bytes.fromhex(md5)).decode() if md5 else None,
            )
            plan.urls.append(PartUrl(partNumber=number, url=url))
            urls_left[0] -= 1
        return plan

    def objects(self) -> dict[str, int]:
        return multipart.object_sizes(self.backend.s3, self.backend.bucket, self.prefix)


def refuse_over_budget(files: DatasetFiles, paths: list[str], objects: dict[str, int]) -> None:
    """507 when the files would take the landing zone over its budget (nothing is listed without a budget)."""
    backend = files.backend
    budget = backend.settings.upload.budget_bytes
    if budget is None:
        return
    needed = bytes_still_needed(files, paths, objects)
    if needed == 0:
        return
    used = multipart.bucket_usage(backend.s3, backend.bucket)
    if used + needed > budget:
        raise HTTPException(
            507,
            f"upload of {needed} bytes for dataset {files.pid!r} refused: the landing zone holds {used} bytes "
            f"(objects and unfinished uploads) of its budget of {budget} bytes (UPLOAD_LANDINGZONE_BUDGET_GB), "
            f"{used + needed - budget} bytes too many; retry once archivals have emptied it",
        )


def give_back_if_over_budget(files: DatasetFiles, created: list[tuple[str, str]]) -> None:
    """After reserving: 507, the uploads just started aborted and their reservations released, when the landing
    zone is over its budget with them. Starts at the same instant each pass `refuse_over_budget` before any has
    reserved; each then sees the others' reservations here, so together they never pass the budget (all of
    them may be refused, and retry)."""
    backend = files.backend
    budget = backend.settings.upload.budget_bytes
    if budget is None or not created:
        return
    used = multipart.bucket_usage(backend.s3, backend.bucket)
    if used <= budget:
        return
    for key, upload_id in created:
        multipart.abort_upload(backend.s3, backend.bucket, key, upload_id)
    multipart.release(backend.s3, backend.bucket, [upload_id for _, upload_id in created])
    raise HTTPException(
        507,
        f"upload for dataset {files.pid!r} refused: with uploads started at the same time the landing zone would "
        f"hold {used} bytes, over its budget of {budget} bytes (UPLOAD_LANDINGZONE_BUDGET_GB); retry in a moment",
    )


def bytes_still_needed(files: DatasetFiles, paths: list[str], objects: dict[str, int]) -> int:
    """Bytes the files will add beyond what the bucket holds or has reserved for them."""
    s3, bucket = files.backend.s3, files.backend.bucket
    reserved = multipart.reservations(s3, bucket)
    needed = 0
    for path in paths:
        key, size = files.prefix + path, files.listed[path][0].size
        if objects.get(key) == size:
            continue
        upload_id = multipart.newest_unfinished_upload(s3, bucket, key)
        if upload_id in reserved:
            continue
        done = multipart.uploaded_parts(s3, bucket, key, upload_id) if upload_id else {}
        needed += max(0, size - sum(p.size for p in done.values()))
    return needed


# --- the router ---


def create_upload_router(settings: ApiSettings, backend: CachedBackend | None = None) -> APIRouter:
    backend = backend or CachedBackend(settings.secrets_dir, settings.upload_settings_cache_s)
    router = APIRouter(prefix=settings.root_path + "/uploads", tags=["uploads"])
    errors: dict[int | str, dict[str, Any]] = {
        401: {"description": "no or unknown token"},
        403: {"description": "caller not in the dataset's owner group"},
        404: {"description": "dataset or upload not found"},
        422: {"description": "bad PID, path or size"},
        502: {"description": "SciCat or S3 failed"},
        503: {"description": "settings not readable from Prefect"},
    }

    def dataset(pid: str, caller: Caller) -> DatasetFiles:
        return DatasetFiles(backend.get(), caller, pid)

    def who(request: Request, authorization: str | None = Security(SCICAT_TOKEN)) -> Caller:
        bearer_token(authorization)  # 401 before anything is asked of Prefect or SciCat
        return identify(authorization, backend.get().service_accounts, backend.get().settings.scicat)

    @router.post(
        "",
        response_model=DatasetUpload,
        responses={
            **errors,
            409: {"description": "dataset archived or being archived"},
            507: {"description": "over the landing-zone budget"},
        },
    )
    def start(body: StartUpload, caller: Caller = Depends(who)) -> DatasetUpload:
        """Start (or take up again) the upload of files of a dataset: a multipart upload per file and PUT URLs
        of its parts, signed for the external S3 endpoint."""
        with service_errors():
            files = dataset(body.pid, caller)
            files.refuse_if_archived()
            paths = [files.listed_file(f.path, f.size).path for f in body.files]
            if len(set(paths)) != len(paths):
                raise HTTPException(422, "a file is named twice in `files`; name each once")
            objects = files.objects()
            refuse_over_budget(files, paths, objects)
            urls_left = [files.backend.settings.upload.urls_per_answer]
            created: list[tuple[str, str]] = []
            plans = [files.plan(path, objects, urls_left, created=created) for path in paths]
            give_back_if_over_budget(files, created)
            return DatasetUpload(pid=files.pid, files=plans, complete=_complete(files, objects))

    @router.get("/status", response_model=DatasetUpload, responses=errors)
    def status(pid: str, caller: Caller = Depends(who)) -> DatasetUpload:
        """Every file of the dataset's origdatablocks: uploaded, uploading (parts done), missing or wrong-size."""
        with service_errors():
            files = dataset(pid, caller)
            objects = files.objects()
            plans = [files.plan(path, objects, [0]) for path in sorted(files.listed)]
            return DatasetUpload(pid=files.pid, files=plans, complete=_complete(files, objects))

    refused: dict[int | str, dict[str, Any]] = {409: {"description": "dataset archived or being archived"}}

    @router.post("/resume", response_model=FilePlan, responses={**errors, **refused})
    def resume(body: ResumeFile, caller: Caller = Depends(who)) -> FilePlan:
        """PUT URLs for the parts of a file that S3 does not hold yet (from S3's list of parts); those of the
        parts whose MD5 is given are signed with it."""
        with service_errors():
            files = dataset(body.pid, caller)
            files.refuse_if_archived()
            files.listed_file(body.path)
            objects = files.objects()
            plan = files.plan(
                body.path,
                objects,
                [files.backend.settings.upload.urls_per_answer],
                md5s={p.partNumber: p.md5 for p in body.partsMd5},
            )
            if plan.state in ("missing", "wrong-size"):
                raise HTTPException(409, f"no upload of {shorten(body.path)} is under way; start it with POST /uploads")
            return plan

    @router.post("/complete", response_model=FilePlan, responses={**errors, **refused})
    def complete(body: CompleteFile, caller: Caller = Depends(who)) -> FilePlan:
        """Assemble a file from its parts once S3 holds every part with the ETag given and the right size."""
        with service_errors():
            files = dataset(body.pid, caller)
            files.refuse_if_archived()
            data_file = files.listed_file(body.path)
            key = files.prefix + body.path
            s3, bucket = files.backend.s3, files.backend.bucket
            if not multipart.is_upload_of(s3, bucket, key, body.uploadId):
                raise HTTPException(
                    404,
                    f"upload {shorten(body.uploadId)} of {shorten(body.path)} is not under way "
                    "(finished, aborted, expired, or of another file); complete the file with "
                    "the upload id its start or `resume` gave",
                )
            plan = files.plan(body.path, {}, [0], upload_id=body.uploadId)
            _check_parts(plan, body.parts)
            _check_client_checksums(files, plan, body)
            try:
                multipart.complete_upload(
                    s3, bucket, key, body.uploadId, [UploadedPart(p.partNumber, p.etag, 0) for p in body.parts]
                )
            finally:  # the reservation goes once S3 has assembled the file (even if its answer got lost), not before
                multipart.release_if_gone(s3, bucket, [body.uploadId])
            stored = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
            if stored != data_file.size:  # cannot happen after _check_parts unless someone else wrote the key
                raise HTTPException(
                    409,
                    f"{shorten(body.path)} holds {stored} bytes after completion, not "
                    f"{data_file.size}; upload it again",
                )
            return files.plan(body.path, {key: stored}, [0])

    @router.post("/abort", response_model=Aborted, responses=errors)
    def abort(body: AbortFile, caller: Caller = Depends(who)) -> Aborted:
        """Abort a file's upload; S3 drops its parts. An upload id that is not an upload of this file aborts
        nothing (`aborted: false`), and its budget reservation stays as long as S3 lists the upload."""
        with service_errors():
            files = dataset(body.pid, caller)
            files.listed_file(body.path)
            s3, bucket, key = files.backend.s3, files.backend.bucket, files.prefix + body.path
            aborted = multipart.is_upload_of(s3, bucket, key, body.uploadId) and multipart.abort_upload(
                s3, bucket, key, body.uploadId
            )
            multipart.release_if_gone(s3, bucket, [body.uploadId])
            return Aborted(aborted=aborted)

    @router.post(
        "/finalize",
        response_model=Finalized,
        responses={**errors, 409: {"description": "dataset archived, or files missing or of the wrong size"}},
    )
    def finalize(body: Finalize, caller: Caller = Depends(who)) -> Finalized:
        """Check that every file of the origdatablocks is in the landing zone with its size, mark the dataset
        archivable in SciCat and, with `archive`, create its archive job."""
        with service_errors():
            files = dataset(body.pid, caller)
            files.refuse_if_archived()
            if not files.listed:
                raise HTTPException(
                    409, f"dataset {files.pid!r} has no files in its origdatablocks; nothing to archive"
                )
            _refuse_incomplete(files, files.objects())
            files.backend.scicat.update_lifecycle(
                files.pid,
                "mark archivable after upload",
                archivable=True,
                retrievable=False,
                archive_status_message=ArchiveStatus.IS_ON_CENTRAL_DISK,
            )
            job_id = None
            if body.archive:
                try:
                    job_id = files.backend.scicat.create_job("archive", [files.pid]).id
                except ScicatError as e:
                    raise HTTPException(
                        502,
                        f"dataset {files.pid!r} is archivable, but SciCat did not create its "
                        f"archive job: {e}; create it in SciCat",
                    ) from None
            return Finalized(pid=files.pid, archivable=True, jobId=job_id)

    return router


def _complete(files: DatasetFiles, objects: dict[str, int]) -> bool:
    return bool(files.listed) and all(
        objects.get(files.prefix + path) == f.size for path, (f, _) in files.listed.items()
    )


def _check_parts(plan: FilePlan, given: list[PartEtag]) -> None:
    """422 unless the parts given are exactly 1..partCount and each is on S3 with that ETag and its size."""
    on_s3 = {p.partNumber: p for p in plan.partsDone}
    numbers = sorted(p.partNumber for p in given)
    if numbers != list(range(1, plan.partCount + 1)):
        missing = sorted(set(range(1, plan.partCount + 1)) - set(numbers))[:10]
        raise HTTPException(
            422,
            f"{shorten(plan.path)} has {plan.partCount} parts; name each once "
            f"(missing e.g. {missing}); `resume` gives URLs for parts not uploaded",
        )
    for part in given:
        stored = on_s3.get(part.partNumber)
        expected = multipart.part_length(plan.size, plan.partSize, part.partNumber)
        if stored is None or stored.etag.strip('"') != part.etag.strip('"'):
            raise HTTPException(
                422,
                f"part {part.partNumber} of {shorten(plan.path)} is not on S3 with ETag "
                f"{shorten(part.etag)}; upload it again (`resume`)",
            )
        if stored.size != expected:
            raise HTTPException(
                422,
                f"part {part.partNumber} of {shorten(plan.path)} has {stored.size} bytes, "
                f"expected {expected} (parts of {plan.partSize} bytes); upload it again",
            )


def _check_client_checksums(files: DatasetFiles, plan: FilePlan, body: CompleteFile) -> None:
    """422 when a checksum the uploader sent disagrees with what S3 holds or SciCat lists. Checked without reading
    the file: each part's MD5 against its ETag on S3 (S3's MD5 of the bytes it received; not so behind SSE-KMS or
    SSE-C); the whole file's checksum against the origdatablock's of the same algorithm, and an md5 of a one-part
    file against that part's ETag. A whole-file checksum of a multipart object would mean reading it back."""
    name = shorten(plan.path)
    on_s3 = {p.partNumber: p.etag.strip('"').lower() for p in plan.partsDone}
    for part in body.parts:
        if part.md5 is not None and part.md5.lower() != on_s3[part.partNumber]:
            raise HTTPException(
                422,
                f"part {part.partNumber} of {name}: S3 received bytes of MD5 "
                f"{on_s3[part.partNumber]} (its ETag), the uploader sent MD5 {part.md5.lower()}; "
                "upload the part again (`resume`)",
            )
    if (body.chk is None) != (body.chkAlg is None):
        raise HTTPException(422, f"{name}: send `chk` and `chkAlg` together (the file's checksum and its algorithm)")
    if body.chk is None or body.chkAlg is None:
        return
    algorithm, sent = body.chkAlg.lower(), body.chk.lower()
    data_file, listed_algorithm = files.listed[plan.path]
    if data_file.chk and (listed_algorithm or "").lower() == algorithm and data_file.chk.lower() != sent:
        raise HTTPException(
            422,
            f"{name}: its {algorithm} is {shorten(sent)}, its origdatablock of dataset "
            f"{files.pid!r} lists {shorten(data_file.chk.lower())}; this is not the file SciCat "
            "describes: upload that one (abort this upload), or register the file as it is",
        )
    if algorithm == "md5" and plan.partCount == 1 and on_s3.get(1) not in (None, sent):
        raise HTTPException(
            422,
            f"{name}: its md5 is {shorten(sent)}, S3 received bytes of MD5 {on_s3[1]}; "
            "upload the file again (`resume`)",
        )


def _refuse_incomplete(files: DatasetFiles, objects: dict[str, int]) -> None:
    missing = [path for path in files.listed if files.prefix + path not in objects]
    wrong = [
        f"{path} ({objects[files.prefix + path]} bytes, listed {f.size})"
        for path, (f, _) in files.listed.items()
        if files.prefix + path in objects and objects[files.prefix + path] != f.size
    ]
    if missing or wrong:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing (e.g. {', '.join(shorten(p) for p in missing[:5])})")
        if wrong:
            problems.append(f"{len(wrong)} of the wrong size (e.g. {', '.join(wrong[:5])})")
        raise HTTPException(
            409,
            f"dataset {files.pid!r} is not complete in the landing zone: "
            f"{'; '.join(problems)}; upload them, then finalize again",
        )
