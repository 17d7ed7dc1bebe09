"""The AUTH command, its mechanisms and credential checking (docs/auth.rst).

The server runs on loopback in a thread; clients are raw sockets (to see
every reply byte), smtplib and aiosmtplib.  Most tests use
``auth_require_tls=False`` so they need no TLS handshake; the TLS side of
AUTH is covered at the end and in test_smtp_tls.py.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import smtplib
import ssl
import warnings
from collections.abc import Iterator
from typing import Any, Optional

import pytest

from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    auth_mechanism,
    login_always_fail,
)
from tests._server import IO_TIMEOUT, LineClient, LoopThread, Server, ServerFactory

USER, PASSWORD = "user", "s3cret"
PLAIN_OK = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
PLAIN_BAD = base64.b64encode(f"\0{USER}\0wrong".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- Client helpers -----------------------------------------------------------------------


@pytest.fixture
def connect() -> Iterator[Any]:
    clients: list[LineClient] = []

    def connect(port: int, *, ehlo: Optional[str] = "EHLO c",
                context: Optional[ssl.SSLContext] = None) -> LineClient:
        client = LineClient(port, context)
        clients.append(client)
        if ehlo:
            assert client.cmd(ehlo).startswith(b"250")
        return client

    yield connect
    for client in clients:
        client.close()


class Sink:
    """A handler that keeps the sessions it sees."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []

    async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope,
                          arg: Optional[str]) -> str:
        self.sessions.append(session)
        return "250 OK"


