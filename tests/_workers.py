"""Helpers for tests/test_workers.py that run inside the server processes.

``-c tests._workers.PidHandler`` makes each worker answer NOOP with its pid.

``python -m tests._workers serve [--shared]`` runs two workers through the
Python API (aiosmtpd.workers) on 127.0.0.1, port 0, printing ``port N`` on
stdout once bound and ``stopped by N`` (the signal) at the end;
``python -m tests._workers crash`` runs one worker that
prints ``started <time.monotonic()>`` on stderr and exits with status 3 at
once, over and over.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from typing import Any

from aiosmtpd.smtp import SMTP
from aiosmtpd.workers import bind_sockets, create_server, run_workers


class PidHandler:
    """A sink whose NOOP reply tells which process answered."""

    async def handle_NOOP(self, server: Any, session: Any, envelope: Any, arg: str) -> str:
        return f"250 pid {os.getpid()}"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return f"250 OK pid {os.getpid()}"


def serve(sockets: list[socket.socket]) -> None:
    """One worker, as the docs show it: serve until SIGTERM or SIGINT."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await create_server(lambda: SMTP(PidHandler()), sockets)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def crash(sockets: list[socket.socket]) -> None:
    print(f"started {time.monotonic()}", file=sys.stderr, flush=True)
    sys.exit(3)


def _main(argv: list[str]) -> None:
    mode = argv[0]
    count = 1 if mode == "crash" else 2
    groups = bind_sockets("127.0.0.1", 0, count, reuse_port=False if "--shared" in argv else None)
    print(f"port {groups[0][0].getsockname()[1]}", flush=True)
    stopped_by = run_workers(crash if mode == "crash" else serve, groups)
    print(f"stopped by {stopped_by}", flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
