"""`archiver metrics`: serves the collector over HTTP for Prometheus (any path; /metrics by convention)."""

from __future__ import annotations

import signal
import threading
from datetime import timedelta

from prometheus_client import CollectorRegistry, start_http_server

from archiver.metrics.collector import ArchiverCollector


def _archiver_s3(config):
    """An S3 client of the archiver's account (Prefect Secret blocks, as the flows use)."""
    from prefect.blocks.system import Secret

    from archiver.config.secrets import ARCHIVER_S3
    from archiver.storage.s3 import S3Credentials, s3_client

    minio = config.settings.s3
    credentials = S3Credentials(
        Secret.load(ARCHIVER_S3.user.block).get(), Secret.load(ARCHIVER_S3.password.block).get()
    )
    return s3_client(minio.endpoint, minio.region, credentials)


def make_registry(slow_ttl_s: float, fold_after_hours: float) -> CollectorRegistry:
    from archiver.config.runtime import load_run_configuration

    registry = CollectorRegistry()
    registry.register(
        ArchiverCollector(load_run_configuration, _archiver_s3, slow_ttl_s, timedelta(hours=fold_after_hours))
    )
    return registry


def serve(host: str, port: int, slow_ttl_s: float, fold_after_hours: float) -> None:
    """Serve until SIGTERM or SIGINT."""
    server, _ = start_http_server(port, addr=host, registry=make_registry(slow_ttl_s, fold_after_hours))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"archiver metrics: serving on http://{host}:{server.server_port}/metrics", flush=True)
    stop.wait()
    server.shutdown()
