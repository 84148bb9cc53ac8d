"""What SciCat and the LTS say about a dataset's archive, and the lifecycle SciCat shows once it is archived."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from archiver.clients.connections import Connections, open_lts
from archiver.config.runtime import RunConfiguration
from archiver.flows.scicat_tasks import scicat_call
from archiver.packing.planning import ListedFile
from archiver.packing.records import ListedChecksum, listed_algorithm
from archiver.packing.registered import ArchiveDifferences, ArchiveOnRecord, archive_differences, check_registered
from archiver.scicat.models import ArchiveStatus, Datablock, DataFile

ARCHIVED_LIFECYCLE = {
    "archive_status_message": ArchiveStatus.DATASET_ON_ARCHIVE_DISK,
    "archivable": False,
    "retrievable": True,
}


@dataclass(frozen=True)
class OnRecord:
    registered: list[Datablock]  # the dataset's datablocks in SciCat
    listed: list[ListedFile]  # every file entry of its origdatablocks
    archive: ArchiveOnRecord  # what the registered datablocks amount to on the LTS

    def registered_wire(self) -> list[dict[str, Any]]:
        return [d.to_wire() for d in self.registered]

    def differences(self) -> ArchiveDifferences:
        return archive_differences(self.registered_wire(), self.listed)


def dataset_on_record(pid: str, config: RunConfiguration, connections: Connections) -> OnRecord:
    """What SciCat and the LTS say about a dataset's archive (packing.registered)."""
    scicat = connections.scicat
    registered = _one_per_archive_id(scicat_call(f"datablocks of {pid}", scicat.get_datablocks, pid))
    origdatablocks = scicat_call(f"origdatablocks of {pid}", scicat.get_origdatablocks, pid)
    listed = [listed_file(f, block.chk_alg) for block in origdatablocks for f in block.data_file_list]
    archive = check_registered(
        open_lts(config.settings.lts), pid, [d.to_wire() for d in registered], [f.path for f in listed]
    )
    return OnRecord(registered, listed, archive)


def _one_per_archive_id(datablocks: list[Datablock]) -> list[Datablock]:
    """A datablock SciCat holds twice (a registration repeated by an older archiver) counts once, so it is
    retrieved once; the audit reports the duplicates (`duplicate-registration`)."""
    first: dict[str, Datablock] = {}
    for datablock in datablocks:
        first.setdefault(datablock.archive_id, datablock)
    return list(first.values())


def listed_file(data_file: DataFile, chk_alg: str | None) -> ListedFile:
    """An origdatablock's file entry; its checksum kept when its algorithm is one we can compute."""
    algorithm = listed_algorithm(chk_alg)
    checksum = ListedChecksum(algorithm=algorithm, value=data_file.chk) if algorithm and data_file.chk else None
    return ListedFile(data_file.path.removeprefix("./"), data_file.size, checksum)
