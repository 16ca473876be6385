"""The test harness's own promises: a server handed a port another process took first moves to
a free one on its first start (xdist workers may be handed the same free port), and never on a
restart (clients know its port)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import REDIS_BINARY, PortTaken, RedisServer

pytestmark = pytest.mark.skipif(REDIS_BINARY is None, reason="needs redis-server (redis-server)")


def test_a_taken_port_moves_a_first_start_and_fails_a_restart(tmp_path: Path) -> None:
    first = RedisServer(tmp_path / "first")
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first.start()
    second = RedisServer(tmp_path / "second")
    second.port = first.port
    try:
        second.start()
        assert second.port != first.port and second.running
        second.kill()
        second.port = first.port
        with pytest.raises(PortTaken):
            second.start()
        assert first.running
    finally:
        second.stop()
        first.stop()
