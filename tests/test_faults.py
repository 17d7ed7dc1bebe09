"""Faults: clients that vanish at every stage, handlers that raise or are
slow, a controller stopped with transactions in flight.

What must hold: every message answered ``250`` reached the handler exactly
once (none twice, whatever happened), and nothing leaks - file descriptors,
threads, asyncio tasks, protocol instances - after 1,000 faulty sessions
(``AIOSMTPD_LONG=1``: 100,000) and 100 controller start/stop cycles
(``AIOSMTPD_LONG=1``: 1,000).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import smtplib
import socket
import ssl
import struct
import threading
import weakref
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from tests._hostile import (
    AUTH_PLAIN,
    LONG,
    Sink,
    authenticator,
    message,
    open_fds,
    report,
    scale,
    trap_errors,
)
from tests._server import IO_TIMEOUT, LoopThread, wait_for

pytestmark = pytest.mark.timeout(0 if LONG else 60)

trustme = pytest.importorskip("trustme")


class FaultyHandler(Sink):
    """Delivers, except for two magic recipients: one raises, one is slow."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if "raise@example.com" in envelope.rcpt_tos:
            raise RuntimeError("handler failure (injected)")
        if "slow@example.com" in envelope.rcpt_tos:
            # A handler busy elsewhere (a slow queue, a remote store); the
            # client may be gone by the time it is done.
            await asyncio.sleep(0.02)
        return await super().handle_DATA(server, session, envelope)

    async def handle_exception(self, error: Exception) -> str:
        return "451 4.3.0 Temporary failure"


class Certs:
    def __init__(self) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert("localhost")
        self.server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.server)
        self.client = ssl.create_default_context()
        ca.configure_trust(self.client)


@pytest.fixture(scope="module")
def certs() -> Certs:
    return Certs()


class Harness:
    """A server on a loop thread whose protocols are tracked weakly, so a
    protocol that is never freed shows up as a leak."""

    def __init__(self, lt: LoopThread, handler: Any, **kwargs: Any) -> None:
        self.lt = lt
        self.live: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self.made = 0

        def factory() -> SMTP:
            proto = SMTP(handler, hostname="faults.example", **kwargs)
            self.live.add(proto)
            self.made += 1
            return proto

        self.server = lt.run(lt.loop.create_server(factory, "127.0.0.1", 0))
        self.port: int = self.server.sockets[0].getsockname()[1]

    def busy(self) -> int:
        """Connections whose session task has not ended (call on the loop)."""
        return sum(
            1 for p in list(self.live)
            if p._handler_coroutine is not None and not p._handler_coroutine.done()
        )

    def tasks(self) -> int:
        return self.lt.call(lambda: len(asyncio.all_tasks(self.lt.loop)))

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        self.lt.run(stop())


@pytest.fixture
def lt() -> Iterator[LoopThread]:
    t = LoopThread()
    yield t
    t.close()


# -- The fault sessions ----------------------------------------------------------


def _connect(port: int) -> tuple[socket.socket, Any]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220 ")
    return sock, f


