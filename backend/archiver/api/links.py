"""Fresh download links for a finished retrieval job: presigned URLs live at most 7 days (S3 signing),
retrieved copies longer (S3_RETRIEVAL_RETENTION_DAYS); this re-signs the job's links while the copy is
there, and extends the copy's retention to cover the new links.

The job's result is read from SciCat (what the user was given); every object is looked up in the
retrieval bucket with the registered size and checksum first (packing.retained), so a link is only
ever issued for a copy that was checked. Settings and credentials are the flows' (Prefect variables
and Secret blocks)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import anyio
from fastapi import APIRouter, HTTPException

from archiver.api.errors import flows_settings_errors, service_errors
from archiver.packing import naming
from archiver.packing.download_script import job_download_script
from archiver.packing.retained import extend_retention, present_objects
from archiver.packing.retrieve import RetrievedObject
from archiver.scicat.client import ScicatError
from archiver.scicat.models import JobResultEntry
from archiver.storage.s3 import presigned_get_url

router = APIRouter(tags=["jobs"])


def _object_of(entry: JobResultEntry) -> RetrievedObject:
    key = (
        naming.retrieved_file_key(entry.dataset_id, entry.name)
        if entry.type == "file"
        else naming.retrieval_key(entry.archive_id)
    )
    return RetrievedObject(key, entry.size, entry.chk_alg or "", entry.chk or "")


def fresh_links(job_id: str) -> dict[str, Any]:
    from archiver.clients.connections import connect
    from archiver.config.runtime import load_run_configuration

    with contextlib.ExitStack() as stack:
        with flows_settings_errors("fresh links"):
            config = load_run_configuration()
            connections = stack.enter_context(connect(config))
        minio = config.settings.s3
        with service_errors():
            try:
                job = connections.scicat.get_job(job_id)
            except ScicatError as e:
                if e.status_code in (400, 404):
                    raise HTTPException(404, f"SciCat has no job {job_id}") from None
                raise HTTPException(502, f"SciCat could not be asked for job {job_id}: {e}") from None
            entries = [JobResultEntry.model_validate(e) for e in (job.job_result_object or {}).get("result", [])]
            if job.type != "retrieve" or not job.is_finished or not entries:
                raise HTTPException(
                    409,
                    f"job {job_id} is not a finished retrieval with download links "
                    f"(type {job.type}, status {job.status}); only those get fresh links",
                )
            wanted = [_object_of(e) for e in entries]
            present = {o.key for o in present_objects(connections.s3, minio.retrieval_bucket, wanted)}
            gone = [e.name for e, o in zip(entries, wanted, strict=True) if o.key not in present]
            if gone:
                raise HTTPException(
                    410,
                    f"the retrieved copy of job {job_id} is gone (expired or cleaned up): "
                    f"{', '.join(gone[:5])}; retrieve the dataset again with a new job",
                )
            expires = datetime.now(UTC) + timedelta(seconds=minio.url_expiration_s)
            for obj in wanted:  # the copy outlives the new links
                extend_retention(connections.s3, minio.retrieval_bucket, obj.key, expires)
            fresh = [
                e.model_copy(
                    update={
                        "url": presigned_get_url(
                            minio.external_endpoint,
                            minio.region,
                            connections.presign_credentials,
                            minio.retrieval_bucket,
                            o.key,
                            minio.url_expiration_s,
                        )
                    }
                )
                for e, o in zip(entries, wanted, strict=True)
            ]
    script = job_download_script(job_id, fresh)
    return {
        "jobId": job_id,
        "expires": expires.isoformat(timespec="seconds"),
        "result": [e.to_wire() for e in fresh],
        "downloadScript": script,
    }


@router.get(
    "/jobs/{job_id}/links",
    responses={
        401: {"description": "missing or wrong Authorization"},
        404: {"description": "no such job in SciCat"},
        409: {"description": "not a finished retrieval job with links"},
        410: {"description": "the retrieved copy is gone: retrieve again"},
    },
)
async def get_fresh_links(job_id: UUID) -> dict[str, Any]:
    """Fresh presigned links (and download script) for a finished retrieval job whose copy is still there."""
    return await anyio.to_thread.run_sync(fresh_links, str(job_id))
