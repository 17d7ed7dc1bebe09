"""Connection limits, graceful drain, deadlines and metrics (docs/operations.rst),
over loopback sockets, on both engines."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import ssl
import time
from typing import Any

import pytest

from aiosmtpd.metrics import Metrics
from aiosmtpd.operations import (
    SHUTTING_DOWN,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_FROM_ADDRESS,
    Operations,
)
from aiosmtpd.smtp import SMTP, Envelope, Session
from tests._server import HOST, IO_TIMEOUT, LineClient, LoopThread, RawClient, Server, wait_for

pytestmark = pytest.mark.timeout(60)

DATA_TOO_SLOW = "421 4.4.2 Timeout waiting for data, closing connection"
SESSION_TOO_LONG = "421 4.4.2 Session time limit reached, closing connection"


def refused(port: int, source: str = HOST) -> str:
    """Connect (from ``source``) and return the one line the server sends before closing."""
    with socket.create_connection((HOST, port), IO_TIMEOUT, source_address=(source, 0)) as sock:
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.endswith(b"\r\n") and data.count(b"\r\n") == 1, data
    return data[:-2].decode()


def greeted_from(port: int, source: str) -> RawClient:
    client = RawClient.__new__(RawClient)
    client.sock = socket.create_connection((HOST, port), IO_TIMEOUT, source_address=(source, 0))
    client._buf = b""
    client.greeting = client.reply()
    return client


class Counting:
    """A handler that records each delivered message and the hooks called."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.hooks: list[str] = []

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        self.hooks.append("NOOP")
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert envelope.content is not None
        self.messages.append(bytes(envelope.content))  # type: ignore[arg-type]
        return "250 OK"


# -- Connection limits ---------------------------------------------------------------


def test_global_limit(start: Any, lt: LoopThread) -> None:
    ops = Operations(max_connections=2)
    handler = Counting()
    server = start(handler, operations=ops)
    with server.client() as first, server.client() as second:
        assert refused(server.port) == TOO_MANY_CONNECTIONS
        # Before any handler code: the refused client never got a greeting.
        assert first.cmd("NOOP") == "250 OK"
        assert second.cmd("NOOP") == "250 OK"
        assert handler.hooks == ["NOOP", "NOOP"]
    assert wait_for(lambda: not ops.connections, lt)
    with server.client() as again:
        assert again.cmd("NOOP") == "250 OK"


def test_per_address_limit(start: Any, lt: LoopThread) -> None:
    ops = Operations(max_connections_per_ip=1)
    server = start(operations=ops)
    with server.client() as first:
        assert refused(server.port) == TOO_MANY_FROM_ADDRESS
        # Another address is another client.
        with greeted_from(server.port, "127.0.0.2") as other:
            assert other.cmd("NOOP") == "250 OK"
        assert first.cmd("NOOP") == "250 OK"
    assert wait_for(lambda: not ops._per_ip, lt)
    with server.client() as again:
        assert again.cmd("NOOP") == "250 OK"


def proxy_v1(source: str) -> bytes:
    return f"PROXY TCP4 {source} 192.0.2.254 40000 25\r\n".encode()


class AcceptsProxy:
    def __init__(self) -> None:
        self.sources: list[str] = []

    async def handle_PROXY(
        self, server: SMTP, session: Session, envelope: Envelope, data: Any
    ) -> bool:
        self.sources.append(str(data.src_addr))
        return True


def test_per_address_limit_counts_the_proxy_source(start: Any) -> None:
    handler = AcceptsProxy()
    server = start(
        handler,
        operations=Operations(max_connections_per_ip=1),
        proxy_protocol_timeout=5,
    )
    # All from 127.0.0.1 on the wire, but two different clients behind the proxy.
    with LineClient(server.port, preamble=proxy_v1("192.0.2.1")) as one:
        assert one.greeting[0].startswith(b"220 ")
        with LineClient(server.port, preamble=proxy_v1("192.0.2.2")) as two:
            assert two.greeting[0].startswith(b"220 ")
        with LineClient(server.port, preamble=proxy_v1("192.0.2.1")) as same:
            # The refusal comes instead of the greeting, after the header.
            assert same.greeting == [TOO_MANY_FROM_ADDRESS.encode()]
            assert same.file.readline() == b""
    # Refused before any handler code: handle_PROXY never saw the third.
    assert handler.sources == ["192.0.2.1", "192.0.2.2"]


