"""A Prefect server of a test's own (own PostgreSQL database, fixed port), for tests that take it or its database
away without disturbing the session's server: see the `own_prefect` fixture."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

from archiver import local_services
from tests.integration.restartable import Restartable

POSTGRES = ("127.0.0.1", 5432)


class DatabaseLink:
    """The TCP path from the server to PostgreSQL, which a test can cut: while cut, connections are refused and
    the open ones reset, as when PostgreSQL stops (a database that merely refuses logins makes Prefect's server
    answer 503, which its clients retry; a vanished one makes it answer 500)."""

    def __init__(self, target: tuple[str, int] = POSTGRES):
        self.target = target
        self.port = local_services.free_port()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def cut(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._forward, args=(source, sink), daemon=True).start()

    def _forward(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):  # one side ended: end the connection, as a proxy without half-close
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        with self._lock:
            self._sockets -= {source, sink}


@contextlib.contextmanager
def prefect_api(api_url: str):
    """This process's Prefect client pointed at `api_url` (settings and environment alike)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            yield
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved


class RestartableServer(Restartable):
    """A Prefect server that can be killed and started again on the same port and database."""

    def __init__(self, home, database_url: str):
        port = local_services.free_port()
        self.api_url = f"http://127.0.0.1:{port}/api"
        self.database_link = DatabaseLink()
        host_and_port = f"{POSTGRES[0]}:{POSTGRES[1]}"
        assert host_and_port in database_url, database_url
        database_url = database_url.replace(host_and_port, f"127.0.0.1:{self.database_link.port}")
        super().__init__(
            lambda: local_services.prefect_server(
                # The session server's credentials (the `pipeline` fixture started it): this process already sends them.
                home,
                os.environ["PREFECT_API_AUTH_STRING"],
                database_url=database_url,
                port=port,
                extra_env={"PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS": "1"},
            )
        )

    @contextlib.contextmanager
    def database_down(self) -> Iterator[None]:
        """PostgreSQL gone from under the server: it lives and answers 500 to whatever needs the database."""
        self.database_link.cut()
        try:
            yield
        finally:
            self.database_link.restore()