class Authenticator:
    """An ``authenticator`` that records its calls."""

    def __init__(self, result: Optional[AuthResult] = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.result = result

    def __call__(self, server: SMTP, session: Session, envelope: Envelope,
                 mechanism: str, auth_data: Any) -> AuthResult:
        self.calls.append((server, session, envelope, mechanism, auth_data))
        if self.result is not None:
            return self.result
        ok = auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


@pytest.fixture
def plain_server(lt: LoopThread, start: ServerFactory) -> Server:
    """AUTH over plain text (``auth_require_tls=False``) with a real check."""
    return start(Sink(), loop=lt.loop, auth_require_tls=False, authenticator=Authenticator())


@pytest.fixture
def plain_port(plain_server: Server) -> int:
    return plain_server.port


OK = b"235 2.7.0 Authentication successful"
INVALID = b"535 5.7.8 Authentication credentials invalid"
ABORTED = b"501 5.7.0 Auth aborted"
BAD_B64 = b"501 5.5.2 Can't decode base64"
NO_SPLIT = b"501 5.5.2 Can't split auth value"


# -- Pre-checks and their order ----------------------------------------------------------


def test_prechecks(plain_port: int, connect: Any) -> None:
    client = connect(plain_port, ehlo=None)
    assert client.cmd("AUTH PLAIN") == b"503 Error: send EHLO first"
    assert client.cmd("HELO c") == b"250 test.example"
    # Not counted as an unknown command: six of them do not end the session.
    for _ in range(6):
        assert client.cmd("AUTH PLAIN") == b"500 Error: command 'AUTH' not recognized"
    assert client.cmd("EHLO c").startswith(b"250-test.example")
    assert client.cmd("AUTH") == b"501 Not enough value"
    assert client.cmd("AUTH PLAIN a b") == b"501 Too many values"
    assert client.cmd("AUTH CRAM-MD5") == b"504 5.5.4 Unrecognized authentication type"
    assert client.cmd("AUTH PLAIN " + PLAIN_OK) == OK
    assert client.cmd("AUTH PLAIN " + PLAIN_OK) == b"503 Already authenticated"
    # "Already authenticated" comes before the argument checks.
    assert client.cmd("AUTH") == b"503 Already authenticated"


def test_auth_during_mail_transaction_refused(plain_port: int, connect: Any) -> None:
    client = connect(plain_port)
    assert client.cmd("MAIL FROM:<a@example.com>") == b"250 OK"
    assert client.cmd("AUTH PLAIN " + PLAIN_OK) == b"503 5.5.1 Error: MAIL transaction in progress"
    assert client.cmd("RSET") == b"250 OK"
    assert client.cmd("AUTH PLAIN " + PLAIN_OK) == OK


def test_auth_require_tls_default(serve: Any, connect: Any) -> None:
    port = serve(Sink(), authenticator=Authenticator())
    client = connect(port, ehlo=None)
    assert b"AUTH" not in client.cmd("EHLO c")
    assert client.cmd("AUTH PLAIN " + PLAIN_OK) == (
        b"538 5.7.11 Encryption required for requested authentication mechanism"
    )
    # HELP lists AUTH anyway.
    assert b" AUTH " in client.cmd("HELP")
    assert client.cmd("HELP AUTH") == b"250 Syntax: AUTH <mechanism>"


def test_advertised_without_tls_when_allowed(plain_port: int, connect: Any) -> None:
    client = connect(plain_port, ehlo=None)
    assert client.cmd("EHLO c").split(b"\n") == [
        b"250-test.example", b"250-SIZE 33554432", b"250-8BITMIME",
        b"250-AUTH LOGIN PLAIN", b"250 HELP",
    ]  # fmt: skip


# -- PLAIN -------------------------------------------------------------------------------


def test_plain_initial_response(plain_port: int, connect: Any) -> None:
    client = connect(plain_port)
    assert client.cmd("AUTH PLAIN " + PLAIN_BAD) == INVALID
    assert client.cmd("AUTH PLAIN " + PLAIN_OK) == OK


def test_plain_challenge(plain_port: int, connect: Any) -> None:
    client = connect(plain_port)
    assert client.cmd("AUTH PLAIN") == b"334 "
    assert client.cmd(PLAIN_BAD) == INVALID
    assert client.cmd("AUTH PLAIN") == b"334 "
    # The response may end with a bare LF and carry surrounding blanks.
    client.sock.sendall(b"  " + PLAIN_OK.encode() + b" \n")
    assert client.reply() == OK


@pytest.mark.parametrize(
    "response, reply",
    [
        ("!!!", BAD_B64),
        ("AHVzZXIAcGFzcw", BAD_B64),  # missing padding
        ("AHVzZXIAcGFzcw==x", BAD_B64),  # data after padding
        ("bm9udWxs", NO_SPLIT),  # b"nonull"
        (b64("\0one"), NO_SPLIT),
        (b64("a\0b\0c\0d"), NO_SPLIT),
        # RFC 4954: "=" is the empty response, on every Python version.
        ("=", NO_SPLIT),
    ],
)
def test_plain_bad_responses(plain_port: int, connect: Any, response: str, reply: bytes) -> None:
    client = connect(plain_port)
    assert client.cmd("AUTH PLAIN " + response) == reply
    assert client.cmd("AUTH PLAIN") == b"334 "
    assert client.cmd(response) == reply
    # The session goes on.
    assert client.cmd("AUTH PLAIN " + PLAIN_OK) == OK


def test_plain_abort(plain_port: int, connect: Any) -> None:
    client = connect(plain_port)
    assert client.cmd("AUTH PLAIN") == b"334 "
    assert client.cmd("*") == ABORTED
    assert client.cmd("NOOP") == b"250 OK"


def test_mechanism_name_case_insensitive(serve: Any, connect: Any) -> None:
    seen: list[list[str]] = []

    class Hook(Sink):
        async def handle_AUTH(self, server: SMTP, session: Session, envelope: Envelope,
                              args: list[str]) -> Any:
            seen.append(list(args))
            return MISSING

    port = serve(Hook(), auth_require_tls=False, authenticator=Authenticator())
    client = connect(port)
    assert client.cmd("auth plain " + PLAIN_OK) == OK
    assert seen == [["PLAIN", PLAIN_OK]]


# -- LOGIN -------------------------------------------------------------------------------


def test_login_challenges(plain_port: int, connect: Any) -> None:
    client = connect(plain_port)
    assert client.cmd("AUTH LOGIN") == b"334 VXNlciBOYW1lAA=="
    assert client.cmd(b64(USER)) == b"334 UGFzc3dvcmQA"
    assert client.cmd(b64("wrong")) == INVALID
    assert client.cmd("AUTH LOGIN") == b"334 VXNlciBOYW1lAA=="
    assert client.cmd(b64(USER)) == b"334 UGFzc3dvcmQA"
    assert client.cmd(b64(PASSWORD)) == OK


def test_login_initial_response(plain_port: int, connect: Any) -> None:
    client = connect(plain_port)
    assert client.cmd("AUTH LOGIN " + b64(USER)) == b"334 UGFzc3dvcmQA"
    assert client.cmd(b64(PASSWORD)) == OK


def test_login_errors(plain_port: int, connect: Any) -> None:
    client = connect(plain_port)
    # A bad initial response: no password prompt.
    assert client.cmd("AUTH LOGIN %%%") == BAD_B64
    assert client.cmd("AUTH LOGIN") == b"334 VXNlciBOYW1lAA=="
    assert client.cmd("*") == ABORTED
    assert client.cmd("AUTH LOGIN") == b"334 VXNlciBOYW1lAA=="
    assert client.cmd(b64(USER)) == b"334 UGFzc3dvcmQA"
    assert client.cmd("*") == ABORTED
    assert client.cmd("AUTH LOGIN " + b64(USER)) == b"334 UGFzc3dvcmQA"
    assert client.cmd("not base64!") == BAD_B64
    # "=" is an empty user name, then the password prompt follows.
    assert client.cmd("AUTH LOGIN =") == b"334 UGFzc3dvcmQA"
    assert client.cmd(b64(PASSWORD)) == INVALID


def test_overlong_challenge_response(plain_port: int, connect: Any) -> None:
    client = connect(plain_port)
    assert client.cmd("AUTH LOGIN") == b"334 VXNlciBOYW1lAA=="
    # The 512-byte command limit does not apply to responses...
    assert client.cmd("A" * 900) == b"334 UGFzc3dvcmQA"
    assert client.cmd(b64(PASSWORD)) == INVALID
    # ...the 1001-byte line limit does.
    assert client.cmd("AUTH LOGIN") == b"334 VXNlciBOYW1lAA=="
    assert client.cmd("A" * 2000) == (
        b"500 Error: (ValueError) Separator is found, but chunk is longer than limit"
    )
    assert client.cmd("NOOP") == b"250 OK"


# -- Credential checking ------------------------------------------------------------------


def test_default_always_fails(serve: Any, connect: Any) -> None:
    assert login_always_fail("PLAIN", b"a", b"b") is False
    port = serve(Sink(), auth_require_tls=False)
    client = connect(port)
    assert client.cmd("AUTH PLAIN " + PLAIN_OK) == INVALID
    assert client.cmd("AUTH LOGIN " + b64(USER)) == b"334 UGFzc3dvcmQA"
    assert client.cmd(b64(PASSWORD)) == INVALID


def test_auth_callback(serve: Any, connect: Any) -> None:
    calls: list[tuple[str, bytes, bytes]] = []

    def callback(mechanism: str, login: bytes, password: bytes) -> bool:
        calls.append((mechanism, login, password))
        return password == PASSWORD.encode()

    handler = Sink()
    port = serve(handler, auth_require_tls=False, auth_callback=callback)
    client = connect(port)
    assert client.cmd("AUTH PLAIN " + PLAIN_BAD) == INVALID
    assert client.cmd("AUTH LOGIN " + b64(USER)) == b"334 UGFzc3dvcmQA"
    assert client.cmd(b64(PASSWORD)) == OK
    assert calls == [("PLAIN", b"user", b"wrong"), ("LOGIN", b"user", b"s3cret")]
    assert client.cmd("NOOP") == b"250 OK"
    session = handler.sessions[-1]
    assert session.authenticated is True
    assert session.auth_data == LoginPassword(login=b"user", password=b"s3cret")


def test_authenticator_wins_over_auth_callback(serve: Any, connect: Any) -> None:
    authenticator = Authenticator()
    handler = Sink()
    port = serve(handler, auth_require_tls=False, authenticator=authenticator,
                 auth_callback=lambda *args: pytest.fail("auth_callback called"))
    client = connect(port)
    assert client.cmd("AUTH PLAIN " + PLAIN_OK) == OK
    assert client.cmd("NOOP") == b"250 OK"
    server, session, envelope, mechanism, auth_data = authenticator.calls[0]
    assert isinstance(server, SMTP)
    assert session is handler.sessions[-1]
    assert isinstance(envelope, Envelope)
    assert mechanism == "PLAIN"
    assert auth_data == LoginPassword(b"user", b"s3cret")
    assert session.auth_data is auth_data
    assert session.login_data == b"user"


def test_failed_auth_leaves_authenticated_none(plain_server: Server, connect: Any) -> None:
    client = connect(plain_server.port)
    assert client.cmd("AUTH PLAIN " + PLAIN_BAD) == INVALID
    assert client.cmd("AUTH PLAIN") == b"334 "
    assert client.cmd("*") == ABORTED
    assert client.cmd("NOOP") == b"250 OK"
    session = plain_server.last.session
    assert session is not None
    assert session.authenticated is None
    assert session.auth_data is None


@pytest.mark.parametrize(
    "result, reply",
    [
        (AuthResult(success=False, handled=False, message="451 4.3.0 Try again later"),
         b"451 4.3.0 Try again later"),
        (AuthResult(success=True, message="235 2.7.0 Welcome"), b"235 2.7.0 Welcome"),
        (AuthResult(success=False, handled=False), INVALID),
        # A handled failure sends nothing: the next reply answers NOOP.
        (AuthResult(success=False, handled=True), b"250 OK"),
        (AuthResult(success=False), b"250 OK"),
        (AuthResult(success=True, handled=False), OK),
    ],
)
def test_authenticator_results(serve: Any, connect: Any, result: AuthResult,
                               reply: bytes) -> None:
    port = serve(Sink(), auth_require_tls=False, authenticator=Authenticator(result))
    client = connect(port)
    client.sock.sendall(f"AUTH PLAIN {PLAIN_OK}\r\nNOOP\r\n".encode())
    assert client.reply() == reply
    if reply != b"250 OK":
        assert client.reply() == b"250 OK"


def test_authenticator_legacy_result(serve: Any, connect: Any) -> None:
    def authenticator(*args: Any) -> Any:
        return "identity"

    handler = Sink()
    port = serve(handler, auth_require_tls=False, authenticator=authenticator)
    client = connect(port)
    assert client.cmd("AUTH PLAIN " + PLAIN_OK) == OK
    assert client.cmd("NOOP") == b"250 OK"
    assert handler.sessions[-1].authenticated is True
    assert handler.sessions[-1].auth_data == "identity"


def test_auth_result_class() -> None:
    with pytest.raises(TypeError):
        AuthResult()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        AuthResult(True)  # type: ignore[call-arg]
    result = AuthResult(success=True, auth_data=LoginPassword(b"u", b"p"))
    assert result.handled is True and result.message is None
    assert result == AuthResult(success=True, auth_data=LoginPassword(b"u", b"p"))
    assert result != AuthResult(success=True)
    assert repr(result) == "AuthResult(success=True, handled=True, message=None, auth_data=...)"
    with pytest.raises(TypeError):
        hash(result)
    result.success = False
    assert result.success is False
    login, password = LoginPassword(b"u", b"p")
    assert (login, password) == (b"u", b"p")


# -- Handler hooks and custom mechanisms ------------------------------------------------------


class Mechanisms(Sink):
    """Custom mechanisms on a handler, one per legacy return value."""

    async def auth_CRAM__MD5(self, server: SMTP, args: list[str]) -> AuthResult:
        response = await server.challenge_auth("<1.2@test>")
        if response is MISSING:
            return AuthResult(success=False, handled=True)
        assert isinstance(response, bytes)
        ok = response == b"user 0123456789abcdef"
        return AuthResult(success=ok, handled=False, auth_data=response)

    async def auth_LEGNONE(self, server: SMTP, args: list[str]) -> None:
        await server.push("535 legacy replied itself")

    async def auth_LEGFALSE(self, server: SMTP, args: list[str]) -> bool:
        return False

    async def auth_LEGMISSING(self, server: SMTP, args: list[str]) -> Any:
        return MISSING

    async def auth_LEGACY(self, server: SMTP, args: list[str]) -> str:
        return "identity-obj"

    async def auth_HANDLEDFAIL(self, server: SMTP, args: list[str]) -> AuthResult:
        await server.push("535 told you myself")
        return AuthResult(success=False, handled=True)

    async def auth_CUSTOMFAIL(self, server: SMTP, args: list[str]) -> AuthResult:
        return AuthResult(success=False, handled=False, message="535 custom fail")

    @auth_mechanism("x-weird")
    async def auth_whatever(self, server: SMTP, args: list[str]) -> AuthResult:
        # A raw (not base64-encoded) challenge, answered with "=".
        response = await server.challenge_auth("334 raw", encode_to_b64=False)
        return AuthResult(success=response == b"", message="235 weird ok", auth_data=args)

    async def auth_ARGS(self, server: SMTP, args: list[str]) -> AuthResult:
        return AuthResult(success=False, handled=False, message="535 " + " ".join(args))


def test_custom_mechanisms_on_handler(serve: Any, connect: Any) -> None:
    handler = Mechanisms()
    port = serve(handler, auth_require_tls=False)
    client = connect(port, ehlo=None)
    assert b"250-AUTH ARGS CRAM-MD5 CUSTOMFAIL HANDLEDFAIL LEGACY LEGFALSE LEGMISSING " \
           b"LEGNONE LOGIN PLAIN X-WEIRD\n" in client.cmd("EHLO c")
    assert client.cmd("AUTH CRAM-MD5") == b"334 " + base64.b64encode(b"<1.2@test>")
    assert client.cmd(b64("user 0123456789abcdef")) == OK
    assert client.cmd("NOOP") == b"250 OK"
    assert handler.sessions[-1].auth_data == b"user 0123456789abcdef"


@pytest.mark.parametrize(
    "command, replies",
    [
        ("AUTH LEGNONE", [b"535 legacy replied itself"]),
        ("AUTH LEGFALSE", [INVALID]),
        ("AUTH LEGMISSING", [INVALID]),
        ("AUTH HANDLEDFAIL", [b"535 told you myself"]),
        ("AUTH CUSTOMFAIL", [b"535 custom fail"]),
        ("AUTH ARGS xyz", [b"535 ARGS xyz"]),
        ("AUTH args", [b"535 ARGS"]),
        ("AUTH CRAM-MD5", [b"334 PDEuMkB0ZXN0Pg==", ABORTED]),
    ],
)
def test_custom_mechanism_failures(serve: Any, connect: Any, command: str,
                                   replies: list[bytes]) -> None:
    port = serve(Mechanisms(), auth_require_tls=False)
    client = connect(port)
    assert client.cmd(command) == replies[0]
    if len(replies) > 1:
        assert client.cmd("*") == replies[1]
    # Nothing else was sent: the next reply answers this NOOP.
    assert client.cmd("NOOP") == b"250 OK"


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_custom_mechanism_legacy_identity(serve: Any, connect: Any) -> None:
    handler = Mechanisms()
    port = serve(handler, auth_require_tls=False, auth_required=True)
    client = connect(port)
    assert client.cmd("AUTH LEGACY") == OK
    # Deviation (CHANGES.rst): the legacy identity authenticates the session.
    assert client.cmd("AUTH LEGACY") == b"503 Already authenticated"
    assert client.cmd("MAIL FROM:<a@example.com>") == b"250 OK"
    assert client.cmd("NOOP") == b"250 OK"
    session = handler.sessions[-1]
    assert session.authenticated is True
    assert session.auth_data == "identity-obj"
    assert session.login_data == "identity-obj"


def test_decorated_mechanism_and_raw_challenge(serve: Any, connect: Any) -> None:
    handler = Mechanisms()
    port = serve(handler, auth_require_tls=False)
    client = connect(port)
    assert client.cmd("AUTH x-weird") == b"334 334 raw"
    assert client.cmd("=") == b"235 weird ok"
    assert client.cmd("NOOP") == b"250 OK"
    assert handler.sessions[-1].auth_data == ["X-WEIRD"]


class ExtraSMTP(SMTP):
    async def auth_XTOKEN(self, server: SMTP, args: list[str]) -> AuthResult:
        assert server is self
        token = await self.challenge_auth(b"token?")
        return AuthResult(success=token == b"letmein", handled=False)

    @auth_mechanism("X-Decorated")
    async def auth_DECO(self, server: SMTP, args: list[str]) -> AuthResult:
        return AuthResult(success=True)


def test_custom_mechanisms_on_smtp_subclass(serve: Any, connect: Any) -> None:
    port = serve(Sink(), smtp_class=ExtraSMTP, auth_require_tls=False,
                 authenticator=Authenticator())
    client = connect(port, ehlo=None)
    assert b"250-AUTH LOGIN PLAIN X-DECORATED XTOKEN\n" in client.cmd("EHLO c")
    assert client.cmd("AUTH XTOKEN") == b"334 " + base64.b64encode(b"token?")
    assert client.cmd(b64("nope")) == INVALID
    assert client.cmd("AUTH XTOKEN") == b"334 dG9rZW4/"
    assert client.cmd(b64("letmein")) == OK
    client2 = connect(port)
    assert client2.cmd("AUTH x-decorated") == OK
    assert client2.cmd("AUTH PLAIN " + PLAIN_OK) == b"503 Already authenticated"


def test_handler_mechanism_replaces_builtin(serve: Any, connect: Any) -> None:
    class OwnPlain(Sink):
        async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
            return AuthResult(success=True, message="235 handler PLAIN")

    port = serve(OwnPlain(), auth_require_tls=False, authenticator=Authenticator())
    client = connect(port)
    assert client.cmd("AUTH PLAIN whatever") == b"235 handler PLAIN"


def test_auth_mechanism_name_validation() -> None:
    for bad in ("has space", "a.b", "a/b", "a\\b", ""):
        with pytest.raises(ValueError, match="Invalid AUTH mechanism name"):
            auth_mechanism(bad)
    with pytest.raises(ValueError, match="Invalid AUTH mechanism name: HAS SPACE"):
        auth_mechanism("has space")

    def auth_f() -> None:
        pass

    assert auth_mechanism("scram-sha-1")(auth_f) is auth_f
    assert auth_f.__auth_mechanism_name__ == "SCRAM-SHA-1"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "status, replies",
    [
        ("235 2.7.0 hooked", [b"235 2.7.0 hooked", b"250 OK"]),
        (None, [b"250 OK"]),  # the hook replied nothing
        (MISSING, [OK, b"250 OK"]),  # falls through to the mechanism
    ],
)
def test_handle_auth_hook(serve: Any, connect: Any, status: Any,
                          replies: list[bytes]) -> None:
    seen: list[list[str]] = []

    class Hook(Sink):
        async def handle_AUTH(self, server: SMTP, session: Session, envelope: Envelope,
                              args: list[str]) -> Any:
            seen.append(args)
            return status

    port = serve(Hook(), auth_require_tls=False, authenticator=Authenticator())
    client = connect(port)
    # An unknown mechanism never reaches the hook.
    assert client.cmd("AUTH NOPE") == b"504 5.5.4 Unrecognized authentication type"
    client.sock.sendall(f"AUTH PLAIN {PLAIN_OK}\r\nNOOP\r\n".encode())
    assert [client.reply() for _ in replies] == replies
    assert seen == [["PLAIN", PLAIN_OK]]


