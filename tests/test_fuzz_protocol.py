"""Protocol fuzzing: a hypothesis state machine drives a live server.

Each step sends random commands or raw bytes (NUL, bare CR/LF, overlong
lines, invalid UTF-8, huge parameters, pipelined bursts, DATA bodies, early
EOF, resets) over one loopback connection, waits until the server has
consumed all of it and said everything it had to say, and then checks:

* every byte the server sent is part of a well-formed SMTP reply;
* nothing was logged at ERROR or reported to the event loop's exception
  handler;
* a normal mail transaction on a fresh connection still succeeds, and its
  message reaches the handler exactly once.

Client and server share one event loop in the test thread, so "the server
is done with this step" is a precise condition (it consumed every byte sent,
waits for more, and the client received every byte it wrote), not a sleep.

The default run is small; ``AIOSMTPD_LONG=1`` (or ``AIOSMTPD_FUZZ_STEPS=N``)
runs state machines until at least N steps (default 1,000,000) have run.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import socket
import struct
import time
import warnings
from collections import Counter
from typing import Any, Callable, Optional

import pytest

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from aiosmtpd._inline import Run as Serving  # noqa: E402
from aiosmtpd.smtp import SMTP  # noqa: E402
from tests._hostile import (  # noqa: E402
    AUTH_PLAIN,
    LONG,
    BadReply,
    ErrorTrap,
    Sink,
    authenticator,
    message,
    report,
    scale,
    split_replies,
    trap_errors,
)

# The server must settle within this after each step; far more than needed.
SETTLE_TIMEOUT = 20.0


class FuzzedSMTP(SMTP):
    """Counts the bytes it receives, so the fuzzer knows when a step is over."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bytes_in = 0

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        super().data_received(data)

    def idle(self) -> bool:
        """Waiting for client bytes, with nothing left in its send buffer:
        at the prompt with no command running (commands run inline), or a
        command (inline or in a Task) waiting for more bytes."""
        waiter = self._waiter
        transport = self.transport
        return (
            (self._run is Serving.IDLE or (waiter is not None and not waiter.done()))
            and transport is not None
            and transport.get_write_buffer_size() == 0  # type: ignore[attr-defined]
        )

    def finished(self) -> bool:
        """Nothing serves the connection any more."""
        task = self._handler_coroutine
        return (
            (task is None or task.done())
            and self._run in (Serving.CLOSED, Serving.STARTING)
            and (self.transport is None or self.transport.is_closing())
        )


# Server configurations; each state machine run picks one.
PRESETS: list[dict[str, Any]] = [
    {},
    {"data_size_limit": 2000},
    {"enable_SMTPUTF8": True, "decode_data": True},
    {"strict_line_endings": True, "data_size_limit": 5000},
    {
        "auth_required": True,
        "auth_require_tls": False,
        "authenticator": authenticator,
        "command_call_limit": {"NOOP": 5, "*": 30},
    },
    {"auth_require_tls": False, "authenticator": authenticator, "command_call_limit": 40},
]