def test_refusals_are_logged_once_per_burst(
    start: Any, lt: LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    ops = Operations(max_connections=1)
    server = start(operations=ops)
    caplog.set_level(logging.WARNING, logger="mail.log")
    with server.client():
        for _ in range(5):
            assert refused(server.port) == TOO_MANY_CONNECTIONS
    assert wait_for(lambda: not ops.connections, lt)
    with server.client() as again:
        assert again.cmd("NOOP") == "250 OK"
    messages = [r.getMessage() for r in caplog.records if "max_connections" in r.getMessage()]
    assert len(messages) == 2, messages
    assert messages[0].startswith("max_connections reached: refusing connections (first: ")
    assert messages[1] == "max_connections reached: accepting again after refusing 5"


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("max_connections", 0), ("max_connections", -1), ("max_connections_per_ip", 1.5),
     ("max_connections_per_ip", True)],
)
def test_bad_limits(keyword: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"{keyword} must be None or a positive int"):
        Operations(**{keyword: value})


@pytest.mark.parametrize("keyword", ["data_timeout", "session_timeout", "tls_handshake_timeout"])
@pytest.mark.parametrize("value", [0, -1, True])
def test_bad_timeouts(keyword: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"{keyword} must be None or a number of seconds > 0"):
        SMTP(None, **{keyword: value})


# -- Metrics ----------------------------------------------------------------------------


def test_metrics_of_a_known_conversation(start: Any, lt: LoopThread) -> None:
    ops = Operations(metrics=True)
    server = start(Counting(), operations=ops)
    body = b"Subject: hi\r\n\r\n..dot\r\n"
    with server.client() as c:
        c.multi("EHLO a")  # 250
        assert c.cmd("MAIL FROM:<a@example.com>") == "250 OK"
        assert c.cmd("RCPT TO:<b@example.com>") == "250 OK"
        assert c.cmd("DATA").startswith("354")
        c.send(body + b".\r\n")
        assert c.text() == "250 OK"
        assert c.cmd("BOGUS").startswith("500")
        assert c.cmd("RCPT TO:<b@example.com>").startswith("503")
        assert c.cmd("QUIT").startswith("221")
    assert ops.metrics is not None
    assert wait_for(lambda: ops.metrics is not None and ops.metrics["connections_open"] == 0, lt)
    values = {k: v for k, v in ops.metrics.snapshot().items() if v}
    assert values == {
        "connections_total": 1,
        "transactions_total": 1,
        "messages_accepted_total": 1,
        "message_bytes_accepted_total": len(body),
        'replies_total{class="2xx"}': 6,  # greeting, EHLO, MAIL, RCPT, DATA, QUIT
        'replies_total{class="3xx"}': 1,
        'replies_total{class="5xx"}': 2,
    }


def test_metrics_of_refusals_and_timeouts(start: Any, lt: LoopThread) -> None:
    ops = Operations(max_connections=1, metrics=True)
    server = start(operations=ops, data_timeout=0.2)
    with server.client() as c:
        assert refused(server.port) == TOO_MANY_CONNECTIONS
        in_transaction(c)
        c.cmd("DATA")
        assert c.text() == DATA_TOO_SLOW
        assert c.is_closed()
    metrics = ops.metrics
    assert metrics is not None
    assert wait_for(lambda: metrics["connections_open"] == 0, lt)
    assert metrics['connections_refused_total{reason="max_connections"}'] == 1
    assert metrics['timeouts_total{kind="data"}'] == 1
    assert metrics['replies_total{class="4xx"}'] == 2  # the refusal and the timeout
    assert metrics["messages_accepted_total"] == 0


def test_metrics_lookup_of_an_unknown_series() -> None:
    with pytest.raises(KeyError, match="see aiosmtpd.metrics.SERIES"):
        Metrics()["nope"]


# -- Deadlines ---------------------------------------------------------------------------


