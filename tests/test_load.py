"""Load: thousands of concurrent connections, each completing transactions.

The load client runs in a separate process (``python -m tests._hostile
load``) so that it neither starves the server's event loop nor shares its
file descriptor limit.  It first opens every connection and reads each
greeting - so all of them are held at once - then runs the transactions.

Checks: every connection was held at the same time, every message answered
250 reached the handler exactly once, and the server's resident memory grew
by a bounded amount per connection.  Default: 2,000 connections x 2
transactions; ``AIOSMTPD_LONG=1``: 10,000 x 5 (or AIOSMTPD_LOAD_CONNECTIONS /
AIOSMTPD_LOAD_TRANSACTIONS).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from aiosmtpd.smtp import SMTP
from tests._hostile import LONG, Sink, raise_nofile, report, rss_kib, scale
from tests._server import LoopThread

pytestmark = [pytest.mark.timeout(0 if LONG else 60), pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent

# Per held connection: the protocol, its transport, socket buffers' Python
# side and the session task.  Measured around 10-20 KiB; the bound leaves
# room for allocator slack without letting a real leak (a buffer kept per
# connection) through.
MAX_KIB_PER_CONNECTION = 64


class Counted(SMTP):
    """Tracks how many connections are open at once, and the server's RSS
    when that number peaks."""

    open_now = 0
    peak_open = 0
    peak_rss = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cls = Counted
        cls.open_now += 1
        if cls.open_now > cls.peak_open:
            cls.peak_open = cls.open_now
            if cls.peak_open % 250 == 0:
                cls.peak_rss = max(cls.peak_rss, rss_kib())
        super().connection_made(transport)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        Counted.open_now -= 1
        super().connection_lost(exc)


@pytest.fixture
def lt() -> Iterator[LoopThread]:
    t = LoopThread()
    yield t
    t.close()


def test_concurrent_connections(lt: LoopThread) -> None:
    connections = scale(2000, 10_000, "AIOSMTPD_LOAD_CONNECTIONS")
    transactions = scale(2, 5, "AIOSMTPD_LOAD_TRANSACTIONS")
    if not raise_nofile(connections + 500):
        pytest.skip(f"RLIMIT_NOFILE cannot be raised to {connections + 500}")
    sink = Sink()
    Counted.open_now = Counted.peak_open = Counted.peak_rss = 0

    def factory() -> SMTP:
        return Counted(sink, hostname="load.example")

    server = lt.run(lt.loop.create_server(factory, "127.0.0.1", 0, backlog=4096))
    port = server.sockets[0].getsockname()[1]
    baseline = rss_kib()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tests._hostile", "load", str(port), str(connections),
             str(transactions)],
            cwd=ROOT, env=env, capture_output=True, timeout=None if LONG else 50,
        )
    finally:
        async def close() -> None:
            server.close()
            await server.wait_closed()

        lt.run(close())
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    accepted: list[str] = result["accepted"]
    grown = max(Counted.peak_rss, rss_kib()) - baseline
    missing = [m for m in accepted if sink.ids[m] != 1]
    report(
        "load", connections=connections, held=result["held"], peak_open=Counted.peak_open,
        transactions=connections * transactions, accepted=len(accepted),
        delivered=sink.count, messages_lost=len(missing), duplicates=len(sink.duplicates()),
        client_errors=result["errors"], rss_growth_kib=grown,
        kib_per_connection=round(grown / connections, 1),
    )
    assert result["errors"] == {}
    assert result["held"] == connections
    assert Counted.peak_open >= connections
    assert len(accepted) == connections * transactions
    assert missing == []
    assert sink.count == len(accepted)
    assert sink.duplicates() == []
    assert grown < connections * MAX_KIB_PER_CONNECTION, grown
