"""The S3 server a benchmark runs against: SeaweedFS (a real S3 implementation, by default) or moto (`--s3 moto`,
for comparison with figures measured on it)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from archiver import local_services
from archiver.storage.s3 import S3Credentials


def add_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--s3",
        choices=("seaweedfs", "moto"),
        default="seaweedfs",
        help="S3 server to run against (default seaweedfs; moto keeps objects in its own process)",
    )


def server(kind: str, folder: Path, credentials: S3Credentials) -> contextlib.AbstractContextManager:
    """The running server (`local_services.RunningService`), which accepts `credentials` (moto: any key)."""
    if kind == "moto":
        return local_services.moto_s3_server(folder)
    return local_services.s3_server(folder / "s3-data", folder, [local_services.S3Identity("bench", credentials)])
