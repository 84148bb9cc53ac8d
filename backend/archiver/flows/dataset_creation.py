"""A dataset to try the system with: random files in the landing zone, registered in SciCat like an ingestor would."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from archiver.clients.connections import connect
from archiver.clients.outage import retry_refused_connections
from archiver.config.deployments import TEST_DATASET
from archiver.config.runtime import load_run_configuration
from archiver.flows.scicat_tasks import scicat_call
from archiver.packing.naming import landing_prefix
from archiver.scicat.models import DataFile, NewOrigDatablock, new_raw_dataset

retry_refused_connections()  # before this flow run makes a Prefect client (clients/outage.py)


class RandomFile:
    """A file-like object of `size` random bytes, hashed as it is read; memory stays at one chunk."""

    def __init__(self, size: int, algorithm: str = "sha256"):
        self._left = size
        self.hash = hashlib.new(algorithm)

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = os.urandom(n)
        self._left -= n
        self.hash.update(data)
        return data


@task(name="upload-test-file", task_run_name="upload {path}", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def upload_test_file(s3, bucket: str, pid: str, path: str, size: int, algorithm: str) -> DataFile:
    source = RandomFile(size, algorithm)
    s3.upload_fileobj(source, bucket, landing_prefix(pid) + path)
    return DataFile(
        path=path, size=size, time=datetime.now(UTC), chk=source.hash.hexdigest(), uid="0", gid="0", perm="644"
    )


@flow(name=TEST_DATASET.flow, flow_run_name="create-test-dataset-{num_files}x{file_size_mb}MB")
def create_test_dataset_flow(
    num_files: int = 10,
    file_size_mb: float = 10.0,
    owner_group: str = "archiver-test",
    dataset_id: str | None = None,
) -> str:
    """Upload `num_files` random files of `file_size_mb` MB and register the dataset in SciCat; returns its PID
    (`dataset_id` when given, else the one SciCat assigns)."""
    if num_files < 1 or file_size_mb <= 0:
        raise ValueError(f"need num_files >= 1 and file_size_mb > 0, got {num_files} and {file_size_mb}")
    log = get_run_logger()
    config = load_run_configuration()
    size = int(file_size_mb * 1024 * 1024)
    algorithm = config.settings.archiver.checksum_algorithm
    with connect(config) as connections:
        scicat = connections.scicat
        dataset = scicat_call(
            "create dataset",
            scicat.create_dataset,
            new_raw_dataset(
                owner_group, "archiver test dataset", pid=dataset_id, size=num_files * size, number_of_files=num_files
            ),
        )
        pid = dataset.pid
        if pid is None:
            raise ValueError("SciCat answered the new dataset without its pid")
        bucket = config.settings.s3.landingzone_bucket
        files = [
            upload_test_file(connections.s3, bucket, pid, f"file_{i:04d}.bin", size, algorithm)
            for i in range(num_files)
        ]
        scicat_call(
            f"origdatablock of {pid}",
            scicat.create_origdatablock,
            pid,
            NewOrigDatablock(
                size=num_files * size,
                chk_alg=algorithm,
                data_file_list=files,
            ),
        )
    log.info("test dataset %s: %d file(s) of %d bytes in s3://%s/%s", pid, num_files, size, bucket, landing_prefix(pid))
    return pid
