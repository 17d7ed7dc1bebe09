"""Upstream's private names that code written for it uses (docs/smtp.rst,
"Upstream internals"): each behaves as it did upstream.

aiosmtplib's and smtpdfix's own suites rely on these (tests/test_downstream.py
runs them); here each behaviour is checked in our own words, over loopback.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
from typing import Any, Optional
from unittest import mock

import pytest

import aiosmtpd.proxy_protocol
import aiosmtpd.smtp as smtp_module
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax
from tests._server import (
    HOST,
    HOSTNAME,
    LineClient,
    LoopThread,
    RawClient,
    ServerFactory,
    wait_for,
)

# -- Module names -------------------------------------------------------------------


def test_missing_class_is_importable() -> None:
    from aiosmtpd.smtp import _Missing

    assert isinstance(MISSING, _Missing)
    assert _Missing.MISSING is MISSING


def test_module_helpers() -> None:
    assert smtp_module.EMPTYBYTES == b"" and isinstance(smtp_module.EMPTYBYTES, bytes)
    assert smtp_module.EMPTY_BARR == bytearray()
    assert smtp_module.is_int(3) and not smtp_module.is_int("3")
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        assert smtp_module.make_loop() is loop
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_regexes_and_typing_helpers() -> None:
    assert smtp_module.VALID_AUTHMECH.match("X-OAUTH2")
    assert not smtp_module.VALID_AUTHMECH.match("bad name")
    assert smtp_module.CLIENT_AUTH_B.match(b"AUTH PLAIN c2VjcmV0\r\n")
    assert smtp_module.sanitize(b"AUTH PLAIN c2VjcmV0\r\n") == b"AUTH PLAIN ********\r\n"
    assert smtp_module.DecoratorType is not None and smtp_module.RT is not None


def test_proxy_names_are_the_proxy_protocol_ones() -> None:
    assert smtp_module.ProxyData is aiosmtpd.proxy_protocol.ProxyData
    assert smtp_module.get_proxy is aiosmtpd.proxy_protocol.get_proxy


def test_controller_keeps_server_coro_while_running() -> None:
    controller = Controller(Sink(), hostname=HOST, port=0)
    assert controller.server_coro is None
    controller.start()
    try:
        assert controller.server_coro is not None
    finally:
        controller.stop()
    assert controller.server_coro is None


# -- _tls_protocol ---------------------------------------------------------------------


class TLSSeenInEHLO:
    """Records what ``server._tls_protocol`` is at each EHLO."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:
        self.seen.append(server._tls_protocol)
        session.host_name = hostname
        return responses


