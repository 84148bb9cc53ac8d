"""SciCat objects as the archiver reads and writes them.

Python names are snake_case; on the wire every field has SciCat's camelCase
name (`datasetlifecycle` stays as SciCat spells it). `to_wire()` leaves out
fields that were never set, so a PATCH carries only what the caller means to
change. Fields SciCat sends that are not modelled here are kept (extra="allow")
and written back unchanged.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt
from pydantic.alias_generators import to_camel


class ScicatModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    def to_wire(self) -> dict[str, Any]:
        """JSON-ready dict with SciCat's field names, unset fields omitted."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class JobType(StrEnum):
    ARCHIVE = "archive"
    RETRIEVE = "retrieve"


class JobStatus(StrEnum):
    IN_PROGRESS = "inProgress"
    FINISHED_SUCCESSFUL = "finishedSuccessful"
    FINISHED_UNSUCCESSFUL = "finishedUnsuccessful"
    FINISHED_WITH_DATASET_ERRORS = "finishedWithDatasetErrors"


class ArchiveStatus(StrEnum):
    STARTED = "started"
    IS_ON_CENTRAL_DISK = "isOnCentralDisk"
    DATASET_ON_ARCHIVE_DISK = "datasetOnArchiveDisk"
    SCHEDULE_ARCHIVE_JOB_FAILED = "scheduleArchiveJobFailed"  # system error
    MISSING_FILES_ERROR = "missingFilesError"  # user error


class RetrieveStatus(StrEnum):
    STARTED = "started"
    DATASET_RETRIEVED = "datasetRetrieved"
    DATASET_RETRIEVAL_FAILED = "datasetRetrievalFailed"


class DataFile(ScicatModel):
    path: str = Field(min_length=1)
    size: NonNegativeInt
    time: datetime
    chk: str | None = None
    uid: str | None = None
    gid: str | None = None
    perm: str | None = None


class DatasetLifecycle(ScicatModel):
    archivable: bool | None = None
    retrievable: bool | None = None
    archive_status_message: str | None = None
    retrieve_status_message: str | None = None
    archive_return_message: Any = None
    retrieve_return_message: Any = None
    retrieve_integrity_check: bool | None = None


class Dataset(ScicatModel):
    pid: str | None = None
    type: str | None = None
    owner: str | None = None
    owner_group: str | None = None
    access_groups: list[str] | None = None
    contact_email: str | None = None
    source_folder: str | None = None
    dataset_name: str | None = None
    creation_time: datetime | None = None
    size: NonNegativeInt | None = None
    number_of_files: NonNegativeInt | None = None
    datasetlifecycle: DatasetLifecycle | None = None


class OrigDatablock(ScicatModel):
    id: str | None = None
    dataset_id: str | None = None
    size: NonNegativeInt
    owner_group: str | None = None
    access_groups: list[str] | None = None
    chk_alg: str | None = None
    data_file_list: list[DataFile]


class Datablock(ScicatModel):
    id: str | None = None
    dataset_id: str | None = None
    archive_id: str = Field(min_length=1)  # unique id of the stored package, found again on retrieval
    size: NonNegativeInt  # unpacked bytes
    packed_size: NonNegativeInt
    chk_alg: str
    version: str  # packing format version
    owner_group: str | None = None
    access_groups: list[str] | None = None
    data_file_list: list[DataFile]


class DatasetListEntry(ScicatModel):
    pid: str = Field(min_length=1)
    files: list[str] = Field(default_factory=list)


class JobParams(ScicatModel):
    dataset_list: list[DatasetListEntry] = Field(default_factory=list)


class JobResultEntry(ScicatModel):
    dataset_id: str
    name: str
    size: NonNegativeInt
    archive_id: str
    url: str


class JobResultObject(ScicatModel):
    result: list[JobResultEntry]


class Job(ScicatModel):
    id: str | None = None
    type: str  # JobType values for the jobs the archiver handles
    job_params: JobParams | None = None
    # v3 status field (older v3 servers used statusMessage alone)
    job_status_message: str | None = None
    # v4 status fields
    status_code: str | None = None
    status_message: str | None = None
    job_result_object: JobResultObject | dict[str, Any] | None = None

    @property
    def dataset_pids(self) -> list[str]:
        return [entry.pid for entry in self.job_params.dataset_list] if self.job_params else []
