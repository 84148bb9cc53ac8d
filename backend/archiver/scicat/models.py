"""SciCat objects as the archiver reads and writes them.

Python names are snake_case; on the wire every field has SciCat's camelCase
name (`datasetlifecycle` stays as SciCat spells it). `to_wire()` leaves out
fields that were never set.

A real SciCat refuses any property its request DTO does not list (400
"property X should not exist"), so what we send is built only from the
`New*` / status-body models below, whose fields are SciCat's whitelists for
those calls. What SciCat sends us may carry more than we model: it is read
and ignored (extra="ignore"), never stored to be echoed back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt
from pydantic.alias_generators import to_camel


class ScicatModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

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
    """SciCat's DataFile: path, size and time required; the rest optional."""

    path: str = Field(min_length=1)
    size: NonNegativeInt
    time: datetime
    chk: str | None = None
    uid: str | None = None
    gid: str | None = None
    perm: str | None = None


class DatasetLifecycle(ScicatModel):
    """Every field of SciCat's lifecycle. A dataset PATCH replaces the whole lifecycle, so an update
    sends all of them (dates as SciCat returned them)."""

    archivable: bool | None = None
    retrievable: bool | None = None
    publishable: bool | None = None
    date_of_disk_purging: str | None = None
    archive_retention_time: str | None = None
    date_of_publishing: str | None = None
    published_on: str | None = None
    is_on_central_disk: bool | None = None
    archive_status_message: str | None = None
    retrieve_status_message: str | None = None
    archive_return_message: Any = None
    retrieve_return_message: Any = None
    exported_to: str | None = None
    retrieve_integrity_check: bool | None = None
    storage_location: str | None = None

    def with_changes(self, **changes: Any) -> DatasetLifecycle:
        """This lifecycle with `changes` applied; fields that were set (or changed) stay set."""
        values = {name: getattr(self, name) for name in self.model_fields_set}
        return DatasetLifecycle(**{**values, **changes})


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
    principal_investigator: str | None = None  # required by SciCat for raw datasets
    creation_location: str | None = None  # required by SciCat for raw datasets
    datasetlifecycle: DatasetLifecycle | None = None


def new_raw_dataset(
    owner_group: str, name: str, *, pid: str | None = None, size: int | None = None, number_of_files: int | None = None
) -> Dataset:
    """A raw dataset with every field SciCat requires, as an ingestor registers one (test data, tools)."""
    fields: dict[str, Any] = {"pid": pid} if pid else {}
    if size is not None:
        fields.update(size=size, number_of_files=number_of_files)
    return Dataset(
        **fields,
        type="raw",
        owner="archiver",
        owner_group=owner_group,
        access_groups=[owner_group],
        contact_email="archiver@example.org",
        principal_investigator="archiver@example.org",
        creation_location="archiver test data",
        source_folder="/test-data",
        dataset_name=name,
        creation_time=datetime.now(UTC),
    )


class OrigDatablock(ScicatModel):
    id: str | None = None
    dataset_id: str | None = None
    size: NonNegativeInt
    chk_alg: str | None = None
    data_file_list: list[DataFile]


class Datablock(ScicatModel):
    id: str | None = None
    dataset_id: str | None = None
    archive_id: str = Field(min_length=1)  # unique id of the stored package, found again on retrieval
    size: NonNegativeInt  # unpacked bytes
    packed_size: NonNegativeInt
    chk_alg: str | None = None
    version: str  # packing format version
    data_file_list: list[DataFile]


class ListedDatablock(ScicatModel):
    """A datablock as `GET datablocks` lists it when asked for `LISTED_DATABLOCK_FIELDS` only."""

    id: str = Field(alias="_id", min_length=1)
    dataset_id: str = Field(min_length=1)
    archive_id: str = Field(min_length=1)
    packed_size: int | None = None


LISTED_DATABLOCK_FIELDS = ("datasetId", "archiveId", "packedSize")  # SciCat always adds _id


class NewOrigDatablock(ScicatModel):
    """Body of `POST datasets/{pid}/origdatablocks`: the dataset is the path; owner and access groups
    are the dataset's, set by SciCat."""

    model_config = ConfigDict(extra="forbid")
    size: NonNegativeInt
    chk_alg: str | None = None
    data_file_list: list[DataFile] = Field(min_length=1)


class NewDatablock(ScicatModel):
    """Body of `POST datasets/{pid}/datablocks` (same rule as NewOrigDatablock)."""

    model_config = ConfigDict(extra="forbid")
    archive_id: str = Field(min_length=1)
    size: NonNegativeInt
    packed_size: NonNegativeInt
    chk_alg: str = Field(min_length=1)
    version: str
    data_file_list: list[DataFile] = Field(min_length=1)


class DatasetListEntry(ScicatModel):
    pid: str = Field(min_length=1)
    files: list[str] = Field(default_factory=list)


class JobParams(ScicatModel):
    dataset_list: list[DatasetListEntry] = Field(default_factory=list)


class JobResultEntry(ScicatModel):
    """One download: a datablock (a tar to unpack) or, in a partial retrieval, one file (`name` its path).
    `chk`/`chkAlg` let a downloader check what it got (SciCat keeps the result object as it is sent)."""

    dataset_id: str
    name: str
    size: NonNegativeInt
    archive_id: str
    url: str
    type: Literal["datablock", "file"] | None = None
    chk_alg: str | None = None
    chk: str | None = None


class JobResultObject(ScicatModel):
    result: list[JobResultEntry]
    download_script: str | None = None  # POSIX sh: resumable downloads, checksums, unpacking (packing.download_script)


class Job(ScicatModel):
    """A job as SciCat returns it: v3 (`/api/v3/jobs`) has the dataset list at the top level and
    `jobStatusMessage`; v4 has `jobParams.datasetList`, `statusCode` and `statusMessage`."""

    id: str | None = None
    type: str
    dataset_list: list[DatasetListEntry] | None = None
    job_params: JobParams | None = None
    job_status_message: str | None = None
    status_code: str | None = None
    status_message: str | None = None
    job_result_object: dict[str, Any] | None = None

    @property
    def created_id(self) -> str:
        """The id SciCat gave the job (ValueError for a job without one)."""
        if self.id is None:
            raise ValueError(f"SciCat answered with a {self.type} job without an id")
        return self.id

    @property
    def dataset_pids(self) -> list[str]:
        """The PIDs of the job's datasets, whichever shape the job came in."""
        return [entry.pid for entry in self._entries()]

    def _entries(self) -> list[DatasetListEntry]:
        return (self.job_params.dataset_list if self.job_params else None) or self.dataset_list or []

    @property
    def dataset_files(self) -> dict[str, list[str]]:
        """The files a job names per dataset (`files` of its dataset list); datasets without any are left out."""
        return {entry.pid: list(entry.files) for entry in self._entries() if entry.files}

    @property
    def status(self) -> str | None:
        return self.status_code or self.job_status_message

    @property
    def is_finished(self) -> bool:
        """SciCat already holds a final status for the job (v3 or v4 status field)."""
        return (self.job_status_message or self.status_code or "").startswith("finished")
