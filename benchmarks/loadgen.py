"""A Python SMTP load generator: asyncio streams, raw protocol lines, no smtplib.

Throughput mode (lock-step like Postfix's smtp-source: no pipelining)::

    python loadgen.py --port P --sessions 20 --messages 2000 --per-connection 1 \
        --size 1024 [--starttls CA.pem]

``--per-connection 0`` keeps each session on one connection for all its
messages.  Prints one JSON line: ``{"messages": n, "bytes": n, "seconds": t}``.

Idle mode::

    python loadgen.py --port P --idle 2000

opens that many connections, sends EHLO on each, prints ``{"ready": n,
"seconds": t}``, then holds them until a line (or EOF) arrives on stdin.

Standalone (stdlib only) so it runs under any interpreter; the orchestrator
pins it to its own CPU with ``--cpu``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import ssl
import sys
import time

CLIENT_NAME = b"client.bench.localhost"
SERVER_NAME = "bench.localhost"


class SMTPError(Exception):
    pass


def make_message(size: int) -> bytes:
    """Headers plus *size* bytes of 80-byte lines, ending with CRLF.CRLF.

    The shape follows smtp-source's ``-l`` payload so both clients send the
    same kind of message.  No line starts with '.', so no dot-stuffing.
    """
    head = (
        b"From: <sender@client.bench.localhost>\r\n"
        b"To: <rcpt@bench.localhost>\r\n"
        b"Subject: benchmark\r\n"
        b"Message-Id: <bench@client.bench.localhost>\r\n\r\n"
    )
    lines = []
    remaining = size
    number = 1
    while remaining > 0:
        width = min(78, max(remaining - 2, 1))
        lines.append((str(number).encode() + b"X" * 78)[:width] + b"\r\n")
        remaining -= width + 2
        number += 1
    return head + b"".join(lines) + b".\r\n"


async def reply(reader: asyncio.StreamReader, expect: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line:
            raise SMTPError(f"connection closed, expected {expect.decode()}")
        if line[3:4] != b"-":
            break
    if not line.startswith(expect):
        raise SMTPError(f"expected {expect.decode()}, got {line!r}")


async def command(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes, expect: bytes
) -> None:
    writer.write(line)
    await reply(reader, expect)


async def open_session(
    port: int, tls: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reply(reader, b"220")
    await command(reader, writer, b"EHLO " + CLIENT_NAME + b"\r\n", b"250")
    if tls is not None:
        await command(reader, writer, b"STARTTLS\r\n", b"220")
        await writer.start_tls(tls, server_hostname=SERVER_NAME)
        await command(reader, writer, b"EHLO " + CLIENT_NAME + b"\r\n", b"250")
    return reader, writer


class Work:
    """Messages still to send, shared by all sessions."""

    def __init__(self, messages: int) -> None:
        self.remaining = messages

    def take(self) -> bool:
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


class Session(asyncio.Protocol):
    """One client connection as a callback state machine.

    Streams cost a task switch and a future per reply; a client that pays
    that is often slower than the server it measures, so the hot loop
    answers each reply straight from ``data_received``.
    """

    def __init__(
        self, work: Work, per_connection: int, message: bytes, tls: ssl.SSLContext | None
    ) -> None:
        self.work = work
        self.per_connection = per_connection
        self.message = message
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.state = "greeting"
        self.sent = 0
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if self.state == "closed":
                self.done.set_result(self.sent)
            else:
                self.done.set_exception(SMTPError(f"connection lost in {self.state}: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            eol = self.buffer.find(b"\r\n")
            if eol < 0:
                return
            line, self.buffer = self.buffer[:eol], self.buffer[eol + 2 :]
            if line[3:4] == b"-":
                continue
            try:
                self._advance(line)
            except SMTPError as exc:
                assert self.transport is not None
                self.transport.abort()
                if not self.done.done():
                    self.done.set_exception(exc)
                return

    _EXPECT = {
        "greeting": b"220",
        "ehlo": b"250",
        "starttls": b"220",
        "mail": b"250",
        "rcpt": b"250",
        "data": b"354",
        "body": b"250",
        "quit": b"221",
    }

    def _send(self, line: bytes, state: str) -> None:
        assert self.transport is not None
        self.state = state
        self.transport.write(line)

    def _advance(self, line: bytes) -> None:
        expect = self._EXPECT.get(self.state)
        if expect is None or not line.startswith(expect):
            raise SMTPError(f"in {self.state}: expected {expect!r}, got {line!r}")
        state = self.state
        if state == "greeting":
            self._send(b"EHLO " + CLIENT_NAME + b"\r\n", "ehlo")
        elif state == "ehlo":
            if self.tls is not None:
                self._send(b"STARTTLS\r\n", "starttls")
            else:
                self._send(MAIL, "mail")
        elif state == "starttls":
            self.state = "handshake"
            asyncio.ensure_future(self._start_tls())
        elif state == "mail":
            self._send(RCPT, "rcpt")
        elif state == "rcpt":
            self._send(b"DATA\r\n", "data")
        elif state == "data":
            self._send(self.message, "body")
        elif state == "body":
            self.sent += 1
            more = not self.per_connection or self.sent < self.per_connection
            if more and self.work.take():
                self._send(MAIL, "mail")
            else:
                self._send(b"QUIT\r\n", "quit")
        elif state == "quit":
            self.state = "closed"
            assert self.transport is not None
            self.transport.close()

    async def _start_tls(self) -> None:
        assert self.transport is not None and self.tls is not None
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(self.transport, self, self.tls, server_hostname=SERVER_NAME)
        except (OSError, ssl.SSLError) as exc:
            if not self.done.done():
                self.done.set_exception(exc)
            return
        assert isinstance(new, asyncio.Transport)
        self.transport = new
        self.tls = None  # the second EHLO goes straight on to MAIL
        self._send(b"EHLO " + CLIENT_NAME + b"\r\n", "ehlo")


MAIL = b"MAIL FROM:<sender@client.bench.localhost>\r\n"
RCPT = b"RCPT TO:<rcpt@bench.localhost>\r\n"


async def session_worker(
    port: int, work: Work, per_connection: int, message: bytes, tls: ssl.SSLContext | None
) -> int:
    loop = asyncio.get_running_loop()
    sent = 0
    # The first message of each connection is claimed before connecting, so
    # no connection is opened just to QUIT.
    while work.take():
        _, session = await loop.create_connection(
            lambda: Session(work, per_connection, message, tls), "127.0.0.1", port
        )
        sent += await session.done
    return sent


async def throughput(args: argparse.Namespace, tls: ssl.SSLContext | None) -> dict[str, float]:
    message = make_message(args.size)
    work = Work(args.messages)
    start = time.perf_counter()
    counts = await asyncio.gather(
        *(
            session_worker(args.port, work, args.per_connection, message, tls)
            for _ in range(args.sessions)
        )
    )
    seconds = time.perf_counter() - start
    sent = sum(counts)
    return {"messages": sent, "bytes": sent * args.size, "seconds": seconds}


async def idle(args: argparse.Namespace, tls: ssl.SSLContext | None) -> dict[str, float]:
    # Bounded concurrency: a burst of thousands of SYNs at once would overflow
    # the accept queue and turn into slow retransmissions.
    gate = asyncio.Semaphore(args.concurrency)
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        async with gate:
            _, writer = await open_session(args.port, tls)
            writers.append(writer)

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(args.idle)))
    seconds = time.perf_counter() - start
    print(json.dumps({"ready": len(writers), "seconds": seconds}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for writer in writers:
        writer.transport.abort()
    return {"closed": len(writers)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--messages", type=int, default=1)
    parser.add_argument("--per-connection", type=int, default=1, help="0: unlimited")
    parser.add_argument("--size", type=int, default=1024, help="payload bytes")
    parser.add_argument("--starttls", metavar="CA.pem", help="STARTTLS, trusting this CA")
    parser.add_argument("--idle", type=int, default=0, help="hold this many connections")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--cpu", type=int, default=-1, help="CPU to pin to (-1: none)")
    args = parser.parse_args()

    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tls = ssl.create_default_context(cafile=args.starttls) if args.starttls else None
    runner = idle if args.idle else throughput
    try:
        result = asyncio.run(runner(args, tls))
    except (SMTPError, OSError, ssl.SSLError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