def test_auth_interact_deprecated(serve: Any, connect: Any) -> None:
    caught: list[warnings.WarningMessage] = []

    class Old(Sink):
        async def auth_OLD(self, server: SMTP, args: list[str]) -> AuthResult:
            with warnings.catch_warnings(record=True) as records:
                warnings.simplefilter("always")
                response = await server._auth_interact("334 " + b64("go"))
            caught.extend(records)
            return AuthResult(success=response == b"ok", handled=False)

    port = serve(Old(), auth_require_tls=False)
    client = connect(port)
    assert client.cmd("AUTH OLD") == b"334 " + b64("go").encode()
    assert client.cmd(b64("ok")) == OK
    assert [str(w.message) for w in caught if w.category is DeprecationWarning] == [
        "_auth_interact will be deprecated in version 2.0. "
        "Please use challenge_auth() instead."
    ]


# -- Registry exclusions ------------------------------------------------------------------


def test_exclude_one_mechanism(serve: Any, connect: Any) -> None:
    port = serve(Sink(), auth_require_tls=False, auth_exclude_mechanism=["PLAIN", "NOPE"],
                 authenticator=Authenticator())
    client = connect(port, ehlo=None)
    assert b"250-AUTH LOGIN\n" in client.cmd("EHLO c")
    assert client.cmd("AUTH PLAIN " + PLAIN_OK) == b"504 5.5.4 Unrecognized authentication type"
    assert client.cmd("AUTH LOGIN " + b64(USER)) == b"334 UGFzc3dvcmQA"