def _cmd(sock: socket.socket, f: Any, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    while True:
        reply: bytes = f.readline()
        if reply[3:4] != b"-":
            return reply


def _close(sock: socket.socket, f: Any) -> None:
    # The file from makefile() holds the descriptor open: sock.close() alone
    # leaves the connection up until f is closed (or collected), and since
    # Python 3.12.1 Server.wait_closed() waits for such a connection.
    f.close()
    sock.close()


def _vanish(sock: socket.socket, f: Any, rst: bool) -> None:
    if rst:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _close(sock, f)


class Ledger:
    """The client-side record: which message ids were answered 250."""

    def __init__(self) -> None:
        self.accepted: list[str] = []
        self.faults = 0
        self.serial = 0

    def next_id(self) -> str:
        self.serial += 1
        return f"fault-{self.serial}"


def _envelope(sock: socket.socket, f: Any, rcpt: str = "b@example.com") -> None:
    assert _cmd(sock, f, b"EHLO client.example").startswith(b"250 ")
    assert _cmd(sock, f, b"MAIL FROM:<a@example.com>") == b"250 OK\r\n"
    assert _cmd(sock, f, f"RCPT TO:<{rcpt}>".encode()) == b"250 OK\r\n"


def fault_mid_command(port: int, ledger: Ledger, rng: random.Random) -> None:
    sock, f = _connect(port)
    sock.sendall(rng.choice([b"MAIL FROM:<a@exa", b"EHLO", b"N", b"\x00" * 3000]))
    _vanish(sock, f, rng.random() < 0.5)


def fault_mid_data(port: int, ledger: Ledger, rng: random.Random) -> None:
    sock, f = _connect(port)
    _envelope(sock, f)
    assert _cmd(sock, f, b"DATA").startswith(b"354")
    sock.sendall(message(ledger.next_id())[: rng.randrange(1, 40)])
    _vanish(sock, f, rng.random() < 0.5)


def fault_after_dot(port: int, ledger: Ledger, rng: random.Random) -> None:
    """The whole message, then gone before the reply: delivered or not,
    never twice (and no 250 was seen, so the sender would retry)."""
    sock, f = _connect(port)
    _envelope(sock, f, rng.choice(["b@example.com", "slow@example.com"]))
    assert _cmd(sock, f, b"DATA").startswith(b"354")
    sock.sendall(message(ledger.next_id()) + b".\r\n")
    _vanish(sock, f, rng.random() < 0.5)


def fault_mid_auth(port: int, ledger: Ledger, rng: random.Random) -> None:
    sock, f = _connect(port)
    _cmd(sock, f, b"EHLO client.example")
    assert _cmd(sock, f, b"AUTH LOGIN").startswith(b"334 ")
    if rng.random() < 0.5:
        assert _cmd(sock, f, b"dXNlcg==").startswith(b"334 ")
    _vanish(sock, f, rng.random() < 0.5)


def fault_mid_tls(port: int, ledger: Ledger, rng: random.Random, certs: Certs) -> None:
    sock, f = _connect(port)
    assert _cmd(sock, f, b"STARTTLS") == b"220 Ready to start TLS\r\n"
    if rng.random() < 0.5:
        # Part of a real ClientHello.
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = certs.client.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        sock.sendall(hello[: rng.randrange(1, len(hello))])
    _vanish(sock, f, rng.random() < 0.5)


def fault_handler_raises(port: int, ledger: Ledger, rng: random.Random) -> None:
    sock, f = _connect(port)
    _envelope(sock, f, "raise@example.com")
    assert _cmd(sock, f, b"DATA").startswith(b"354")
    reply = _cmd(sock, f, message(ledger.next_id()) + b".")
    assert reply == b"451 4.3.0 Temporary failure\r\n"
    # The session survives a failing handler.
    assert _cmd(sock, f, b"NOOP") == b"250 OK\r\n"
    _vanish(sock, f, rng.random() < 0.5)


def complete(port: int, ledger: Ledger, rng: random.Random) -> None:
    """A good transaction on the same server, then gone without QUIT."""
    sock, f = _connect(port)
    _envelope(sock, f, rng.choice(["b@example.com", "slow@example.com"]))
    assert _cmd(sock, f, b"DATA").startswith(b"354")
    msg_id = ledger.next_id()
    assert _cmd(sock, f, message(msg_id) + b".") == b"250 OK\r\n"
    ledger.accepted.append(msg_id)
    _vanish(sock, f, rng.random() < 0.5)


def test_vanishing_clients_lose_nothing_and_leak_nothing(lt: LoopThread, certs: Certs) -> None:
    with trap_errors() as trap:
        lt.call(lambda: lt.loop.set_exception_handler(trap.loop_handler))
        _vanishing_clients(lt, certs)
    # The handler answers every exception (handle_exception), so nothing
    # may reach the log at ERROR or the loop's exception handler.
    assert trap.records == []


def _vanishing_clients(lt: LoopThread, certs: Certs) -> None:
    sessions = scale(1000, 100_000, "AIOSMTPD_FAULT_SESSIONS")
    handler = FaultyHandler()
    harness = Harness(lt, handler, tls_context=certs.server, auth_require_tls=False,
                      authenticator=authenticator)
    rng = random.Random(2024)
    ledger = Ledger()
    faults: list[Callable[..., None]] = [
        fault_mid_command, fault_mid_data, fault_after_dot, fault_mid_auth,
        fault_handler_raises, complete,
    ]
    # A warm-up session of each kind, so lazily created state is not a leak.
    for fault in faults:
        fault(harness.port, ledger, rng)
    fault_mid_tls(harness.port, ledger, rng, certs)
    assert wait_for(lambda: harness.busy() == 0, lt)
    gc.collect()
    fds, threads, tasks = open_fds(), threading.active_count(), harness.tasks()
    ledger.accepted.clear()
    for i in range(sessions):
        if i % 10 == 9:
            fault_mid_tls(harness.port, ledger, rng, certs)
        else:
            rng.choice(faults)(harness.port, ledger, rng)
        ledger.faults += 1
    assert wait_for(lambda: harness.busy() == 0, lt)
    gc.collect()
    lt.call(lambda: None)  # the loop has run its pending callbacks
    assert wait_for(lambda: not harness.live, lt, timeout=IO_TIMEOUT)
    leaked = {
        "fds": open_fds() - fds,
        "threads": threading.active_count() - threads,
        "tasks": harness.tasks() - tasks,
        "protocols": len(harness.live),
    }
    harness.close()
    missing = [m for m in ledger.accepted if handler.ids[m] != 1]
    report("faults_vanishing_clients", sessions=sessions, faults_injected=ledger.faults,
           accepted=len(ledger.accepted), messages_lost=len(missing),
           duplicates=len(handler.duplicates()), leaks=leaked)
    assert missing == []
    assert handler.duplicates() == []
    assert leaked == {"fds": 0, "threads": 0, "tasks": 0, "protocols": 0}


# -- Controller stop with transactions in flight -------------------------------------


class GatedHandler(Sink):
    """handle_DATA for "gate@" recipients waits until the test opens the
    gate - which, here, it never does: the controller stops first."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0
        self.cancelled = 0
        self.gate: Optional[asyncio.Event] = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if "gate@example.com" in envelope.rcpt_tos:
            if self.gate is None:
                self.gate = asyncio.Event()
            self.waiting += 1
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return await super().handle_DATA(server, session, envelope)


def _controller(handler: Any, **kwargs: Any) -> Controller:
    return Controller(handler, hostname="127.0.0.1", port=0, server_hostname="c.example",
                      **kwargs)


def test_stop_with_transactions_in_flight() -> None:
    handler = GatedHandler()
    fds, threads = open_fds(), threading.active_count()
    controller = _controller(handler)  # its loop is closed by stop()
    controller.start()
    port = controller.port
    ledger = Ledger()
    socks: list[tuple[socket.socket, Any, str]] = []
    try:
        for i in range(60):
            sock, f = _connect(port)
            stage = ["idle", "envelope", "mid-data", "gated", "delivered"][i % 5]
            if stage != "idle":
                _envelope(sock, f, "gate@example.com" if stage == "gated" else "b@example.com")
            if stage in ("mid-data", "gated", "delivered"):
                assert _cmd(sock, f, b"DATA").startswith(b"354")
                msg_id = ledger.next_id()
                if stage == "mid-data":
                    sock.sendall(message(msg_id)[:20])
                elif stage == "gated":
                    sock.sendall(message(msg_id) + b".\r\n")
                else:
                    assert _cmd(sock, f, message(msg_id) + b".") == b"250 OK\r\n"
                    ledger.accepted.append(msg_id)
            socks.append((sock, f, stage))
        # Every gated delivery is inside the handler before we stop.
        deadline = threading.Event()
        for _ in range(int(IO_TIMEOUT * 100)):
            if handler.waiting == 12:
                break
            deadline.wait(0.01)
        assert handler.waiting == 12
    finally:
        controller.stop()
    # Every client sees the connection end; none gets a late 250.
    late = []
    for sock, f, stage in socks:
        sock.settimeout(IO_TIMEOUT)
        rest = f.read()
        if b"250" in rest:
            late.append((stage, rest))
        _close(sock, f)
    assert late == []
    assert handler.cancelled == 12
    assert [m for m in ledger.accepted if handler.ids[m] != 1] == []
    assert handler.duplicates() == []
    connections = len(socks)
    del socks
    gc.collect()
    assert open_fds() == fds
    assert threading.active_count() == threads
    report("faults_stop_in_flight", connections=connections, in_handler=handler.waiting,
           accepted=len(ledger.accepted), messages_lost=0)


def test_controller_start_stop_cycles_leak_nothing() -> None:
    cycles = scale(100, 1000, "AIOSMTPD_CONTROLLER_CYCLES")
    handler = Sink()
    controller = _controller(handler)
    # One cycle first: the first start creates lazily cached state.
    controller.start()
    controller.stop()
    gc.collect()
    fds, threads = open_fds(), threading.active_count()
    for i in range(cycles):
        controller.start()
        if i % 10 == 0:
            with smtplib.SMTP("127.0.0.1", controller.port, timeout=IO_TIMEOUT) as s:
                s.sendmail("a@example.com", ["b@example.com"], message(f"cycle-{i}"))
        if i % 10 == 5:
            # A client still connected when stop() comes.
            sock, f = _connect(controller.port)
            controller.stop()
            assert f.read() == b""  # the server hung up
            _close(sock, f)
        else:
            controller.stop()
    gc.collect()
    leaked = {"fds": open_fds() - fds, "threads": threading.active_count() - threads}
    report("faults_controller_cycles", cycles=cycles, leaks=leaked,
           messages=handler.count)
    assert leaked == {"fds": 0, "threads": 0}
    assert handler.count == (cycles + 9) // 10
    assert handler.duplicates() == []


def test_auth_plain_constant_is_valid(lt: LoopThread) -> None:
    # The fault sessions rely on the shared credentials being accepted.
    harness = Harness(lt, Sink(), auth_require_tls=False, authenticator=authenticator)
    try:
        sock, f = _connect(harness.port)
        _cmd(sock, f, b"EHLO c")
        assert _cmd(sock, f, AUTH_PLAIN.encode()) == b"235 2.7.0 Authentication successful\r\n"
        _close(sock, f)
    finally:
        harness.close()
