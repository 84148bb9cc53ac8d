"""Ports for the servers tests and `archiver dev` start: outside the range client connections draw from, never one
somebody holds, and a band per pytest-xdist worker (two workers once started servers on the same port)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from archiver import local_services


@pytest.fixture
def band():
    saved = local_services._ports, local_services._next_port
    yield local_services.use_port_band
    local_services._ports, local_services._next_port = saved


def _ephemeral_range() -> range:
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return range(low, high + 1)


def test_ports_are_outside_the_range_client_connections_take_theirs_from():
    ports = {local_services.free_port() for _ in range(50)}
    assert len(ports) == 50
    assert not ports & set(_ephemeral_range())


def test_two_workers_bands_never_hand_out_the_same_port(band):
    band(0)
    first = {local_services.free_port() for _ in range(300)}
    band(1)
    second = {local_services.free_port() for _ in range(300)}
    assert not first & second


def test_a_port_somebody_listens_on_is_skipped(band):
    band(2)
    expected = local_services._ports[0]
    with socket.socket() as held:
        held.bind(("127.0.0.1", expected))
        held.listen()
        band(2)
        assert local_services.free_port() == expected + 1
