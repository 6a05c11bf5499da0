"""The local-server launcher (tests, demo, benchmark): a port another process took
between choosing and binding it is replaced at a first start, never when it was given."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from wolfhub.servers import InfluxServer, PortTaken, RedisServer


def taken_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize("kind", [RedisServer, InfluxServer])
def test_a_taken_port_is_replaced_at_first_start(tmp_path: Path,
                                                 kind: type[RedisServer]) -> None:
    with taken_port() as sock:
        port = sock.getsockname()[1]
        server = kind(tmp_path / "s", port=port)
        server.start()
        try:
            assert server.port != port and server.ready()
        finally:
            server.kill()


def test_a_given_port_is_never_moved(tmp_path: Path) -> None:
    with taken_port() as sock:
        port = sock.getsockname()[1]
        server = RedisServer(tmp_path / "s", port=port, fixed_ports=True)
        with pytest.raises(PortTaken, match="already in use"):
            server.start()
        assert server.port == port and not server.running
