"""One aiosmtpd instance of tests/test_haproxy_cluster.py, in its own process
so that the test can SIGKILL it in the middle of the load::

    python -m tests._cluster_backend NAME RECORDS

It listens on 127.0.0.1 port 0 with the PROXY protocol on, prints
``PORT <n>`` on stdout once it accepts connections, and serves until SIGTERM,
SIGKILL, or the end of its stdin (so that it cannot outlive the test that
started it).

Each message is appended to RECORDS as one JSON line, written with a single
``write()`` on an ``O_APPEND`` descriptor and ``fsync()``-ed *before* the
handler returns ``250``: a message the client saw accepted is on disk.  The
line holds the message's ``Message-ID`` and ``X-Attempt`` headers, the
instance's name and pid, the client address announced by the PROXY header,
and ``session.peer`` (the proxy's side of the connection).

``handle_PROXY`` accepts headers from the loopback address only, including
HAProxy's health checks, which arrive with the ``LOCAL`` command.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from email.parser import BytesHeaderParser
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class Recorder:
    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    async def handle_PROXY(self, server: SMTP, session: Session, envelope: Envelope,
                           proxy_data: Any) -> bool:
        return bool(session.peer and session.peer[0] == "127.0.0.1")

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        headers = BytesHeaderParser().parsebytes(envelope.content)
        proxy = session.proxy_data
        record = {
            "backend": self.name,
            "pid": os.getpid(),
            "msgid": headers.get("Message-ID"),
            "attempt": headers.get("X-Attempt"),
            "src": [str(proxy.src_addr), proxy.src_port],
            "dst": [str(proxy.dst_addr), proxy.dst_port],
            "peer": list(session.peer[:2]),
        }
        line = (json.dumps(record) + "\n").encode()
        written = os.write(self.fd, line)
        assert written == len(line)
        os.fsync(self.fd)
        return "250 OK"


async def serve(name: str, path: str) -> None:
    loop = asyncio.get_running_loop()
    handler = Recorder(name, path)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=name, proxy_protocol_timeout=5),
        "127.0.0.1", 0)
    stop = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, request_stop)

    def watch_stdin() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(request_stop)

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await stop
    server.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