class Connection:
    """The fuzzer's client side of one connection, on the shared loop.

    The client socket is non-blocking and pumped by hand between loop
    iterations: once the server is idle with an empty send buffer, a recv()
    that would block proves that every reply byte has been received (on
    loopback a send() lands in the peer's receive queue at once).
    """

    def __init__(self, sock: socket.socket, proto: FuzzedSMTP, utf8: bool) -> None:
        self.sock = sock
        self.proto = proto
        self.utf8 = utf8
        self.sent = 0
        self.out = b""
        self.rx = b""
        self.eof = False
        self.reset = False
        self.write_closed = False
        self.replies: list[list[bytes]] = []

    def send(self, data: bytes) -> None:
        if not self.write_closed:
            self.out += data

    def pump(self) -> None:
        while self.out and not self.write_closed:
            try:
                n = self.sock.send(self.out[:1 << 20])
            except BlockingIOError:
                break
            except (BrokenPipeError, ConnectionResetError):
                # The server hung up (QUIT, 421, 502): it must be finished.
                self.write_closed = True
                self.out = b""
                break
            self.sent += n
            self.out = self.out[n:]
        while not self.eof:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            except ConnectionResetError:
                self.reset = self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            self.rx += chunk
            replies, self.rx = split_replies(self.rx, self.utf8)
            self.replies.extend(replies)

    def done(self) -> bool:
        proto = self.proto
        if proto.finished() or proto.transport is None:
            return self.eof
        return not self.out and proto.bytes_in == self.sent and proto.idle()

    async def settle(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT
        while True:
            self.pump()
            if self.done():
                break
            if loop.time() > deadline:
                raise AssertionError(
                    f"server did not settle: sent={self.sent} unsent={len(self.out)} "
                    f"in={self.proto.bytes_in} eof={self.eof} "
                    f"finished={self.proto.finished()} idle={self.proto.idle()}"
                )
            await asyncio.sleep(0)
        if self.eof and self.rx and not self.reset:
            # The server closed cleanly: it must not have cut a reply short.
            raise BadReply(f"connection closed inside a reply: {self.rx!r}")

    def close(self, rst: bool = False) -> None:
        if rst:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


# -- Strategies ----------------------------------------------------------------

VERBS = [
    "HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN",
    "HELP", "AUTH", "STARTTLS", "BDAT", "XCLIENT", "helo", "mail", "Ehlo", "LHLO", "",
]
TOKENS = [
    b"\r", b"\n", b"\r\n", b".", b"\x00", b"\xff", b"\xc3\xa9", b"\xed\xa0\x80", b" ",
    b"\t", b"\r\n.\r\n", b"\n.\n", b"\r.\r", b".\r\n", b"MAIL FROM:<a@b.example>",
    b"RCPT TO:<c@d.example>", b"DATA", b"EHLO x", b"HELO y", b"AUTH PLAIN", b"AUTH LOGIN",
    b"QUIT", b"RSET", b"NOOP", b"=", b"*", b"AHVzZXIAc2VjcmV0", b"dXNlcg==", b"c2VjcmV0",
    b"SIZE=", b"BODY=8BITMIME", b"SMTPUTF8", b"<", b">", b"@", b"<>", b":", b"STARTTLS",
    b"HELP", b"VRFY", b"EXPN", b"\x1b[2J", b"%s%n", b"\x7f", b"\xfe\xff",
    AUTH_PLAIN.encode(),
]
VALID = [
    b"EHLO client.example", b"HELO client.example", b"MAIL FROM:<a@b.example>",
    b"MAIL FROM:<> SIZE=100 BODY=8BITMIME", b"RCPT TO:<c@d.example>", b"DATA", b"RSET",
    b"NOOP", b"AUTH PLAIN", b"AUTH LOGIN", b"dXNlcg==", b"c2VjcmV0", b"AHVzZXIAc2VjcmV0",
    AUTH_PLAIN.encode(), b"MAIL FROM:<\xc3\xa9@\xc3\xbc.example> SMTPUTF8", b".", b"HELP MAIL",
    b"VRFY <a@b>",
]
ADDRESSES = [
    "<a@b.example>", "<>", "a@b", "<a@b", "<\"q u\"@x>", "<@r,@s:u@v>", "<é@ü.example>",
    "<a@[127.0.0.1]>", "<a@[IPv6:::1]>", "<" + "l" * 70 + "@x>", "<a@b> SIZE=100",
    "<a@b> SIZE=99999999999999999999", "<a@b> SIZE=١٢", "<a@b> BODY=8BITMIME SMTPUTF8",
    "<a@b> BODY=BINARYMIME", "<a@b> FOO=bar", "<a@b> SMTPUTF8=yes", "<a@b> SIZE",
]

# Printable ASCII, controls, Latin-1, BMP, astral, a lone surrogate.
ALPHABET = [chr(c) for c in range(0x20)] + list(" <>@:=.,;\"\\[]az09AZ+-_*/\x7f") + [
    "\x85", "é", "ü", "\u2028", "\u0661", "\ufeff", "\U0001f600", "\ud800",
]

fragments = st.lists(
    st.one_of(st.sampled_from(TOKENS), st.binary(max_size=12)), max_size=24
).map(b"".join)

text_args = st.one_of(
    st.sampled_from(["", " ", "FROM:", "TO:", "FROM:" + ADDRESSES[0], "TO:" + ADDRESSES[0]]),
    st.sampled_from(ADDRESSES).map(lambda a: "FROM:" + a),
    st.sampled_from(ADDRESSES).map(lambda a: "TO:" + a),
    st.sampled_from(["PLAIN", "LOGIN", "PLAIN =", "PLAIN *", "LOGIN dXNlcg==", "CRAM-MD5",
                     "PLAIN AHVzZXIAc2VjcmV0", "PLAIN AHVzZXIAd3Jvbmc=", "PLAIN !!!"]),
    st.text(st.sampled_from(ALPHABET), max_size=30),
)
command_lines = st.builds(
    lambda verb, arg, enc: (verb + (" " + arg if arg else "")).encode("utf-8", enc),
    st.sampled_from(VERBS),
    text_args,
    st.sampled_from(["surrogatepass", "replace"]),
)
overlong_sizes = st.sampled_from(
    [510, 511, 512, 513, 514, 537, 538, 539, 999, 1000, 1001, 1002, 1003, 4096, 70000, 300000]
)


# -- The state machine -------------------------------------------------------------


class Run:
    """What the state machines share within one pytest test."""

    loop: asyncio.AbstractEventLoop
    trap: ErrorTrap
    steps = 0
    transactions = 0
    connections = 0
    teardowns = 0
    known: Counter[str] = Counter()

    # Errors kept on purpose because 1.4.6 has them (docs/decisions.rst),
    # each pinned by a test elsewhere: counted and reported rather than
    # stopping a long run, so that they cannot hide new findings.  (Empty
    # now: the over-long AUTH response traceback was the one, fixed.)
    KNOWN: dict[str, str] = {}

    @classmethod
    def known_errors_removed(cls, errors: list[str]) -> list[str]:
        left = []
        for error in errors:
            for name, pattern in cls.KNOWN.items():
                if pattern in error:
                    cls.known[name] += 1
                    break
            else:
                left.append(error)
        return left
    vectors: set[int] = set()


def _server_factory(preset: dict[str, Any], sink: Sink,
                    made: list[FuzzedSMTP]) -> Callable[[], FuzzedSMTP]:
    def factory() -> FuzzedSMTP:
        with warnings.catch_warnings():
            # auth_required without TLS warns on every connection, by design.
            warnings.simplefilter("ignore")
            proto = FuzzedSMTP(sink, hostname="fuzz.example", **preset)
        made.append(proto)
        return proto

    return factory


class SMTPFuzzer(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = Run.loop
        self.sink = Sink()
        self.made: list[FuzzedSMTP] = []
        self.server: Optional[asyncio.Server] = None
        self.conn: Optional[Connection] = None
        self.preset: dict[str, Any] = {}
        self.serial = itertools.count()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    # -- plumbing --

    async def _connect(self) -> Connection:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        before = len(self.made)
        await self.loop.sock_connect(sock, ("127.0.0.1", port))
        while len(self.made) == before:
            await asyncio.sleep(0)
        Run.connections += 1
        return Connection(sock, self.made[-1], bool(self.preset.get("enable_SMTPUTF8")))

    def _conn(self) -> Connection:
        if self.conn is None or self.conn.eof or self.conn.write_closed:
            if self.conn is not None:
                self.conn.close()
            self.conn = self.run(self._connect())
            self.run(self.conn.settle())
        return self.conn

    def _step(self, data: bytes) -> None:
        conn = self._conn()
        Run.steps += 1
        if len(Run.vectors) < 2_000_000:
            Run.vectors.add(hash(data))
        conn.send(data)
        self.run(conn.settle())

    # -- rules --

    @initialize(preset=st.sampled_from(range(len(PRESETS))))
    def start_server(self, preset: int) -> None:
        self.preset = PRESETS[preset]
        factory = _server_factory(self.preset, self.sink, self.made)
        self.server = self.run(self.loop.create_server(factory, "127.0.0.1", 0))

    @rule(line=command_lines, ending=st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r", b""]))
    def command(self, line: bytes, ending: bytes) -> None:
        self._step(line + ending)

    @rule(line=st.sampled_from(VALID))
    def valid_command(self, line: bytes) -> None:
        # Valid commands take the session deep (inside AUTH, MAIL, DATA)
        # where the random bytes of the other rules then land.
        self._step(line + b"\r\n")

    @rule(data=fragments)
    def raw_bytes(self, data: bytes) -> None:
        self._step(data)

    @rule(verb=st.sampled_from(["NOOP ", "MAIL FROM:<", "RCPT TO:<", "EHLO ", "", "AUTH PLAIN "]),
          size=overlong_sizes, fill=st.sampled_from([b"a", b"\x00", b"\xff", b".", b"\r"]),
          ending=st.sampled_from([b"\r\n", b"\n", b""]))
    def overlong_line(self, verb: str, size: int, fill: bytes, ending: bytes) -> None:
        self._step(verb.encode() + fill * size + ending)

    @rule(lines=st.lists(command_lines, min_size=2, max_size=40))
    def pipelined_burst(self, lines: list[bytes]) -> None:
        self._step(b"".join(line + b"\r\n" for line in lines))

    @rule(body=fragments, end=st.sampled_from([b"\r\n.\r\n", b"\r\n.\r\n", b"", b".\r\n"]))
    def data_phase(self, body: bytes, end: bytes) -> None:
        prefix = b""
        if self.preset.get("auth_required"):
            prefix = AUTH_PLAIN.encode() + b"\r\n"
        self._step(
            prefix + b"EHLO f\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + body + end
        )

    @rule()
    def early_eof(self) -> None:
        conn = self._conn()
        Run.steps += 1
        conn.sock.shutdown(socket.SHUT_WR)
        conn.write_closed = True
        self.run(conn.settle())
        conn.close()
        self.conn = None

    @rule(partial=fragments)
    def reset_connection(self, partial: bytes) -> None:
        conn = self._conn()
        Run.steps += 1
        conn.send(partial)
        conn.pump()
        proto = conn.proto
        conn.close(rst=True)
        self.conn = None

        async def gone() -> None:
            deadline = self.loop.time() + SETTLE_TIMEOUT
            while not (proto.finished() and proto.transport is None):
                assert self.loop.time() < deadline, "server kept a reset connection"
                await asyncio.sleep(0)

        self.run(gone())

    # -- checks after every step --

    @invariant()
    def no_errors_logged(self) -> None:
        errors = Run.known_errors_removed(Run.trap.take())
        assert not errors, errors

    @invariant()
    def normal_transaction_succeeds(self) -> None:
        if self.server is None:
            return
        Run.transactions += 1
        msg_id = f"fuzz-{id(self)}-{next(self.serial)}"
        self.run(self._transaction(msg_id))
        assert self.sink.ids[msg_id] == 1, (msg_id, self.sink.ids[msg_id])

    async def _transaction(self, msg_id: str) -> None:
        # Pipelined (as RFC 2920 clients do) to keep the check cheap: the
        # server still answers the commands one by one, in order.
        conn = await self._connect()
        try:
            script = b"EHLO client.example\r\n"
            expected = [b"220", b"250"]
            if self.preset.get("auth_required"):
                script += AUTH_PLAIN.encode() + b"\r\n"
                expected.append(b"235")
            script += b"MAIL FROM:<a@client.example>\r\nRCPT TO:<b@client.example>\r\nDATA\r\n"
            expected += [b"250", b"250", b"354", b"250", b"221"]
            conn.send(script)
            await conn.settle()
            conn.send(message(msg_id) + b".\r\nQUIT\r\n")
            await conn.settle()
            codes = [r[-1][:3] for r in conn.replies]
            assert codes == expected, conn.replies
        finally:
            conn.close()

    def teardown(self) -> None:
        try:
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            if self.server is not None:
                self.server.close()
                for proto in self.made:
                    if proto.transport is not None:
                        proto.transport.close()
                self.run(self.server.wait_closed())

                async def drained() -> None:
                    deadline = self.loop.time() + SETTLE_TIMEOUT
                    while not all(p.finished() for p in self.made):
                        assert self.loop.time() < deadline, "handler tasks left running"
                        await asyncio.sleep(0)

                self.run(drained())
        finally:
            Run.teardowns += 1
            if Run.teardowns % 50 == 0:
                gc.collect()  # surfaces "Task exception was never retrieved"
            # Let closed transports and cancelled tasks finish their callbacks.
            self.run(asyncio.sleep(0))
            errors = Run.known_errors_removed(Run.trap.take())
            assert not errors, errors


@pytest.fixture
def fuzz_loop() -> Any:
    loop = asyncio.new_event_loop()
    with trap_errors() as trap:
        loop.set_exception_handler(trap.loop_handler)
        Run.loop = loop
        Run.trap = trap
        Run.steps = Run.transactions = Run.connections = 0
        Run.vectors = set()
        Run.known = Counter()
        try:
            yield loop
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


FUZZ_STEPS = scale(0, 1_000_000, "AIOSMTPD_FUZZ_STEPS")
# A time budget for the long mode: stop (and report) after this many seconds.
FUZZ_SECONDS = float(os.environ.get("AIOSMTPD_FUZZ_SECONDS", "inf"))

# The default suite: ~1,000 steps, a few seconds.
DEFAULT_EXAMPLES = 30
STEPS_PER_EXAMPLE = 40


@pytest.mark.timeout(0 if LONG or FUZZ_STEPS else 60)
def test_fuzz_protocol(fuzz_loop: Any) -> None:
    target = FUZZ_STEPS
    config = settings(
        max_examples=DEFAULT_EXAMPLES if not target else 200,
        stateful_step_count=STEPS_PER_EXAMPLE,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=not target,  # the default suite is reproducible
    )
    started = time.monotonic()
    runs = 0
    findings: list[str] = []
    while True:
        try:
            run_state_machine_as_test(  # type: ignore[no-untyped-call]
                SMTPFuzzer, settings=config
            )
        except Exception as error:
            if not target:
                raise
            # The long mode keeps going so that one run reports them all.
            findings.append(f"{type(error).__name__}: {error}")
            print(f"\nFINDING {findings[-1]}", flush=True)
        runs += 1
        if target:
            print(f"progress: {Run.steps} steps, {len(findings)} findings, "
                  f"{time.monotonic() - started:.0f} s", flush=True)
        if Run.steps >= target or time.monotonic() - started > FUZZ_SECONDS:
            break
    gc.collect()
    fuzz_loop.run_until_complete(asyncio.sleep(0))
    errors = Run.known_errors_removed(Run.trap.take())
    report(
        "fuzz_protocol",
        steps=Run.steps,
        distinct_inputs=len(Run.vectors),
        transactions_checked=Run.transactions,
        connections=Run.connections,
        hypothesis_runs=runs,
        seconds=round(time.monotonic() - started, 1),
        findings=len(findings) + len(errors),
        known_spec_findings=dict(Run.known),
    )
    assert not findings, findings
    assert not errors, errors
    assert Run.steps > 0