def test_data_timeout_bounds_the_whole_data_phase(start: Any) -> None:
    handler = Counting()
    server = start(handler, data_timeout=0.3, timeout=30)
    with server.client() as c:
        in_transaction(c)
        assert c.cmd("DATA").startswith("354")
        # A client that keeps sending lines is not idle, but the phase ends.
        lines = 0
        while True:
            try:
                c.send(b"line\r\n")
            except OSError:
                break
            lines += 1
            c.sock.settimeout(0.02)
            try:
                reply = c.text()
                break
            except (socket.timeout, TimeoutError):
                continue
            finally:
                c.sock.settimeout(IO_TIMEOUT)
        if lines:
            assert reply == DATA_TOO_SLOW
        assert c.is_closed()
    assert handler.messages == []


def test_data_timeout_is_cancelled_after_data(start: Any, lt: LoopThread) -> None:
    ops = Operations(metrics=True)
    server = start(Counting(), data_timeout=0.2, operations=ops)
    with server.client() as c:
        in_transaction(c)
        c.cmd("DATA")
        c.send(b"hi\r\n.\r\n")
        assert c.text() == "250 OK"
        time.sleep(0.4)  # longer than data_timeout: nothing may fire now
        assert c.cmd("NOOP") == "250 OK"
    assert ops.metrics is not None and ops.metrics['timeouts_total{kind="data"}'] == 0