def test_tls_protocol_is_none_until_starttls(
    start: ServerFactory, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, client_ctx = tls_contexts
    handler = TLSSeenInEHLO()
    srv = start(handler, tls_context=server_ctx)
    with LineClient(srv.port) as client:
        client.cmd("EHLO before")
        client.starttls(client_ctx)
        client.cmd("EHLO after")
    before, after = handler.seen
    assert before is None
    assert after  # the TLS layer: truthy
    assert srv.last._tls_active


def test_tls_protocol_is_set_with_implicit_tls(
    start: ServerFactory, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, client_ctx = tls_contexts
    handler = TLSSeenInEHLO()
    srv = start(handler, ssl_context=server_ctx)
    with LineClient(srv.port, client_ctx) as client:
        client.cmd("EHLO smtps")
    assert handler.seen and handler.seen[0]


# -- A subclass's own STARTTLS, written for upstream --------------------------------


class OwnStartTLS(SMTP):
    """STARTTLS done by the subclass with loop.start_tls(), then upstream's
    attributes swapped by hand (the way smtpdfix does it)."""

    swap_transport = False

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: Optional[str]) -> None:
        await self.push("220 Ready to start TLS")
        self._original_transport = self.transport
        assert self.transport is not None and self.tls_context is not None
        tls = await self.loop.start_tls(
            self.transport,  # type: ignore[arg-type]
            self,  # type: ignore[arg-type]
            self.tls_context,
            server_side=True,
        )
        assert tls is not None
        if self.swap_transport:
            self.transport = tls
        self._reader._transport = tls
        self._writer._transport = tls
        self._tls_protocol = tls.get_protocol()


class OwnStartTLSAndTransport(OwnStartTLS):
    swap_transport = True


@pytest.mark.parametrize("cls", [OwnStartTLS, OwnStartTLSAndTransport])
def test_subclass_starttls_in_upstream_style(
    start: ServerFactory,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    cls: type[SMTP],
) -> None:
    server_ctx, client_ctx = tls_contexts
    srv = start(Sink(), cls=cls, tls_context=server_ctx)
    with smtplib.SMTP(HOST, srv.port, timeout=10) as client:
        client.ehlo("before")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        client.starttls(context=client_ctx)
        # Replies now come over TLS, and the session counts as TLS.
        code, _ = client.ehlo("after")
        assert code == 250
        assert not client.has_extn("starttls")
        assert client.has_extn("auth")  # auth_require_tls is satisfied
        assert client.noop() == (250, b"OK")
        assert client.sock.cipher() is not None  # type: ignore[union-attr]


# -- connection_made() twice with STARTTLS ------------------------------------------


class CountingSMTP(SMTP):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.made: list[asyncio.BaseTransport] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(transport)
        super().connection_made(transport)


def test_connection_made_again_with_the_tls_transport(
    start: ServerFactory, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, client_ctx = tls_contexts
    srv = start(Sink(), cls=CountingSMTP, tls_context=server_ctx)
    with LineClient(srv.port) as client:
        assert client.cmd("EHLO one").startswith(b"250-")
        client.starttls(client_ctx)
        # The RFC 3207 reset: a new session, which has not said EHLO yet.
        assert client.cmd("MAIL FROM:<a@example.com>") == b"503 Error: send HELO first"
        assert client.cmd("EHLO two").startswith(b"250-")
        assert client.cmd("QUIT") == b"221 Bye"
    proto = srv.last
    assert isinstance(proto, CountingSMTP)
    raw, tls = proto.made
    assert raw.get_extra_info("ssl_object") is None
    assert tls.get_extra_info("ssl_object") is not None
    assert proto.session is not None and proto.session.ssl is not None


def test_connection_made_once_without_starttls(server: Any, start: ServerFactory) -> None:
    srv = start(Sink(), cls=CountingSMTP)
    with RawClient(srv.port) as client:
        assert client.cmd("QUIT") == "221 Bye"
    assert len(srv.last.made) == 1  # type: ignore[attr-defined]


# -- _reader and _writer -------------------------------------------------------------


class ReadingSMTP(SMTP):
    """XREAD: reads the client's next bytes through ``_reader`` and answers
    through ``_writer``, as code written for upstream does."""

    async def smtp_XREAD(self, arg: Optional[str]) -> None:
        reader, writer = self._reader, self._writer
        line = await reader.readline()
        exact = await reader.readexactly(4)
        until = await reader.readuntil(b"!")
        some = await reader.read(3)
        peer = writer.get_extra_info("peername")
        assert writer.transport is self.transport
        writer.write(f"250-{line!r} {exact!r}\r\n".encode())
        writer.write(f"250-{until!r} {some!r}\r\n".encode())
        await writer.drain()
        await self.push(f"250 from {peer[0]}")


def test_reader_and_writer_in_a_subclass(start: ServerFactory) -> None:
    srv = start(Sink(), cls=ReadingSMTP)
    with RawClient(srv.port) as client:
        client.send(b"XREAD\r\nfirst line\r\nabcdwxyz!123")
        assert client.reply() == [
            b"250-b'first line\\r\\n' b'abcd'",
            b"250-b'wxyz!' b'123'",
            b"250 from 127.0.0.1",
        ]
        # What XREAD did not read is still the command loop's to answer.
        assert client.cmd("NOOP") == "250 OK"


class ReaderInHook:
    """A handler that reads one more line from the client in handle_RCPT."""

    def __init__(self) -> None:
        self.read: list[bytes] = []
        self.in_task: list[bool] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        self.in_task.append(asyncio.current_task() is not None)
        self.read.append(await server._reader.readline())
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_writer_wait_closed_and_drain_after_close(start: ServerFactory) -> None:
    """``_writer.wait_closed()`` returns once the connection is lost, and
    ``drain()`` then raises ConnectionResetError, as StreamWriter's do."""
    seen: list[str] = []
    watchers: list[asyncio.Task[None]] = []

    async def watch(writer: Any) -> None:
        # Outside the command: its Task ends with the connection.
        await writer.wait_closed()
        seen.append("closed")
        await writer.wait_closed()  # again: at once
        try:
            await writer.drain()
        except ConnectionResetError:
            seen.append("reset")

    class ClosingSMTP(SMTP):
        async def smtp_XCLOSE(self, arg: Optional[str]) -> None:
            writer = self._writer
            watchers.append(asyncio.ensure_future(watch(writer)))
            writer.write(b"221 closing\r\n")
            await writer.drain()
            writer.close()

    srv = start(Sink(), cls=ClosingSMTP)
    with RawClient(srv.port) as client:
        client.send(b"XCLOSE\r\n")
        assert client.text() == "221 closing"
        assert client.is_closed()
    assert wait_for(lambda: seen == ["closed", "reset"], srv.lt)


def test_reader_in_a_handler_hook(start: ServerFactory) -> None:
    # The default SMTP class: commands run inline, the hook in a Task.
    handler = ReaderInHook()
    srv = start(handler)
    with RawClient(srv.port) as client:
        assert client.cmd("HELO c") == f"250 {HOSTNAME}"
        assert client.cmd("MAIL FROM:<a@example.com>") == "250 OK"
        client.send(b"RCPT TO:<b@example.com>\r\nnot a command\r\n")
        assert client.text() == "250 OK"
        assert client.cmd("NOOP") == "250 OK"
    assert handler.read == [b"not a command\r\n"]
    assert handler.in_task == [True]


def test_reader_readline_over_limit_is_value_error(start: ServerFactory) -> None:
    class Limited(SMTP):
        async def smtp_XLONG(self, arg: Optional[str]) -> None:
            try:
                await self._reader.readline()
            except ValueError:
                await self.push("250 too long")

    srv = start(Sink(), cls=Limited)
    with RawClient(srv.port) as client:
        client.send(b"XLONG\r\n" + b"x" * 70_000 + b"\r\n")
        assert client.text() == "250 too long"
        assert client.cmd("NOOP") == "250 OK"


# -- _handle_client() ------------------------------------------------------------------


class Busy(SMTP):
    async def _handle_client(self) -> None:
        await self.push("421 busy, try later")
        assert self.transport is not None
        self.transport.close()


def test_handle_client_override_controls_the_greeting(start: ServerFactory) -> None:
    srv = start(Sink(), cls=Busy)
    client = RawClient(srv.port)
    try:
        assert client.greeting == [b"421 busy, try later"]
        assert client.is_closed()
    finally:
        client.close()


class Banner(SMTP):
    async def _handle_client(self) -> None:
        await self.push("220-extra banner line")
        await super()._handle_client()


def test_handle_client_override_may_call_super(start: ServerFactory) -> None:
    srv = start(Sink(), cls=Banner)
    with RawClient(srv.port) as client:
        assert client.greeting == [
            b"220-extra banner line",
            f"220 {HOSTNAME} {smtp_module.__ident__}".encode(),
        ]
        assert client.cmd("HELO c") == f"250 {HOSTNAME}"
        assert client.cmd("QUIT") == "221 Bye"


@pytest.mark.parametrize(
    ("greeting", "expected"),
    [
        (b"421 patched\r\n", b"421 patched\r\n"),
        (b"220 partial", b"220 partial"),
        (b"", b""),
    ],
    ids=["421", "partial-line", "eof"],
)
def test_handle_client_patched(
    start: ServerFactory, greeting: bytes, expected: bytes
) -> None:
    async def patched(self: SMTP) -> None:
        assert self.transport is not None
        self.transport.write(greeting)  # type: ignore[attr-defined]
        self.transport.close()

    srv = start(Sink())
    with mock.patch.object(SMTP, "_handle_client", patched):
        with socket.create_connection((HOST, srv.port), timeout=10) as sock:
            received = b""
            while chunk := sock.recv(1024):
                received += chunk
    assert received == expected


def test_handle_client_patched_to_send_nothing(start: ServerFactory, lt: LoopThread) -> None:
    release: asyncio.Event = lt.call(asyncio.Event)  # made on the server's loop (3.9)

    async def silent(self: SMTP) -> None:
        await release.wait()
        await self.push("220 late")

    srv = start(Sink())
    with mock.patch.object(SMTP, "_handle_client", silent):
        with socket.create_connection((HOST, srv.port), timeout=10) as sock:
            sock.sendall(b"NOOP\r\n")
            sock.setblocking(False)
            # The NOOP is not answered: the override has not served it.
            assert wait_for(lambda: bool(srv.protocols), lt)
            with pytest.raises(BlockingIOError):
                sock.recv(1024)
            sock.setblocking(True)
            lt.call(release.set)
            assert sock.recv(1024) == b"220 late\r\n"


def test_smtplib_sees_an_override_greeting(start: ServerFactory) -> None:
    srv = start(Sink(), cls=Busy)
    with pytest.raises(smtplib.SMTPConnectError) as caught:
        smtplib.SMTP(HOST, srv.port, timeout=10)
    assert caught.value.smtp_code == 421