def test_exclude_all_mechanisms(serve: Any, connect: Any) -> None:
    port = serve(Sink(), auth_require_tls=False, auth_exclude_mechanism=("PLAIN", "LOGIN"))
    client = connect(port, ehlo=None)
    ehlo = client.cmd("EHLO c")
    assert b"AUTH" not in ehlo
    assert ehlo.endswith(b"250-8BITMIME\n250 HELP")
    assert client.cmd("AUTH PLAIN " + PLAIN_OK) == b"504 5.5.4 Unrecognized authentication type"


# -- auth_required ---------------------------------------------------------------------------


def test_auth_required(serve: Any, connect: Any) -> None:
    with pytest.warns(UserWarning, match="Requiring AUTH while not requiring TLS"):
        port = serve(Sink(), auth_require_tls=False, auth_required=True,
                     authenticator=Authenticator())
        # The warning is issued per connection, at construction.
        client = connect(port, ehlo=None)
    assert client.cmd("HELO c") == b"250 test.example"
    required = b"530 5.7.0 Authentication required"
    for command in ("HELP", "HELP MAIL", "VRFY a@example.com", "MAIL FROM:<a@example.com>",
                    "RCPT TO:<b@example.com>", "DATA"):
        assert client.cmd(command) == required, command
    for command, reply in (("NOOP", b"250 OK"), ("RSET", b"250 OK"),
                           ("EXPN a", b"502 EXPN not implemented")):
        assert client.cmd(command) == reply
    assert client.cmd("EHLO c").startswith(b"250-test.example")
    assert client.cmd("AUTH PLAIN " + PLAIN_BAD) == INVALID
    assert client.cmd("MAIL FROM:<a@example.com>") == required
    assert client.cmd("AUTH PLAIN " + PLAIN_OK) == OK
    # Authentication survives RSET and a new greeting.
    assert client.cmd("RSET") == b"250 OK"
    assert client.cmd("EHLO c").startswith(b"250-test.example")
    assert client.cmd("MAIL FROM:<a@example.com>") == b"250 OK"
    assert client.cmd("RCPT TO:<b@example.com>") == b"250 OK"
    assert client.cmd("DATA").startswith(b"354")
    assert client.cmd("Subject: x\r\n\r\nhi\r\n.") == b"250 OK"
    assert client.cmd("VRFY a@example.com").startswith(b"252")
    assert client.cmd("HELP").startswith(b"250 Supported commands:")


