"""A Python SMTP load generator: asyncio streams, raw protocol lines, no smtplib.

Throughput mode (lock-step like Postfix's smtp-source: no pipelining)::

    python loadgen.py --port P --sessions 20 --messages 2000 --per-connection 1 \
        --size 1024 [--starttls CA.pem]

``--per-connection 0`` keeps each session on one connection for all its
messages.  Prints one JSON line: ``{"messages": n, "bytes": n, "seconds": t}``.

Stream mode (``large-stream`` and the big senders of ``fairness``)::

    python loadgen.py --port P --stream --sessions 4 --size 209715200 [--go-on-stdin]

each of the sessions opens a connection and sends ONE message of that many
payload bytes with DATA, written as it goes from a prebuilt block of 1 MiB
(no message of that size is ever held), waiting for the socket to drain
between blocks.  Prints ``{"messages": n, "bytes": n, "seconds": t,
"delivered": [...]}``: ``delivered`` is the byte count each final reply
gave (``250 OK <n> bytes`` from the benchmark's streaming and length
handlers), or null.  With ``--go-on-stdin`` it first gets every session to
the ``354`` after DATA, prints ``{"ready": n}``, and starts the bodies (and
the clock) on a line on stdin.

Small-transaction mode (the ``fairness`` scenario's fifth client)::

    python loadgen.py --port P --small-loop --size 1024 --max-seconds 600

opens one connection (blocking socket), sends EHLO and 3 unmeasured
transactions, times 20 more on the otherwise idle server (``alone_p50_ms``),
prints ``{"ready": 1}``, waits for a line on stdin, then loops
MAIL/RCPT/DATA transactions of that size (no RSET) until the next line (or
EOF) on stdin or ``--max-seconds``, and prints ``{"transactions": n,
"seconds": t, "alone_p50_ms": x, "latency_ms": {"min", "p50", "p90", "p99",
"max"}}``: each transaction timed from sending MAIL to the 250 after the
message.

Idle mode::

    python loadgen.py --port P --idle 2000

opens that many connections, sends EHLO on each, prints ``{"ready": n,
"seconds": t}``, then holds them until a line (or EOF) arrives on stdin.

Flood mode (the ``flood`` scenario: one process floods, another is the
bystander)::

    python loadgen.py --port P --flood 170000 --max-seconds 60

opens one connection, sends EHLO, then keeps about that many pipelined
``NOOP`` lines unanswered (170,000 lines of 6 bytes: about 1 MB), writing
more as the ``250`` replies come back (read in batches: ``SO_RCVLOWAT``).
Once the first replies arrive it prints ``{"ready": in_flight}``; on a line
(or EOF) on stdin, or after
``--max-seconds``, it prints ``{"lines": answered, "seconds": t, ...}``
(counted from "ready") and drops the connection.

    python loadgen.py --port P --bystander 200 --max-seconds 10

opens its own connection, sends EHLO and a few unmeasured NOOPs, prints
``{"ready": 1}``, waits for a line on stdin, then does up to 200 sequential
``NOOP`` round trips (send, wait for the reply), starting none after
``--max-seconds``, and prints ``{"round_trips": n, "seconds": t, "rtt_ms":
{"min", "median", "p90", "p99", "max"}}`` (nearest-rank quantiles).

Standalone (stdlib only) so it runs under any interpreter; the orchestrator
pins it to its own CPU with ``--cpu``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import select
import socket
import ssl
import statistics
import sys
import time
from collections.abc import Callable

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


STREAM_BLOCK = 1024 * 1024


def stream_pieces(size: int) -> tuple[bytes, bytes, int, bytes]:
    """*size* payload bytes as (head, block, repeats, tail): the headers, a
    block of about STREAM_BLOCK bytes of 80-byte lines written *repeats*
    times, then the rest of the lines and the final ".\r\n".  The lines are
    ``make_message``'s (their numbers restart in each block)."""
    whole = make_message(STREAM_BLOCK)
    head_end = whole.index(b"\r\n\r\n") + 4
    head, lines = whole[:head_end], whole[head_end:-3]
    block = lines[: len(lines) // 80 * 80]  # whole 80-byte lines only
    repeats = size // len(block)
    rest = size - repeats * len(block)
    tail = make_message(rest)[head_end:] if rest else b".\r\n"
    return head, block, repeats, tail


def bdat_chunks(content: bytes, size: int) -> bytes:
    """*content* as pipelined ``BDAT`` commands with chunks of *size* bytes."""
    pieces = [content[i : i + size] for i in range(0, len(content), size)] or [b""]
    out = [b"BDAT %d\r\n" % len(p) + p for p in pieces[:-1]]
    out.append(b"BDAT %d LAST\r\n" % len(pieces[-1]) + pieces[-1])
    return b"".join(out)


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
        # BDAT: the chunks go out at once, and each gets a 250.
        self.chunks = message.count(b"BDAT ") if message.startswith(b"BDAT ") else 0
        self.replies_due = 0
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
        "chunks": b"250",
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
            if self.chunks:
                self.replies_due = self.chunks
                self._send(self.message, "chunks")
            else:
                self._send(b"DATA\r\n", "data")
        elif state == "chunks":
            self.replies_due -= 1
            if not self.replies_due:
                self.state = "body"
                self._advance(line)
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
    if args.bdat:
        message = bdat_chunks(message[:-3], args.bdat)  # without DATA's ".\r\n"
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


async def stream_session(
    port: int,
    pieces: tuple[bytes, bytes, int, bytes],
    ready: asyncio.Queue[None],
    go: asyncio.Event,
) -> int | None:
    """One connection, one message of ``pieces`` written as it goes; the
    byte count the final reply gives (``250 OK <n> bytes``), if any."""
    head, block, repeats, tail = pieces
    reader, writer = await open_session(port, None)
    try:
        await command(reader, writer, MAIL, b"250")
        await command(reader, writer, RCPT, b"250")
        await command(reader, writer, b"DATA\r\n", b"354")
        ready.put_nowait(None)
        await go.wait()
        writer.write(head)
        for _ in range(repeats):
            writer.write(block)
            await writer.drain()
        writer.write(tail)
        line = await final_reply(reader)
        if not line.startswith(b"250"):
            raise SMTPError(f"expected 250 after the message, got {line!r}")
        await command(reader, writer, b"QUIT\r\n", b"221")
    finally:
        writer.close()
    words = line.split()
    if len(words) >= 4 and words[-1] == b"bytes" and words[-2].isdigit():
        return int(words[-2])
    return None


async def final_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise SMTPError("connection closed, expected the reply to the message")
        if line[3:4] != b"-":
            return line.rstrip()


async def stream(args: argparse.Namespace, tls: ssl.SSLContext | None) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    pieces = stream_pieces(args.size)
    ready: asyncio.Queue[None] = asyncio.Queue()
    go = asyncio.Event()
    start = time.perf_counter()
    tasks = [
        asyncio.ensure_future(stream_session(args.port, pieces, ready, go))
        for _ in range(args.sessions)
    ]
    try:
        for _ in range(args.sessions):
            # A session that fails before it is ready ends the wait too.
            waiter = asyncio.ensure_future(ready.get())
            await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                waiter.cancel()
                for task in tasks:
                    if task.done():
                        task.result()  # raises why it ended early
        if args.go_on_stdin:
            print(json.dumps({"ready": args.sessions}), flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)
            start = time.perf_counter()
        go.set()
        delivered = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    seconds = time.perf_counter() - start
    return {
        "messages": len(delivered),
        "bytes": len(delivered) * args.size,
        "seconds": seconds,
        "delivered": delivered,
        "message_bytes": len(pieces[0]) + pieces[2] * len(pieces[1]) + len(pieces[3]) - 3,
        "cpu_s": _cpu_seconds(),
    }


IDLE_TRANSACTIONS = 20


def _lockstep_connection(args: argparse.Namespace) -> socket.socket:
    """A blocking connection for one command at a time.  Every wait is
    bounded: one reply may take long under load, not forever."""
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=args.max_seconds + 60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _replies(sock: socket.socket, who: str) -> Callable[[bytes], None]:
    """reply(expect): read one (multi-line) reply; it must start with expect."""
    reader = sock.makefile("rb")

    def reply(expect: bytes) -> None:
        while True:
            line = reader.readline(1024)
            if not line or line[3:4] != b"-":
                break
        if not line.startswith(expect):
            raise SMTPError(f"{who}: expected {expect!r}, got {line!r}")

    return reply


def small_loop(args: argparse.Namespace) -> dict[str, object]:
    """Lock-step small transactions on one connection until told to stop."""
    message = make_message(args.size)
    with _lockstep_connection(args) as sock:
        reply = _replies(sock, "small client")

        def transaction() -> None:
            sock.sendall(MAIL)
            reply(b"250")
            sock.sendall(RCPT)
            reply(b"250")
            sock.sendall(b"DATA\r\n")
            reply(b"354")
            sock.sendall(message)
            reply(b"250")

        reply(b"220")
        sock.sendall(b"EHLO " + CLIENT_NAME + b"\r\n")
        reply(b"250")
        for _ in range(3):  # warm-up, unmeasured
            transaction()
        # The same transactions on a server with nothing else to do: what
        # the latency is made of besides the big messages.
        alone = []
        for _ in range(IDLE_TRANSACTIONS):
            begun = time.perf_counter()
            transaction()
            alone.append((time.perf_counter() - begun) * 1000)
        print(json.dumps({"ready": 1}), flush=True)
        os.read(0, 4096)  # the orchestrator says go (or closes stdin)
        latencies: list[float] = []
        started = time.perf_counter()
        deadline = started + args.max_seconds
        while True:
            stop, _, _ = select.select([0], [], [], 0)
            begun = time.perf_counter()
            if stop or begun >= deadline:
                break
            transaction()
            latencies.append((time.perf_counter() - begun) * 1000)
        seconds = time.perf_counter() - started
        stopped_by = "stdin" if stop else "max-seconds"
        sock.sendall(b"QUIT\r\n")
        reply(b"221")
    if not latencies:
        raise SMTPError("small client: no transaction done")
    latencies.sort()

    def rank(q: float) -> float:
        return latencies[max(math.ceil(q * len(latencies)) - 1, 0)]

    return {
        "transactions": len(latencies),
        "seconds": seconds,
        "stopped_by": stopped_by,
        "cpu_s": _cpu_seconds(),
        "alone_p50_ms": statistics.median(alone),
        "latency_ms": {
            "min": latencies[0],
            "p50": statistics.median(latencies),
            "p90": rank(0.90),
            "p99": rank(0.99),
            "max": latencies[-1],
        },
    }


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


NOOP = b"NOOP\r\n"


def _cpu_seconds() -> float:
    """This process's CPU time so far (user + system), start-up included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


NOOP_REPLY = b"250 "
RCVLOWAT = 32 * 1024


class Flood(asyncio.Protocol):
    """Keeps *in_flight* pipelined NOOP lines unanswered on one connection.

    Writes in chunks of *chunk* lines and tops up from ``data_received`` as
    replies arrive, so the count of lines sent but not yet answered stays
    between ``in_flight - chunk`` and ``in_flight``.
    """

    def __init__(self, in_flight: int, chunk: int = 1024) -> None:
        self.in_flight = max(in_flight, chunk)
        self.chunk_lines = chunk
        self.chunk = NOOP * chunk
        self.transport: asyncio.Transport | None = None
        self.state = "greeting"
        self.buffer = b""
        self.sent = 0
        self.answered = 0
        self.batches = 0
        self.backlog_sum = 0
        """Sum over reply batches of the lines still unanswered just before
        each top-up (the low point): their mean is what stays in flight."""
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == "stopped":
            for future in (self.ready, self.lost):
                if not future.done():
                    future.cancel()
            return
        error = SMTPError(f"flood connection lost in {self.state}: {exc}")
        for future in (self.ready, self.lost):
            if not future.done():
                future.set_exception(error)

    def _fail(self, text: str) -> None:
        assert self.transport is not None
        self.state = "failed"
        self.transport.abort()
        error = SMTPError(text)
        for future in (self.ready, self.lost):
            if not future.done():
                future.set_exception(error)

    def data_received(self, data: bytes) -> None:
        if self.state == "flood":
            self._replies(data)
            return
        if self.state not in ("greeting", "ehlo"):
            return  # stopping: replies no longer count
        self.buffer += data
        while self.state in ("greeting", "ehlo"):
            eol = self.buffer.find(b"\r\n")
            if eol < 0:
                if len(self.buffer) > 4096:
                    self._fail(f"no reply line in {self.buffer[:80]!r}")
                return
            line, self.buffer = self.buffer[:eol], self.buffer[eol + 2 :]
            if line[3:4] == b"-":
                continue
            expect = b"220" if self.state == "greeting" else b"250"
            if not line.startswith(expect):
                self._fail(f"in {self.state}: expected {expect!r}, got {line!r}")
                return
            assert self.transport is not None
            if self.state == "greeting":
                self.state = "ehlo"
                self.transport.write(b"EHLO " + CLIENT_NAME + b"\r\n")
            else:
                self.state = "flood"
                if self.buffer:
                    self._fail(f"unexpected bytes after EHLO: {self.buffer[:80]!r}")
                    return
                self._batch_reads()
                self._top_up()

    def _batch_reads(self) -> None:
        """Wake for replies only once RCVLOWAT bytes are there.

        The servers send each 8-byte reply as they go.  Woken for each one,
        this client needed as much CPU as the server (and every wake-up cost
        the server's send() on loopback too), so the flood measured the
        client; batched, it needs a few percent.  No stall: with ~1 MB of
        NOOPs in flight far more reply bytes than this are always coming.
        """
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is not None and hasattr(socket, "SO_RCVLOWAT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, RCVLOWAT)

    def _replies(self, data: bytes) -> None:
        data = self.buffer + data if self.buffer else data
        end = data.rfind(b"\n") + 1
        self.buffer = data[end:]
        if len(self.buffer) > 512:
            self._fail(f"reply line too long: {self.buffer[:80]!r}")
            return
        lines = data.count(b"\n", 0, end)
        if not lines:
            return
        good = data.count(NOOP_REPLY, 0, end)
        if good != lines:
            self._fail(f"{lines - good} of {lines} NOOP replies not 250: {data[:80]!r}")
            return
        self.answered += lines
        if self.answered > self.sent:
            self._fail(f"{self.answered} replies to {self.sent} NOOPs")
            return
        self.batches += 1
        self.backlog_sum += self.sent - self.answered
        if not self.ready.done():
            self.ready.set_result(None)
        self._top_up()

    def _top_up(self) -> None:
        assert self.transport is not None
        # At most in_flight / chunk writes: bounded.
        while self.sent - self.answered + self.chunk_lines <= self.in_flight:
            self.transport.write(self.chunk)
            self.sent += self.chunk_lines

    def stop(self) -> None:
        self.state = "stopped"
        if self.transport is not None:
            # No QUIT: it would queue behind ~1 MB of NOOPs.  Drop the connection.
            self.transport.abort()


async def flood(args: argparse.Namespace, tls: ssl.SSLContext | None) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: Flood(args.flood), "127.0.0.1", args.port),
        args.max_seconds,
    )
    try:
        await asyncio.wait_for(asyncio.shield(proto.ready), args.max_seconds)
        started = time.perf_counter()
        answered, batches, backlog = proto.answered, proto.batches, proto.backlog_sum
        print(json.dumps({"ready": proto.sent - proto.answered}), flush=True)
        # Stop on a line or EOF on stdin, or after --max-seconds at most.
        told: asyncio.Future[None] = loop.create_future()

        def stdin_ready() -> None:
            os.read(0, 4096)
            if not told.done():
                told.set_result(None)

        loop.add_reader(0, stdin_ready)
        try:
            await asyncio.wait(
                [told, proto.lost], timeout=args.max_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            loop.remove_reader(0)
        if proto.lost.done():
            proto.lost.result()  # raises why the flood stopped
        seconds = time.perf_counter() - started
        batches = proto.batches - batches
        return {
            "lines": proto.answered - answered,
            "seconds": seconds,
            "sent": proto.sent,
            "in_flight_mean": (proto.backlog_sum - backlog) / batches if batches else 0.0,
            "stopped_by": "stdin" if told.done() else "max-seconds",
            "cpu_s": _cpu_seconds(),
        }
    finally:
        proto.stop()
        if proto.lost.done() and not proto.lost.cancelled():
            proto.lost.exception()  # retrieved (ready may have raised it already)


def bystander(args: argparse.Namespace) -> dict[str, object]:
    """Sequential NOOP round trips on a connection of its own (blocking socket)."""
    with _lockstep_connection(args) as sock:
        reply = _replies(sock, "bystander")
        reply(b"220")
        sock.sendall(b"EHLO " + CLIENT_NAME + b"\r\n")
        reply(b"250")
        for _ in range(5):  # warm-up, unmeasured
            sock.sendall(NOOP)
            reply(b"250")
        print(json.dumps({"ready": 1}), flush=True)
        sys.stdin.readline()  # the orchestrator says go (or closes stdin)
        rtts: list[float] = []
        started = time.perf_counter()
        deadline = started + args.max_seconds
        for _ in range(args.bystander):
            sent = time.perf_counter()
            if sent >= deadline:
                break
            sock.sendall(NOOP)
            reply(b"250")
            rtts.append((time.perf_counter() - sent) * 1000)
        seconds = time.perf_counter() - started
        # No QUIT: under a flood its reply could take seconds.  Just close.
    if not rtts:
        raise SMTPError("bystander: no round trip done")
    rtts.sort()

    def rank(q: float) -> float:
        """Nearest-rank quantile: the smallest RTT with at least q of them <= it."""
        return rtts[max(math.ceil(q * len(rtts)) - 1, 0)]

    return {
        "round_trips": len(rtts),
        "seconds": seconds,
        "cpu_s": _cpu_seconds(),
        "rtt_ms": {
            "min": rtts[0],
            "median": statistics.median(rtts),
            "p90": rank(0.90),
            "p99": rank(0.99),
            "max": rtts[-1],
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--messages", type=int, default=1)
    parser.add_argument("--per-connection", type=int, default=1, help="0: unlimited")
    parser.add_argument("--size", type=int, default=1024, help="payload bytes")
    parser.add_argument("--bdat", type=int, default=0, help="BDAT chunks of this size (0: DATA)")
    parser.add_argument("--starttls", metavar="CA.pem", help="STARTTLS, trusting this CA")
    parser.add_argument("--idle", type=int, default=0, help="hold this many connections")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--flood", type=int, default=0, help="keep this many NOOP lines unanswered")
    parser.add_argument(
        "--bystander", type=int, default=0, help="this many sequential NOOP round trips"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="time bound of --flood/--bystander"
    )
    parser.add_argument(
        "--stream", action="store_true", help="one message per session, written as it goes"
    )
    parser.add_argument(
        "--go-on-stdin", action="store_true", help="--stream: start the bodies on a stdin line"
    )
    parser.add_argument(
        "--small-loop", action="store_true", help="small transactions until a stdin line"
    )
    parser.add_argument("--cpu", type=int, default=-1, help="CPU to pin to (-1: none)")
    args = parser.parse_args()

    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    if (args.small_loop or args.go_on_stdin) and hasattr(os, "sched_setscheduler"):
        # fairness: at normal priority, as its server (see server.py).
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tls = ssl.create_default_context(cafile=args.starttls) if args.starttls else None
    runner = idle if args.idle else flood if args.flood else stream if args.stream else throughput
    try:
        if args.bystander:
            result: dict[str, object] = bystander(args)
        elif args.small_loop:
            result = small_loop(args)
        else:
            result = dict(asyncio.run(runner(args, tls)))
    except (SMTPError, OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
