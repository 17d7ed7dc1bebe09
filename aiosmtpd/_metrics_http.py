"""The CLI's ``--metrics`` endpoint: the Prometheus text format over HTTP/1.0.

Small on purpose: one request per connection, ``GET /metrics`` only, the
request head read with a size and a time limit, so that a scraper (or
anything else that connects) can never hold the server up.  It needs no
dependency: the exposition format is plain text (aiosmtpd.metrics.render).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import signal
import socket
from typing import Callable, Optional

from aiosmtpd.metrics import CONNECTIONS_OPEN, STORAGE_BYTES, Metrics, render

log = logging.getLogger("mail.log")

_HEAD_LIMIT = 8192
_READ_TIMEOUT = 5.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _response(status: str, body: str, content_type: str = "text/plain; charset=utf-8") -> bytes:
    data = body.encode()
    head = (
        f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + data


async def _serve_one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, render: Callable[[], str]
) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) == 3 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
            writer.write(_response("200 OK", render(), CONTENT_TYPE))
        elif len(parts) == 3 and parts[0] == b"GET":
            writer.write(_response("404 Not Found", "Try /metrics\n"))
        else:
            writer.write(_response("400 Bad Request", "Send GET /metrics\n"))
        await writer.drain()
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def start_metrics_server(
    host: Optional[str],
    port: Optional[int],
    render: Callable[[], str],
    sock: Optional[socket.socket] = None,
) -> asyncio.Server:
    """Listen on ``host:port`` (or ``sock``); each ``GET /metrics`` gets ``render()``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_one(reader, writer, render)

    return await asyncio.start_server(serve, host, port, sock=sock, limit=_HEAD_LIMIT)


def serve_shared_metrics(sock: socket.socket, shared: mmap.mmap, workers: int) -> None:
    """The metrics process of ``--workers``: serve the sum of every worker's
    table in ``shared`` (one ``STORAGE_BYTES`` slot each) on ``sock``, until
    SIGTERM or SIGINT."""
    tables = [_table(shared, i) for i in range(workers)]
    loop = asyncio.new_event_loop()
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, loop.stop)
        server = loop.run_until_complete(
            start_metrics_server(None, None, lambda: render(t.snapshot() for t in tables), sock)
        )
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
    finally:
        loop.close()


def shared_metrics(shared: mmap.mmap, index: int) -> Metrics:
    """Worker ``index``'s table in ``shared``: what it counted before a
    restart is kept, but its connections then are gone."""
    metrics = _table(shared, index)
    metrics.values[CONNECTIONS_OPEN] = 0
    return metrics


def _table(shared: mmap.mmap, index: int) -> Metrics:
    """Worker ``index``'s slot of ``shared`` (Metrics takes STORAGE_BYTES)."""
    return Metrics(memoryview(shared)[index * STORAGE_BYTES :])
