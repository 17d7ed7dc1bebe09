"""STARTTLS and implicit TLS (docs/tls.rst).

Every test talks to a real server over loopback, with certificates made at
test time by trustme, and with real clients: smtplib, aiosmtplib, raw
sockets wrapped by :mod:`ssl`, ``openssl s_client`` and ``swaks``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
import subprocess
import threading
from typing import Any, Optional

import pytest

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session, TLSSetupException
from tests._server import IO_TIMEOUT, Certs, LineClient

pytest.importorskip("trustme")


class Recorder:
    """A handler that records what the server tells it."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.noops: list[Optional[str]] = []
        self.mail_from: list[str] = []
        self.messages: list[Envelope] = []
        self.exceptions: list[Exception] = []
        self.exception_seen = threading.Event()

    async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope,
                          arg: Optional[str]) -> str:
        self.noops.append(arg)
        self.sessions.append(session)
        return "250 OK"

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        self.mail_from.append(address)
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(envelope)
        self.sessions.append(session)
        return "250 OK"


class ExceptionRecorder(Recorder):
    async def handle_exception(self, error: Exception) -> str:
        self.exceptions.append(error)
        self.exception_seen.set()
        return "500 this reply must never be sent"


def accept_password(server: SMTP, session: Session, envelope: Envelope,
                    mechanism: str, auth_data: Any) -> AuthResult:
    return AuthResult(success=auth_data.password == b"secret", auth_data=auth_data,
                      handled=False)


# -- STARTTLS basics -------------------------------------------------------------------


def test_starttls_advertised_and_help(serve: Any, certs: Certs) -> None:
    port = serve(Recorder(), tls_context=certs.server_context())
    client = LineClient(port)
    assert b"250-STARTTLS" in client.cmd("EHLO c")
    assert b"STARTTLS" in client.cmd("HELP")
    assert client.cmd("HELP STARTTLS") == b"250 Syntax: STARTTLS"
    assert client.cmd("STARTTLS now") == b"501 Syntax: STARTTLS"
    client.starttls(certs.client_context())
    ehlo = client.cmd("EHLO c")
    assert b"STARTTLS" not in ehlo
    assert b"250-AUTH LOGIN PLAIN" in ehlo
    assert b"STARTTLS" in client.cmd("HELP")
    client.close()


def test_no_tls_context(serve: Any) -> None:
    client = LineClient(serve(Recorder()))
    assert b"STARTTLS" not in client.cmd("EHLO c")
    assert client.cmd("STARTTLS") == b"454 TLS not available"
    assert client.cmd("HELP STARTTLS").startswith(b"501 Supported commands: ")
    client.close()


def test_smtplib_starttls_resets_session(serve: Any, certs: Certs) -> None:
    import smtplib

    handler = Recorder()
    port = serve(handler, tls_context=certs.server_context(), authenticator=accept_password)
    with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as client:
        client.ehlo("before")
        assert client.mail("early@example.com")[0] == 250
        client.starttls(context=certs.client_context())
        # RFC 3207 4.2: forget everything learned before the handshake.
        assert client.docmd("MAIL FROM:<x@example.com>") == (503, b"Error: send HELO first")
        assert client.docmd("NOOP")[0] == 250
        session = handler.sessions[-1]
        assert session.host_name is None
        assert session.extended_smtp is False
        assert session.ssl is not None
        assert {"sslcontext", "peercert", "cipher", "compression", "ssl_object"} <= set(
            session.ssl
        )
        assert session.ssl["ssl_object"].version().startswith("TLS")
        client.ehlo("after")
        client.login("user", "secret")
        client.sendmail("a@example.com", ["b@example.com"], b"Subject: hi\r\n\r\nbody\r\n")
    assert handler.messages[-1].mail_from == "a@example.com"


def test_plaintext_pipelined_after_starttls_is_discarded(serve: Any, certs: Certs) -> None:
    handler = Recorder()
    client = LineClient(serve(handler, tls_context=certs.server_context()))
    # The injection of RFC 3207 section 6: one packet, commands after STARTTLS.
    client.send(b"STARTTLS\r\nNOOP injected\r\nMAIL FROM:<inject@example.com>\r\n")
    assert client.lines() == [b"220 Ready to start TLS"]
    client.use(certs.client_context().wrap_socket(client.sock, server_hostname="localhost"))
    # The first reply over TLS answers our EHLO, not the injected commands.
    client.send(b"EHLO c\r\n")
    assert client.lines()[0] == b"250-test.example"
    assert client.cmd("NOOP mine") == b"250 OK"
    assert handler.noops == ["mine"]
    assert handler.mail_from == []
    client.close()