def test_session_timeout(start: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mail.log")
    server = start(session_timeout=0.3, timeout=30)
    with server.client() as c:
        # Busy all along: the session still ends.
        for _ in range(100_000):
            try:
                c.send(b"NOOP\r\n")
            except OSError:  # closed while this NOOP was on its way
                pass
            reply = c.text()
            if reply != "250 OK":
                break
        assert reply == SESSION_TOO_LONG
    assert any(r.getMessage().endswith("session timeout") for r in caplog.records)


def test_goodbye_reaches_a_client_that_keeps_sending(start: Any) -> None:
    # Closed with unread input, a socket sends a reset, and the client's TCP
    # stack may drop the 421 before the client reads it: the server lingers
    # (docs/operations.rst, "Graceful drain").
    server = start(session_timeout=0.3, timeout=30)
    with socket.create_connection((HOST, server.port), IO_TIMEOUT) as sock:
        sock.recv(1024)
        with contextlib.suppress(OSError):
            sock.sendall(b"NOOP\r\n" * 400_000)  # 2.4 MB, replies unread
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
    assert received.endswith(SESSION_TOO_LONG.encode() + b"\r\n"), received[-200:]


class Slow:
    """A handler that stores a message only once ``release`` is set."""

    def __init__(self, lt: LoopThread) -> None:
        self.release = lt.call(asyncio.Event)  # on the server's loop (Python 3.9 binds it)
        self.stored: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self.release.wait()
        self.stored.append(envelope.original_content or b"")
        return "250 stored"


def test_session_timeout_waits_for_the_delivery(start: Any, lt: LoopThread) -> None:
    handler = Slow(lt)
    server = start(handler, session_timeout=0.3, timeout=30)
    with server.client() as c:
        in_transaction(c)
        c.cmd("DATA")
        c.send(b"hi\r\n.\r\n")
        # The deadline passes while the handler delivers: it is not cut.
        assert wait_for(lambda: server.last._departure.reply == SESSION_TOO_LONG, lt)
        lt.call(handler.release.set)
        assert c.text() == "250 stored"
        assert c.text() == SESSION_TOO_LONG
        assert c.is_closed()
    assert handler.stored == [b"hi\r\n"]


def test_starttls_handshake_timeout(
    start: Any,
    lt: LoopThread,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mail.log")
    ops = Operations(metrics=True)
    server = start(
        tls_context=tls_contexts[0],
        tls_handshake_timeout=0.3,
        timeout=30,
        brief_tls_errors=True,
        operations=ops,
    )
    with server.client() as c:
        c.multi("EHLO a")
        assert c.cmd("STARTTLS") == "220 Ready to start TLS"
        # No ClientHello: the server gives up, silently.
        assert c.is_closed()
    assert ops.metrics is not None
    assert wait_for(lambda: ops.metrics is not None and ops.metrics["tls_failures_total"] == 1, lt)
    failures = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelno == logging.WARNING and failures[0].exc_info is None
    assert "Timeout" in failures[0].getMessage() or "taking longer" in failures[0].getMessage()


def test_tls_failure_is_an_error_with_traceback_by_default(
    start: Any,
    lt: LoopThread,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = start(tls_context=tls_contexts[0])
    with server.client() as c:
        c.multi("EHLO a")
        assert c.cmd("STARTTLS") == "220 Ready to start TLS"
        c.send(b"this is no ClientHello\r\n" * 10)
        assert c.is_closed()
    assert wait_for(lambda: any(r.exc_info for r in caplog.records), lt)
    record = next(r for r in caplog.records if r.exc_info)
    assert record.levelno == logging.ERROR


def test_tls_handshakes_counted(
    start: Any, lt: LoopThread, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    ops = Operations(metrics=True)
    server = start(tls_context=tls_contexts[0], operations=ops)
    with LineClient(server.port) as c:
        c.cmd("EHLO a")
        c.starttls(tls_contexts[1])
        assert c.cmd("NOOP") == b"250 OK"
    assert ops.metrics is not None and ops.metrics["tls_handshakes_total"] == 1


# -- Graceful drain -------------------------------------------------------------------------


def begin_drain(server: Server, ops: Operations, timeout: float) -> concurrent.futures.Future[None]:
    """Stop accepting, then drain; the future completes when no connection is left."""
    loop = server.lt.loop
    loop.call_soon_threadsafe(server.server.close)
    return asyncio.run_coroutine_threadsafe(ops.drain(timeout), loop)


def in_transaction(client: RawClient) -> None:
    client.cmd("HELO a")
    assert client.cmd("MAIL FROM:<a@example.com>") == "250 OK"
    assert client.cmd("RCPT TO:<b@example.com>") == "250 OK"


def test_drain_lets_transactions_finish(start: Any) -> None:
    ops = Operations()
    handler = Counting()
    server = start(handler, operations=ops)
    idle = server.client()
    busy = [server.client() for _ in range(100)]
    stalled = [server.client() for _ in range(5)]
    try:
        for client in busy + stalled:
            in_transaction(client)
        for client in stalled:
            assert client.cmd("DATA").startswith("354")
            client.send(b"part of a message\r\n")
        drained = begin_drain(server, ops, timeout=2.0)
        # An idle connection is told at once: the drain has begun.
        assert idle.text() == SHUTTING_DOWN
        assert idle.is_closed()
        for number, client in enumerate(busy):
            assert client.cmd("DATA").startswith("354")
            client.send(b"message %d\r\n.\r\n" % number)
            assert client.text() == "250 OK"
            assert client.text() == SHUTTING_DOWN
            assert client.is_closed()
        # Those that never finish are cut at the deadline, never acknowledged.
        for client in stalled:
            assert client.text() == SHUTTING_DOWN
            assert client.is_closed()
        drained.result(IO_TIMEOUT)
    finally:
        for client in [idle, *busy, *stalled]:
            client.close()
    assert sorted(handler.messages) == sorted(b"message %d\r\n" % n for n in range(100))
    assert not ops.connections


def test_drain_never_cancels_a_delivering_handler(start: Any, lt: LoopThread) -> None:
    handler = Slow(lt)
    ops = Operations()
    server = start(handler, operations=ops)
    with server.client() as c:
        in_transaction(c)
        c.cmd("DATA")
        c.send(b"hi\r\n.\r\n")
        assert wait_for(lambda: server.last._departure.delivering, lt)
        drained = begin_drain(server, ops, timeout=0.2)
        # Past the deadline the drain still waits for the handler.
        assert wait_for(lambda: server.last._departure.after == "delivery", lt)
        assert not drained.done()
        lt.call(handler.release.set)
        assert c.text() == "250 stored"
        assert c.text() == SHUTTING_DOWN
        assert c.is_closed()
        drained.result(IO_TIMEOUT)
    assert handler.stored == [b"hi\r\n"]


def test_connections_during_a_drain_are_refused(start: Any) -> None:
    ops = Operations()
    server = start(operations=ops)
    with server.client() as c:
        in_transaction(c)
        ops.draining = True  # as drain() sets it, with the listener still open
        try:
            assert refused(server.port) == SHUTTING_DOWN
        finally:
            ops.draining = False
        assert c.cmd("NOOP") == "250 OK"