def test_auth_required_before_helo_check_order(serve: Any, connect: Any) -> None:
    port = serve(Sink(), auth_required=True, authenticator=Authenticator())
    client = connect(port, ehlo=None)
    # MAIL/RCPT/DATA: the HELO check comes first.
    assert client.cmd("MAIL FROM:<a@example.com>") == b"503 Error: send HELO first"
    assert client.cmd("HELP") == b"530 5.7.0 Authentication required"


def test_auth_required_log(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mail.log")
    loop = asyncio.new_event_loop()
    try:
        with pytest.warns(UserWarning):
            SMTP(Sink(), auth_required=True, auth_require_tls=False, loop=loop)
    finally:
        loop.close()
    assert "auth_required == True but auth_require_tls == False" in caplog.messages


def test_call_limit_applies_to_auth(serve: Any, connect: Any) -> None:
    port = serve(Sink(), auth_require_tls=False, command_call_limit={"AUTH": 2})
    client = connect(port)
    assert client.cmd("AUTH PLAIN " + PLAIN_OK) == INVALID
    assert client.cmd("AUTH PLAIN " + PLAIN_OK) == INVALID
    assert client.cmd("AUTH PLAIN " + PLAIN_OK) == b"421 4.7.0 AUTH sent too many times"
    assert client.file.readline() == b""


# -- Real clients ------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("initial_response_ok", [True, False])
def test_smtplib_auth(serve: Any, mechanism: str, initial_response_ok: bool) -> None:
    handler = Sink()
    port = serve(handler, auth_require_tls=False, authenticator=Authenticator())
    with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as client:
        client.ehlo()
        client.user, client.password = USER, "wrong"
        authobject = getattr(client, "auth_" + mechanism.lower())
        with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
            client.auth(mechanism, authobject, initial_response_ok=initial_response_ok)
        assert failure.value.smtp_code == 535
        client.password = PASSWORD
        code, _ = client.auth(mechanism, authobject, initial_response_ok=initial_response_ok)
        assert code == 235
        client.noop()
    assert handler.sessions[-1].auth_data == LoginPassword(b"user", b"s3cret")


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_aiosmtplib_login(serve: Any) -> None:
    aiosmtplib = pytest.importorskip("aiosmtplib")
    port = serve(Sink(), auth_require_tls=False, auth_required=True,
                 authenticator=Authenticator())

    async def talk() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False,
                                 use_tls=False, timeout=IO_TIMEOUT)
        await client.connect()
        with pytest.raises(aiosmtplib.SMTPSenderRefused):
            await client.sendmail("a@example.com", ["b@example.com"], b"x\r\n")
        await client.login(USER, PASSWORD)
        errors, _ = await client.sendmail("a@example.com", ["b@example.com"], b"x\r\n")
        assert errors == {}
        await client.quit()

    asyncio.run(talk())


