"""Naming the service behind a failure, and waiting out an unreachable Prefect API, with real errors:
a refused TCP connection, botocore's own exceptions, an OSError from the filesystem."""

from __future__ import annotations

import http.server
import threading
import time

import httpx
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from archiver.clients.outage import PrefectUnavailable, call_prefect, is_prefect_outage
from archiver.flows.failures import describe_failure, failing_service
from archiver.local_services import free_port
from archiver.packing.errors import IntegrityError, MissingFilesError
from archiver.scicat.client import ScicatError


def refused_connection() -> httpx.ConnectError:
    try:
        httpx.get(f"http://127.0.0.1:{free_port()}/api/health", timeout=2)
    except httpx.ConnectError as e:
        return e
    raise AssertionError("nothing should listen on a free port")


def raised(error: BaseException, cause: BaseException | None = None) -> BaseException:
    try:
        raise error from cause
    except BaseException as e:
        return e


def test_each_service_is_named():
    missing = ClientError({"Error": {"Code": "NoSuchBucket", "Message": "gone"}}, "GetObject")
    assert failing_service(refused_connection()) == "Prefect API"
    assert failing_service(ScicatError("get dataset", "x", "503 Service Unavailable", 503)) == "SciCat"
    assert failing_service(missing) == "S3"
    assert failing_service(EndpointConnectionError(endpoint_url="http://minio:9000")) == "S3"
    assert failing_service(IntegrityError("datablock x", ["checksum differs"])) == "LTS"
    try:
        with open("/nonexistent-lts/x.tar"):
            pass
    except OSError as e:
        assert failing_service(e) == "LTS"
    assert failing_service(ValueError("something else")) is None


def test_description_names_prefect_unreachable_behind_a_wrapper():
    wrapped = raised(RuntimeError("Unable to release concurrency slots"), refused_connection())
    text = describe_failure(wrapped)
    assert text.startswith("Prefect API unreachable (RuntimeError: Unable to release concurrency slots; ")
    assert "caused by ConnectError" in text


def test_user_errors_and_unknown_errors_are_described_as_they_are():
    user = MissingFilesError("20.500.11935/x", ["a.bin"])
    assert describe_failure(user) == f"MissingFilesError: {user}"
    assert describe_failure(ValueError("odd")) == "ValueError: odd"
    assert describe_failure(ScicatError("patch job", "j", "500", 500)).startswith("SciCat error (ScicatError: ")


def test_call_prefect_gives_up_after_its_bound_naming_what_it_could_not_do():
    url = f"http://127.0.0.1:{free_port()}/api/health"
    started = time.monotonic()
    with pytest.raises(PrefectUnavailable, match="could not check for cancellation") as raised_:
        call_prefect(lambda: httpx.get(url, timeout=1), "check for cancellation", max_wait_s=3)
    assert 3 <= time.monotonic() - started < 10
    assert isinstance(raised_.value.__cause__, httpx.ConnectError)


def test_call_prefect_rides_out_an_api_that_comes_back():
    port = free_port()
    server = http.server.HTTPServer(("127.0.0.1", port), _Ok)
    comes_back = threading.Timer(3, lambda: threading.Thread(target=server.serve_forever, daemon=True).start())
    comes_back.start()
    try:
        response = call_prefect(
            lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=1).raise_for_status(),
            "read the flow run",
            max_wait_s=60,
        )
        assert response.status_code == 200
    finally:
        comes_back.join()
        server.shutdown()
        server.server_close()


def test_call_prefect_does_not_retry_a_refusal():
    calls = []

    def refuse():
        calls.append(1)
        request = httpx.Request("GET", "http://prefect/api/flow_runs/x")
        raise httpx.HTTPStatusError("404", request=request, response=httpx.Response(404, request=request))

    with pytest.raises(httpx.HTTPStatusError):
        call_prefect(refuse, "read the flow run", max_wait_s=60)
    assert len(calls) == 1


def status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://prefect/api/v2/concurrency_limits/increment-with-lease")
    return httpx.HTTPStatusError(str(code), request=request, response=httpx.Response(code, request=request))


@pytest.mark.parametrize(("cause", "outage"), [(500, True), (503, True), (404, False), (None, False)])
def test_a_slot_not_taken_is_an_outage_only_when_the_api_failed(cause, outage):
    """The database behind the server restarting answers a slot acquisition 500 (flows/lts_slices.py waits
    for it); a refusal, or a limit that does not exist, is no outage."""
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError

    error = raised(ConcurrencySlotAcquisitionError("Unable to acquire"), cause and status_error(cause))
    assert is_prefect_outage(error) is outage
    assert is_prefect_outage(raised(ConcurrencySlotAcquisitionError("Unable to acquire"), refused_connection()))


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


class _DatabaseRestarting(http.server.BaseHTTPRequestHandler):
    """Answers 500 to each path's first request (the server's database is away), then 200."""

    seen: list[str] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        first = self.path not in self.seen
        self.seen.append(self.path)
        self.send_response(500 if first else 200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST  # noqa: N815

    def log_message(self, *args):
        pass


def test_prefect_clients_retry_a_500_only_where_repeating_is_safe():
    from prefect.client.base import PrefectHttpxSyncClient
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from archiver.clients.outage import retry_refused_connections

    retry_refused_connections()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _DatabaseRestarting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with (
            temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 2}),
            PrefectHttpxSyncClient(base_url=f"http://127.0.0.1:{server.server_port}/api") as client,
        ):
            assert client.post("/v2/concurrency_limits/decrement-with-lease", json={}).status_code == 200
            assert client.get("/flow_runs/x").status_code == 200
            with pytest.raises(PrefectHTTPStatusError, match="500"):
                client.post("/flow_runs/", json={})  # creating: a 500 may follow a commit, so not repeated
    finally:
        server.shutdown()
    assert _DatabaseRestarting.seen == ["/api/v2/concurrency_limits/decrement-with-lease"] * 2 + [
        "/api/flow_runs/x"
    ] * 2 + ["/api/flow_runs/"]
