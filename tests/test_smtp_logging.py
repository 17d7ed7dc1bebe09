"""No secret reaches the logs (docs/auth.rst), and the log helpers.

Every record of every logger is captured at DEBUG while real clients run
complete AUTH exchanges over loopback; then no record may contain the
password (or bearer token, or CRAM-MD5 digest), in clear or base64-encoded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import smtplib
from typing import Any

import pytest

from aiosmtpd.smtp import (
    SMTP,
    AuthResult,
    CramMD5Response,
    Envelope,
    LoginPassword,
    OAuthBearerCredentials,
    Session,
    XOAuth2Credentials,
    sanitize,
    sanitized_log,
)
from tests._server import IO_TIMEOUT, LineClient, LoopThread, Server, ServerFactory, serving

USER = "alice"
PASSWORD = "Tr0ub4dor&3-horse"  # long enough that no base64 alignment hides it


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def secret_forms(secret: str = PASSWORD) -> list[str]:
    """The secret as it may appear in a record: clear, or base64 of any
    blob that carries it (at each of the three alignments)."""
    forms = {secret, repr(secret.encode())[2:-1], b64(secret.encode())}
    for prefix in (b"", b"\0", b"\0" + USER.encode() + b"\0", b"x", b"xy"):
        encoded = b64(prefix + secret.encode())
        # Skip the characters that also depend on the prefix.
        start = (len(prefix) + 2) // 3 * 4
        forms.add(encoded[start: start + 12])
    return sorted(f for f in forms if f)


class Handler:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
          auth_data: Any) -> AuthResult:
    ok = auth_data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


@pytest.fixture
def server(lt: LoopThread, start: ServerFactory) -> Server:
    return start(Handler(), loop=lt.loop, auth_require_tls=False, authenticator=check)


def record_texts(records: list[logging.LogRecord]) -> list[str]:
    """Everything a formatter could print for each record."""
    texts = []
    formatter = logging.Formatter()
    for record in records:
        texts.append(formatter.format(record))
        texts.append(repr(record.msg))
        texts.append(repr(record.args))
    return texts


def assert_no_secret(records: list[logging.LogRecord], secret: str = PASSWORD) -> None:
    assert records, "nothing was logged: the capture is broken"
    texts = record_texts(records)
    for form in secret_forms(secret):
        leaks = [t for t in texts if form in t]
        assert not leaks, f"{form!r} logged: {leaks}"


def run_exchanges(port: int) -> None:
    plain = b64(f"\0{USER}\0{PASSWORD}".encode())
    client = LineClient(port)
    assert client.cmd("EHLO c").startswith(b"250-")
    # PLAIN with and without initial response, failing and succeeding.
    assert client.cmd("AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}x".encode())).startswith(b"535")
    assert client.cmd("AUTH PLAIN") == b"334 "
    assert client.cmd(b64(f"\0{USER}\0{PASSWORD}x".encode())).startswith(b"535")
    assert client.cmd("AUTH PLAIN") == b"334 "
    assert client.cmd(plain).startswith(b"235")
    client.close()
    # LOGIN with and without initial response.
    for initial in (True, False):
        client = LineClient(port)
        assert client.cmd("EHLO c").startswith(b"250-")
        if initial:
            assert client.cmd("AUTH LOGIN " + b64(USER.encode())) == b"334 UGFzc3dvcmQA"
        else:
            assert client.cmd("AUTH LOGIN") == b"334 VXNlciBOYW1lAA=="
            assert client.cmd(b64(USER.encode())) == b"334 UGFzc3dvcmQA"
        assert client.cmd(b64(PASSWORD.encode())).startswith(b"235")
        client.close()
    # Mistyped secrets: undecodable blobs, as initial response and as answer.
    client = LineClient(port)
    assert client.cmd("EHLO c").startswith(b"250-")
    broken = PASSWORD + "!"
    assert client.cmd("AUTH PLAIN " + broken) == b"501 5.5.2 Can't decode base64"
    assert client.cmd("AUTH LOGIN " + broken) == b"501 5.5.2 Can't decode base64"
    assert client.cmd("AUTH LOGIN " + b64(USER.encode())) == b"334 UGFzc3dvcmQA"
    assert client.cmd(broken) == b"501 5.5.2 Can't decode base64"
    assert client.cmd("AUTH PLAIN") == b"334 "
    assert client.cmd(broken) == b"501 5.5.2 Can't decode base64"
    assert client.cmd("QUIT") == b"221 Bye"
    client.close()
    # smtplib, which sends PLAIN with an initial response.
    with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as smtp:
        smtp.login(USER, PASSWORD)
        smtp.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nhi\r\n")


def test_no_secret_in_any_log_record(server: Server,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # root and every logger, every level
    run_exchanges(server.port)
    names = {r.name for r in caplog.records}
    assert "mail.log" in names
    # The exchanges were really logged, redacted.
    messages = caplog.messages
    assert any("AUTH PLAIN ********" in m for m in messages)
    assert any("auth_PLAIN returned AuthResult(" in m for m in messages)
    assert "Using builtin auth_ hook for 'LOGIN'" in messages
    assert any("can't decode base64" in m for m in messages)
    assert_no_secret(caplog.records)


def sasl_check(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
               auth_data: Any) -> AuthResult:
    if isinstance(auth_data, CramMD5Response):
        ok = auth_data.verify(PASSWORD)
    else:
        assert isinstance(auth_data, (XOAuth2Credentials, OAuthBearerCredentials))
        ok = auth_data.token == PASSWORD.encode()
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


def run_sasl_exchanges(port: int) -> list[str]:
    """CRAM-MD5, XOAUTH2 and OAUTHBEARER, PASSWORD being the CRAM-MD5 secret
    and the bearer token; returns the CRAM-MD5 digests sent."""
    digests = []
    blobs = {
        "XOAUTH2": lambda token: b64(b"user=%s\x01auth=Bearer %s\x01\x01" % (USER.encode(), token)),
        "OAUTHBEARER": lambda token: b64(b"n,a=%s,\x01auth=Bearer %s\x01\x01" % (USER.encode(),
                                                                                 token)),
    }
    for secret, reply in ((PASSWORD + "x", b"535"), (PASSWORD, b"235")):
        client = LineClient(port)
        assert client.cmd("EHLO c").startswith(b"250-")
        challenge = client.cmd("AUTH CRAM-MD5")
        assert challenge.startswith(b"334 ")
        digest = hmac.new(secret.encode(), base64.b64decode(challenge[4:]), hashlib.md5)
        digests.append(digest.hexdigest())
        answer = b64(USER.encode() + b" " + digests[-1].encode())
        assert client.cmd(answer).startswith(reply)
        client.close()
    for mechanism, make in blobs.items():
        blob, wrong = make(PASSWORD.encode()), make(PASSWORD.encode() + b"x")
        client = LineClient(port)
        assert client.cmd("EHLO c").startswith(b"250-")
        # A wrong token (the error challenge, then 535), both ways.
        for command, response in ((f"AUTH {mechanism} {wrong}", None),
                                  (f"AUTH {mechanism}", wrong)):
            reply = client.cmd(command)
            if response is not None:
                assert reply == b"334 "
                reply = client.cmd(response)
            assert reply.startswith(b"334 ") and len(reply) > 4
            assert client.cmd("" if mechanism == "XOAUTH2" else "AQ==").startswith(b"535")
        # A mistyped (undecodable) blob.
        assert client.cmd(f"AUTH {mechanism} {blob}!") == b"501 5.5.2 Can't decode base64"
        assert client.cmd(f"AUTH {mechanism}") == b"334 "
        assert client.cmd(blob + "!") == b"501 5.5.2 Can't decode base64"
        # The right token, as initial response and as answer.
        assert client.cmd(f"AUTH {mechanism} {blob}").startswith(b"235")
        client.close()
        client = LineClient(port)
        assert client.cmd("EHLO c").startswith(b"250-")
        assert client.cmd(f"AUTH {mechanism}") == b"334 "
        assert client.cmd(blob).startswith(b"235")
        client.close()
    return digests


def test_no_secret_in_any_log_record_optional_mechanisms(
    lt: LoopThread, start: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = start(Handler(), loop=lt.loop, auth_require_tls=False, authenticator=sasl_check,
                   auth_enable_mechanism=["CRAM-MD5", "XOAUTH2", "OAUTHBEARER"])
    caplog.set_level(logging.DEBUG)
    digests = run_sasl_exchanges(server.port)
    messages = caplog.messages
    for mechanism in ("CRAM-MD5", "XOAUTH2", "OAUTHBEARER"):
        assert f"Using builtin auth_ hook for {mechanism!r}" in messages
        assert any(f"auth_{mechanism} returned AuthResult(" in m for m in messages)
    assert any("AUTH XOAUTH2 ********" in m for m in messages)
    assert any("AUTH OAUTHBEARER ********" in m for m in messages)
    assert_no_secret(caplog.records)
    for digest in digests:
        assert_no_secret(caplog.records, digest)


def test_secret_detection_can_fail(caplog: pytest.LogCaptureFixture) -> None:
    # The checker itself finds a leak, in each form it looks for.
    caplog.set_level(logging.DEBUG)
    for leaked in (PASSWORD, b64(f"\0{USER}\0{PASSWORD}".encode()), b64(PASSWORD.encode())):
        caplog.clear()
        logging.getLogger("mail.log").debug("oops %r", leaked.encode())
        with pytest.raises(AssertionError, match="logged"):
            assert_no_secret(caplog.records)
    digest = "b913a602c7eda7a495b4e6e7334d3890"
    for leaked in (digest, b64(f"{USER} {digest}".encode()),
                   b64(f"user=x\x01auth=Bearer {digest}".encode())):
        caplog.clear()
        logging.getLogger("mail.log").debug("oops %r", leaked.encode())
        with pytest.raises(AssertionError, match="logged"):
            assert_no_secret(caplog.records, digest)


def test_log_client_response_does_log(lt: LoopThread, caplog: pytest.LogCaptureFixture) -> None:
    """The opt-in ``log_client_response=True`` is the one way responses reach
    the log (with two warnings)."""
    class Chatty(Handler):
        async def auth_CHATTY(self, server: SMTP, args: list[str]) -> AuthResult:
            response = await server.challenge_auth("", log_client_response=True)
            return AuthResult(success=response == PASSWORD.encode(), handled=False)

    caplog.set_level(logging.DEBUG)
    # Recorded here, not in the server's thread: warnings.catch_warnings()
    # swaps module-wide state and is not safe in two threads at once.
    with pytest.warns(UserWarning) as records:
        with serving(lt, Chatty(), loop=lt.loop, auth_require_tls=False) as srv:
            client = LineClient(srv.port)
            client.cmd("EHLO c")
            assert client.cmd("AUTH CHATTY") == b"334 "
            assert client.cmd(b64(PASSWORD.encode())).startswith(b"235")
            client.close()
    ours = ("AUTH interaction", "Sensitive information")
    caught = [str(w.message) for w in records if str(w.message).startswith(ours)]
    assert caught == ["AUTH interaction logging is enabled!",
                      "Sensitive information might be leaked!"]
    assert "Using handler auth_ hook for 'CHATTY'" in caplog.messages
    with pytest.raises(AssertionError, match="logged"):
        assert_no_secret(caplog.records)


def test_abort_logged_as_warning(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mail.log")
    client = LineClient(server.port)
    client.cmd("EHLO c")
    assert client.cmd("AUTH LOGIN") == b"334 VXNlciBOYW1lAA=="
    assert client.cmd("*") == b"501 5.7.0 Auth aborted"
    client.close()
    warnings_ = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "mail.log"]
    assert [r.getMessage().endswith(" aborted AUTH with '*'") for r in warnings_] == [True]


def test_available_mechanisms_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Extra(Handler):
        async def auth_XTRA(self, server: SMTP, args: list[str]) -> AuthResult:
            return AuthResult(success=False)

    caplog.set_level(logging.INFO, logger="mail.log")
    loop = asyncio.new_event_loop()
    try:
        SMTP(Extra(), loop=loop)
    finally:
        loop.close()
    assert "Available AUTH mechanisms: LOGIN(builtin) PLAIN(builtin) XTRA" in caplog.messages


# -- sanitize / sanitized_log / reprs ---------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (b"AUTH PLAIN Zm9vYmFy\r\n", b"AUTH PLAIN ********\r\n"),
        (b"  auth login Ym9i extra\r\n", b"  auth login ********"),
        (b"AUTH PLAIN Zm9vYmFy", b"AUTH PLAIN ********"),
        (b"AuTh\tX-MECH\tc2VjcmV0\r\n", b"AuTh\tX-MECH\t********\r\n"),
        (b"AUTH PLAIN\r\n", b"AUTH PLAIN\r\n"),
        (b"AUTH PLAIN \r\n", b"AUTH PLAIN \r\n"),
        (b"MAIL FROM:<a@b>\r\n", b"MAIL FROM:<a@b>\r\n"),
        (b"NOOP AUTH PLAIN Zm9v\r\n", b"NOOP AUTH PLAIN Zm9v\r\n"),
        (b"", b""),
    ],
)
def test_sanitize(text: bytes, expected: bytes) -> None:
    assert sanitize(text) == expected


def test_sanitized_log() -> None:
    calls: list[tuple[Any, ...]] = []

    def sink(msg: str, *args: Any, **kwargs: Any) -> None:
        calls.append((msg, args, kwargs))

    sanitized_log(sink, "%r %s %r", b"AUTH PLAIN Zm9v\r\n", "AUTH PLAIN Zm9v", 3, extra={"a": 1})
    assert calls == [("%r %s %r", (b"AUTH PLAIN ********\r\n", "AUTH PLAIN Zm9v", 3),
                      {"extra": {"a": 1}})]


def test_reprs_hide_secrets() -> None:
    data = LoginPassword(login=b"alice", password=PASSWORD.encode())
    assert repr(data) == str(data) == "LoginPassword(login='alice', password=...)"
    # A non-UTF-8 login does not make repr raise.
    assert repr(LoginPassword(b"\xff", b"x")) == "LoginPassword(login='\\xff', password=...)"
    result = AuthResult(success=True, auth_data=data)
    assert PASSWORD not in repr(result)
    assert repr(result).endswith("auth_data=...)")


def test_login_data_deprecation_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mail.log")
    loop = asyncio.new_event_loop()
    loop.close()
    session = Session(loop)
    assert session.login_data is None
    assert [r.getMessage() for r in caplog.records if r.name == "mail.log"] == [
        "Session.login_data is deprecated and will be removed in version 2.0"
    ]


def test_quit_is_not_logged_as_a_lost_connection(
    start: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A session that ends with QUIT was served to the end: the log says
    the connection was lost (when the close comes back) but never that a
    command was cut short."""
    server = start()
    with caplog.at_level(logging.INFO, logger="mail.log"):
        with server.client() as c:
            assert c.cmd("NOOP") == "250 OK"
            assert c.cmd("QUIT") == "221 Bye"
            assert c.is_closed()
        assert wait_closed(server)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.endswith("connection lost") for m in messages), messages
    assert not any(m.endswith("Connection lost during _handle_client()") for m in messages)


def wait_closed(server: Server) -> bool:
    from tests._server import wait_for

    return wait_for(lambda: server.last.transport is None, server.lt)