# -- AUTH over TLS with the default auth_require_tls ----------------------------------------


def test_auth_after_starttls(serve: Any, connect: Any,
                             tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls_contexts
    handler = Sink()
    port = serve(handler, tls_context=server_context, authenticator=Authenticator())
    with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN " + PLAIN_OK)[0] == 538
        client.starttls(context=client_context)
        client.ehlo()
        assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
        client.login(USER, PASSWORD)
        client.noop()
    assert handler.sessions[-1].authenticated is True


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_starttls_forgets_authentication(
    serve: Any, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = tls_contexts
    port = serve(Sink(), tls_context=server_context, auth_require_tls=False,
                 auth_required=True, authenticator=Authenticator())
    with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as client:
        client.ehlo()
        assert client.docmd("AUTH", "PLAIN " + PLAIN_OK) == (235, OK[4:])
        assert client.docmd("AUTH", "PLAIN " + PLAIN_OK)[0] == 503
        client.starttls(context=client_context)
        client.ehlo()
        # A new session: authenticate again.
        assert client.docmd("MAIL", "FROM:<a@example.com>") == (
            530, b"5.7.0 Authentication required"
        )
        assert client.docmd("AUTH", "PLAIN " + PLAIN_OK) == (235, OK[4:])
        assert client.docmd("MAIL", "FROM:<a@example.com>") == (250, b"OK")


def test_implicit_tls_auth(serve: Any, connect: Any,
                           tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls_contexts
    port = serve(Sink(), ssl_context=server_context, tls_context=server_context,
                 authenticator=Authenticator(), auth_required=True)
    client = connect(port, context=client_context, ehlo=None)
    assert b"250-AUTH LOGIN PLAIN\n" in client.cmd("EHLO c")
    assert client.cmd("AUTH PLAIN " + PLAIN_OK) == OK
    assert client.cmd("STARTTLS") == b"503 5.5.1 Error: TLS already active"
    assert client.cmd("MAIL FROM:<a@example.com>") == b"250 OK"


def test_auth_failures_unlimited_by_default(plain_server: Server) -> None:
    with plain_server.client() as c:
        assert c.multi("EHLO c")[-1] == "250 HELP"
        for _ in range(30):
            assert c.cmd("AUTH PLAIN " + b64(f"\0{USER}\0wrong")).startswith("535 ")


def test_auth_failure_limit(lt: LoopThread, start: ServerFactory) -> None:
    server = start(Sink(), loop=lt.loop, auth_require_tls=False, authenticator=Authenticator(),
                   auth_failure_limit=3)
    with server.client() as c:
        assert c.multi("EHLO c")[-1] == "250 HELP"
        for _ in range(3):
            assert c.cmd("AUTH PLAIN " + b64(f"\0{USER}\0wrong")) == (
                "535 5.7.8 Authentication credentials invalid"
            )
        # Even the right password: the connection has used up its attempts.
        assert c.cmd("AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}")) == (
            "421 4.7.0 Too many failed authentication attempts, goodbye."
        )
        assert c.is_closed()


def test_auth_failure_limit_counts_failures_only(lt: LoopThread, start: ServerFactory) -> None:
    server = start(Sink(), loop=lt.loop, auth_require_tls=False, authenticator=Authenticator(),
                   auth_failure_limit=1)
    with server.client() as c:
        assert c.multi("EHLO c")[-1] == "250 HELP"
        assert c.cmd("AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}")).startswith("235 ")


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_auth_failure_limit_must_be_positive(bad: Any) -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="auth_failure_limit must be None or a positive int"):
            SMTP(None, hostname="h", auth_failure_limit=bad, loop=loop)
    finally:
        loop.close()