def _handshake_then_send(sock: socket.socket, context: ssl.SSLContext,
                         data: bytes) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """Finish a client handshake and send *data* in the same TCP write as
    the client's last handshake flight."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            received = sock.recv(65536)
            assert received, "server closed during the handshake"
            incoming.write(received)
    tls.write(data)
    sock.sendall(outgoing.read())
    return tls, incoming, outgoing


def _tls_read_until(sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO,
                    count: int) -> bytes:
    """Read until *count* CRLF-terminated lines have arrived."""
    data = b""
    while data.count(b"\r\n") < count:
        try:
            data += tls.read(65536)
        except ssl.SSLWantReadError:
            received = sock.recv(65536)
            assert received, f"connection closed after {data!r}"
            incoming.write(received)
    return data


def test_command_sent_with_client_finished_is_kept(serve: Any, certs: Certs) -> None:
    # A TLS 1.3 client may send its first command right behind its Finished
    # message; the server gets both at once, before STARTTLS has returned.
    client = LineClient(serve(Recorder(), tls_context=certs.server_context()))
    assert client.cmd("STARTTLS") == b"220 Ready to start TLS"
    tls, incoming, _ = _handshake_then_send(client.sock, certs.client_context(), b"NOOP\r\n")
    assert tls.version() == "TLSv1.3"
    assert _tls_read_until(client.sock, tls, incoming, 1) == b"250 OK\r\n"
    client.close()


def test_flood_sent_with_client_finished(serve: Any, certs: Certs) -> None:
    # More than the server buffers before it stops reading, all arriving
    # before STARTTLS has returned: reading must resume on the right
    # transport once the backlog is worked off.
    client = LineClient(serve(Recorder(), tls_context=certs.server_context()))
    assert client.cmd("STARTTLS") == b"220 Ready to start TLS"
    count = 4_000
    tls, incoming, outgoing = _handshake_then_send(
        client.sock, certs.client_context(), b"RSET\r\n" * count
    )
    replies = _tls_read_until(client.sock, tls, incoming, count)
    assert replies == b"250 OK\r\n" * count
    tls.write(b"QUIT\r\n")
    client.sock.sendall(outgoing.read())
    assert _tls_read_until(client.sock, tls, incoming, 1) == b"221 Bye\r\n"
    client.close()


def test_second_starttls_refused(serve: Any, certs: Certs) -> None:
    client = LineClient(serve(Recorder(), tls_context=certs.server_context()))
    client.starttls(certs.client_context())
    client.cmd("EHLO c")
    assert client.cmd("STARTTLS") == b"503 5.5.1 Error: TLS already active"
    # The session goes on over the same TLS layer.
    assert client.cmd("NOOP") == b"250 OK"
    assert client.cmd("STARTTLS x") == b"501 Syntax: STARTTLS"
    client.close()


def test_starttls_allowed_without_ehlo_and_mid_transaction(serve: Any, certs: Certs) -> None:
    handler = Recorder()
    client = LineClient(serve(handler, tls_context=certs.server_context()))
    client.cmd("EHLO c")
    assert client.cmd("MAIL FROM:<a@example.com>") == b"250 OK"
    client.starttls(certs.client_context())
    client.cmd("EHLO c")
    # The transaction was discarded by the reset.
    assert client.cmd("RCPT TO:<b@example.com>") == b"503 Error: need MAIL command"
    client.close()


def test_aiosmtplib_starttls_and_login(serve: Any, certs: Certs) -> None:
    aiosmtplib = pytest.importorskip("aiosmtplib")
    handler = Recorder()
    port = serve(handler, tls_context=certs.server_context(), authenticator=accept_password)

    async def talk() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False,
                                 timeout=IO_TIMEOUT)
        await client.connect()
        await client.ehlo()
        assert client.supports_extension("starttls")
        assert not client.supports_extension("auth")
        await client.starttls(tls_context=certs.client_context(), server_hostname="localhost")
        await client.ehlo()
        assert client.supports_extension("auth")
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failure:
            await client.login("user", "wrong")
        assert failure.value.code == 535
        response = await client.login("user", "secret")
        assert response.code == 235
        await client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nhi\r\n")
        await client.quit()

    asyncio.run(talk())
    assert handler.messages[-1].rcpt_tos == ["b@example.com"]
    assert handler.sessions[-1].ssl is not None
    assert handler.sessions[-1].authenticated is True


class ProxyRecorder(Recorder):
    async def handle_PROXY(self, server: SMTP, session: Session, envelope: Envelope,
                           proxy_data: Any) -> bool:
        return True


def test_proxy_data_survives_starttls(serve: Any, certs: Certs) -> None:
    handler = ProxyRecorder()
    port = serve(handler, tls_context=certs.server_context(), proxy_protocol_timeout=5)
    client = LineClient(port, preamble=b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n")
    assert client.greeting[0].startswith(b"220 test.example")
    assert client.cmd("NOOP") == b"250 OK"
    client.starttls(certs.client_context())
    assert client.cmd("NOOP") == b"250 OK"
    client.close()
    before, after = handler.sessions
    assert before is not after
    assert before.proxy_data is not None
    assert str(before.proxy_data.src_addr) == "192.0.2.7"
    # Deviation (CHANGES.rst): it describes the connection, so it stays.
    assert after.proxy_data is before.proxy_data
    assert after.ssl is not None and before.ssl is None


# -- require_starttls -------------------------------------------------------------------


def test_require_starttls_gate(serve: Any, certs: Certs) -> None:
    port = serve(Recorder(), tls_context=certs.server_context(), require_starttls=True)
    client = LineClient(port)
    gate = b"530 Must issue a STARTTLS command first"
    assert client.cmd("NOOP") == b"250 OK"
    assert client.cmd("EHLO c").startswith(b"250-test.example")
    for command in ("HELO c", "HELP", "MAIL FROM:<a@b.c>", "RCPT TO:<a@b.c>", "DATA",
                    "VRFY a", "RSET", "AUTH PLAIN", "EXPN a"):
        assert client.cmd(command) == gate, command
    # Unknown commands are gated before being counted: five of them would
    # otherwise end the session with 502.
    for _ in range(6):
        assert client.cmd("BOGUS") == gate
    client.starttls(certs.client_context())
    assert client.cmd("EHLO c").startswith(b"250-test.example")
    assert client.cmd("MAIL FROM:<a@example.com>") == b"250 OK"
    assert client.cmd("BOGUS") == b'500 Error: command "BOGUS" not recognized'
    client.close()


def test_require_starttls_without_context_has_no_effect(serve: Any) -> None:
    client = LineClient(serve(Recorder(), require_starttls=True))
    assert client.cmd("HELO c") == b"250 test.example"
    client.close()


# -- handle_STARTTLS -------------------------------------------------------------------


class RefuseTLS(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.verdict_sessions: list[Session] = []

    def handle_STARTTLS(self, server: SMTP, session: Session, envelope: Envelope) -> bool:
        self.verdict_sessions.append(session)
        return False


class AsyncRefuseTLS(Recorder):
    async def handle_STARTTLS(self, server: SMTP, session: Session,
                              envelope: Envelope) -> bool:
        await asyncio.sleep(0)  # a real coroutine that suspends
        return False


class AsyncAcceptTLS(Recorder):
    async def handle_STARTTLS(self, server: SMTP, session: Session,
                              envelope: Envelope) -> bool:
        await asyncio.sleep(0)
        return session.ssl is not None


@pytest.mark.parametrize("handler_class", [RefuseTLS, AsyncRefuseTLS])
def test_handle_starttls_false_refuses_commands(
    serve: Any, certs: Certs, handler_class: type[Recorder]
) -> None:
    handler = handler_class()
    client = LineClient(serve(handler, tls_context=certs.server_context()))
    client.starttls(certs.client_context())
    refused = b"554 Command refused due to lack of security"
    for command in ("EHLO c", "NOOP", "HELO c", "MAIL FROM:<a@b.c>", "STARTTLS", "BOGUS"):
        assert client.cmd(command) == refused, command
    assert handler.noops == []
    assert client.cmd("QUIT") == b"221 Bye"
    client.close()
    if isinstance(handler, RefuseTLS):
        assert handler.verdict_sessions[0].ssl is not None


def test_async_handle_starttls_true_is_awaited(serve: Any, certs: Certs) -> None:
    handler = AsyncAcceptTLS()
    client = LineClient(serve(handler, tls_context=certs.server_context()))
    client.starttls(certs.client_context())
    assert client.cmd("NOOP") == b"250 OK"
    client.close()


# -- Handshake failure -------------------------------------------------------------------


def test_handshake_failure_closes_and_calls_handle_exception(
    serve: Any, certs: Certs
) -> None:
    handler = ExceptionRecorder()
    port = serve(handler, tls_context=certs.server_context())
    client = LineClient(port)
    assert client.cmd("STARTTLS") == b"220 Ready to start TLS"
    client.send(b"this is not a TLS ClientHello\r\n" * 4)
    # No reply at all (the handle_exception result is not sent), then EOF.
    try:
        rest = client.file.read()
    except ConnectionResetError:
        rest = b""
    assert rest == b""
    client.close()
    assert handler.exception_seen.wait(IO_TIMEOUT)
    assert isinstance(handler.exceptions[0], TLSSetupException)
    assert handler.exceptions[0].__cause__ is not None
    # The server goes on serving other clients.
    other = LineClient(port)
    assert other.greeting[0].startswith(b"220 test.example")
    assert other.cmd("NOOP") == b"250 OK"
    other.close()


class _TLSFailureSeen(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and isinstance(record.exc_info[1], TLSSetupException):
            self.records.append(record)
            self.seen.set()


def test_handshake_failure_logged(serve: Any, certs: Certs) -> None:
    watcher = _TLSFailureSeen()
    mail_log = logging.getLogger("mail.log")
    mail_log.addHandler(watcher)
    try:
        port = serve(Recorder(), tls_context=certs.server_context())
        client = LineClient(port)
        assert client.cmd("STARTTLS") == b"220 Ready to start TLS"
        client.send(b"\x16\x03\x01\x00\x05hello garbage\r\n")
        try:
            assert client.file.read() == b""
        except ConnectionResetError:
            pass
        client.close()
        # The asyncio transport may close before the record is written.
        assert watcher.seen.wait(IO_TIMEOUT)
    finally:
        mail_log.removeHandler(watcher)
    record = watcher.records[0]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], TLSSetupException)
    assert isinstance(record.exc_info[1].__cause__, ssl.SSLError)
    other = LineClient(port)
    assert other.cmd("NOOP") == b"250 OK"
    other.close()


def test_client_disconnect_during_handshake(serve: Any, certs: Certs) -> None:
    handler = ExceptionRecorder()
    port = serve(handler, tls_context=certs.server_context())
    client = LineClient(port)
    assert client.cmd("STARTTLS") == b"220 Ready to start TLS"
    client.close()
    assert handler.exception_seen.wait(IO_TIMEOUT)
    assert isinstance(handler.exceptions[0], TLSSetupException)
    other = LineClient(port)
    assert other.cmd("NOOP") == b"250 OK"
    other.close()


# -- Implicit TLS (SMTPS) ----------------------------------------------------------------


def test_implicit_tls_smtplib(serve: Any, certs: Certs) -> None:
    import smtplib

    handler = Recorder()
    port = serve(handler, ssl_context=certs.server_context(), authenticator=accept_password)
    with smtplib.SMTP_SSL("127.0.0.1", port, context=certs.client_context(),
                          timeout=IO_TIMEOUT) as client:
        code, ehlo = client.ehlo("c")
        assert code == 250
        # Already encrypted: AUTH offered with the default auth_require_tls,
        # STARTTLS not offered.
        assert b"AUTH LOGIN PLAIN" in ehlo
        assert b"STARTTLS" not in ehlo
        assert client.docmd("STARTTLS") == (503, b"5.5.1 Error: TLS already active")
        assert client.login("user", "secret")[0] == 235
        client.noop()
    session = handler.sessions[-1]
    assert session.authenticated is True
    assert session.ssl is not None
    assert session.ssl["ssl_object"] is not None
    assert session.ssl["cipher"] is not None


def test_implicit_tls_with_tls_context_too(serve: Any, certs: Certs) -> None:
    context = certs.server_context()
    port = serve(Recorder(), ssl_context=context, tls_context=context, require_starttls=True)
    client = LineClient(port, certs.client_context())
    ehlo = client.cmd("EHLO c")
    assert b"STARTTLS" not in ehlo
    assert b"250-AUTH LOGIN PLAIN" in ehlo
    # No STARTTLS gate on an encrypted connection; a nested STARTTLS is refused.
    assert client.cmd("MAIL FROM:<a@example.com>") == b"250 OK"
    assert client.cmd("STARTTLS") == b"503 5.5.1 Error: TLS already active"
    assert client.cmd("RSET") == b"250 OK"
    client.close()


def test_implicit_tls_aiosmtplib_login(serve: Any, certs: Certs) -> None:
    aiosmtplib = pytest.importorskip("aiosmtplib")
    port = serve(Recorder(), ssl_context=certs.server_context(), authenticator=accept_password)

    async def talk() -> int:
        client = aiosmtplib.SMTP(hostname="localhost", port=port, use_tls=True,
                                 tls_context=certs.client_context(), timeout=IO_TIMEOUT)
        await client.connect(hostname="127.0.0.1")
        response = await client.login("user", "secret")
        await client.quit()
        return int(response.code)

    assert asyncio.run(talk()) == 235


# -- TLS context checks ------------------------------------------------------------------


def _construct(context: ssl.SSLContext) -> None:
    loop = asyncio.new_event_loop()
    try:
        SMTP(Recorder(), tls_context=context, loop=loop, hostname="h")
    finally:
        loop.close()


def test_tls_context_warnings(certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mail.log")

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "mail.log"]

    required = certs.server_context()
    required.verify_mode = ssl.CERT_REQUIRED
    _construct(required)
    assert messages() == [
        "tls_context.verify_mode not in {CERT_NONE, CERT_OPTIONAL}; "
        "this might cause client connection problems"
    ]
    caplog.clear()

    checking = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    checking.verify_mode = ssl.CERT_OPTIONAL
    assert checking.check_hostname
    _construct(checking)
    assert messages() == [
        "tls_context.check_hostname == True; this might cause client connection problems"
    ]
    caplog.clear()

    quiet = certs.server_context()
    _construct(quiet)
    assert messages() == []
    # The server never changes the caller's context.
    assert required.verify_mode == ssl.CERT_REQUIRED
    assert checking.check_hostname and checking.verify_mode == ssl.CERT_OPTIONAL


# -- External clients ------------------------------------------------------------------


def _need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed")
    return path


def _need_swaks_tls() -> str:
    swaks = _need("swaks")
    # Debian's swaks only recommends the Perl TLS module it needs.
    support = subprocess.run(
        [swaks, "--support"], capture_output=True, text=True, timeout=30,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if "=== TLS supported" not in support.stdout + support.stderr:
        pytest.skip("swaks cannot do TLS: Net::SSLeay is missing (Debian: libnet-ssleay-perl)")
    return swaks


@pytest.mark.external
def test_openssl_s_client_starttls(serve: Any, certs: Certs) -> None:
    openssl = _need("openssl")
    port = serve(Recorder(), tls_context=certs.server_context())
    proc = subprocess.run(
        [openssl, "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}",
         "-CAfile", str(certs.ca_file), "-verify_return_error", "-verify_hostname",
         "localhost", "-crlf", "-ign_eof", "-quiet"],
        input=b"EHLO openssl\nQUIT\n", capture_output=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.replace(b"\r\n", b"\n")
    # After STARTTLS: a fresh EHLO sees AUTH but no STARTTLS, then QUIT.
    assert b"250-AUTH LOGIN PLAIN\n" in out
    assert b"STARTTLS" not in out
    assert out.rstrip().endswith(b"221 Bye")


@pytest.mark.external
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_starttls_auth(serve: Any, certs: Certs, mechanism: str) -> None:
    swaks = _need_swaks_tls()
    handler = Recorder()
    port = serve(handler, tls_context=certs.server_context(), authenticator=accept_password)
    proc = subprocess.run(
        [swaks, "--server", "127.0.0.1", "--port", str(port), "--tls",
         "--auth", mechanism, "--auth-user", "user", "--auth-password", "secret",
         "--from", "a@example.com", "--to", "b@example.com", "--timeout", "10"],
        capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout.decode(errors="replace")
    assert b"235 2.7.0 Authentication successful" in proc.stdout
    assert handler.messages[-1].rcpt_tos == ["b@example.com"]
    assert handler.sessions[-1].ssl is not None


@pytest.mark.external
def test_swaks_implicit_tls_bad_password(serve: Any, certs: Certs) -> None:
    swaks = _need_swaks_tls()
    port = serve(Recorder(), ssl_context=certs.server_context(), authenticator=accept_password)
    proc = subprocess.run(
        [swaks, "--server", "127.0.0.1", "--port", str(port), "--tls-on-connect",
         "--auth", "PLAIN", "--auth-user", "user", "--auth-password", "wrong",
         "--from", "a@example.com", "--to", "b@example.com", "--timeout", "10"],
        capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode != 0
    assert b"535 5.7.8 Authentication credentials invalid" in proc.stdout
