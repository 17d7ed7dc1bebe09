"""The optional AUTH mechanisms CRAM-MD5, XOAUTH2 and OAUTHBEARER (docs/auth.rst).

Their parsers are pure (``aiosmtpd/_sasl.py``) and tested first, with known
answers from the specifications and hypothesis properties; then the
exchanges over loopback with raw sockets (every reply byte), and with real
clients: smtplib, aiosmtplib, swaks and curl (each skipped, with the reason,
when absent).  With the defaults nothing changes: only PLAIN and LOGIN.
"""

from __future__ import annotations

import asyncio
import base64
import email.base64mime
import hashlib
import hmac
import json
import logging
import re
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from aiosmtpd._sasl import (
    MalformedResponse,
    cram_md5_challenge,
    parse_cram_md5,
    parse_oauthbearer,
    parse_xoauth2,
)
from aiosmtpd.smtp import (
    SMTP,
    AuthResult,
    CramMD5Response,
    Envelope,
    LoginPassword,
    OAuthBearerCredentials,
    Session,
    XOAuth2Credentials,
)
from tests._server import IO_TIMEOUT, LineClient, Recorder

USER, SECRET, TOKEN = "alice", "correct horse", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
ALL = ["CRAM-MD5", "XOAUTH2", "OAUTHBEARER"]

OK = b"235 2.7.0 Authentication successful"
INVALID = b"535 5.7.8 Authentication credentials invalid"
ABORTED = b"501 5.7.0 Auth aborted"
BAD_B64 = b"501 5.5.2 Can't decode base64"
NO_SPLIT = b"501 5.5.2 Can't split auth value"
NO_IR = b"501 5.5.2 Initial response not allowed"
UNKNOWN = b"504 5.5.4 Unrecognized authentication type"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- Client-side encodings, written from the specifications -------------------------------


def cram_md5_answer(user: bytes, secret: bytes, challenge: bytes) -> bytes:
    """RFC 2195: ``user SP hex(HMAC-MD5(secret, challenge))``."""
    return user + b" " + hmac.new(secret, challenge, hashlib.md5).hexdigest().encode()


def xoauth2_blob(user: bytes, token: bytes) -> bytes:
    """Google's XOAUTH2 initial client response."""
    return b"user=" + user + b"\x01auth=Bearer " + token + b"\x01\x01"


def saslname(name: bytes) -> bytes:
    """RFC 5801: "," as "=2C", "=" as "=3D"."""
    return name.replace(b"=", b"=3D").replace(b",", b"=2C")


def oauthbearer_blob(token: bytes, authzid: Optional[bytes] = None,
                     host: Optional[bytes] = None, port: Optional[int] = None) -> bytes:
    """RFC 7628 section 3.1 client response."""
    header = b"n," + (b"a=" + saslname(authzid) if authzid is not None else b"") + b","
    pairs = b""
    if host is not None:
        pairs += b"host=" + host + b"\x01"
    if port is not None:
        pairs += b"port=%d\x01" % port
    return header + b"\x01" + pairs + b"auth=Bearer " + token + b"\x01\x01"


# -- Pure parsing: known answers ------------------------------------------------------------


def test_cram_md5_rfc2195_example() -> None:
    # RFC 2195 section 2: user "tim", secret "tanstaaftanstaaf".
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    assert b64(challenge) == "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
    response = base64.b64decode("dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw")
    parsed = parse_cram_md5(response, challenge)
    assert parsed == CramMD5Response(
        login=b"tim", challenge=challenge, digest=b"b913a602c7eda7a495b4e6e7334d3890"
    )
    assert parsed.verify("tanstaaftanstaaf") is True
    assert parsed.verify(b"tanstaaftanstaaf") is True
    assert parsed.verify("tanstaaftanstaaF") is False
    assert parsed.verify("") is False


def test_cram_md5_parse_rules() -> None:
    digest = "B913A602C7EDA7A495B4E6E7334D3890"
    # Upper-case hex is accepted and kept in lower case; the user name may hold
    # spaces (the digest follows the last one).
    parsed = parse_cram_md5(f"tim smith {digest}".encode(), b"<c>")
    assert parsed.login == b"tim smith"
    assert parsed.digest == digest.lower().encode()
    for bad in (b"", b"tim", b" " + digest.encode(), b"tim " + digest.encode()[:-1],
                b"tim " + digest.encode() + b"0", b"tim " + digest.encode()[:-1] + b"g",
                b"tim " + digest.encode() + b" ", b"tim\t" + digest.encode()):
        with pytest.raises(MalformedResponse):
            parse_cram_md5(bad, b"<c>")


def test_cram_md5_challenges_are_unique() -> None:
    challenges = {cram_md5_challenge("mx.example.org") for _ in range(1000)}
    assert len(challenges) == 1000
    for challenge in challenges:
        assert re.fullmatch(rb"<\d+\.\d+@mx\.example\.org>", challenge)


def test_xoauth2_google_example() -> None:
    blob = base64.b64decode(
        "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52"
        "YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
    )
    assert parse_xoauth2(blob) == XOAuth2Credentials(login=b"someuser@example.com",
                                                     token=TOKEN.encode())


def test_xoauth2_parse_rules() -> None:
    # The scheme is case-insensitive; unknown keys are ignored; the user may be empty.
    assert parse_xoauth2(b"user=u\x01auth=bearer t\x01\x01").token == b"t"
    assert parse_xoauth2(b"auth=Bearer t\x01user=\x01x=1\x01\x01") == (
        XOAuth2Credentials(login=b"", token=b"t")
    )
    for bad in (
        b"", b"\x01", b"\x01\x01",
        b"user=u\x01auth=Bearer t\x01",  # one final ^A
        b"user=u\x01auth=Bearer t",
        b"user=u\x01auth=Bearer t\x01\x01\x01",
        b"user=u\x01\x01auth=Bearer t\x01\x01",  # empty field
        b"auth=Bearer t\x01\x01",  # no user
        b"user=u\x01\x01",  # no auth
        b"user=u\x01auth=Basic dTpw\x01\x01",
        b"user=u\x01auth=Bearer\x01\x01", b"user=u\x01auth=Bearer \x01\x01",
        b"user=u\x01auth=Bearer t\x01user=v\x01\x01",  # a key twice
        b"user=u\x01auth\x01\x01", b"user=u\x01=x\x01auth=Bearer t\x01\x01",
        b"user=u\x01k-1=x\x01auth=Bearer t\x01\x01",  # keys are letters only
    ):  # fmt: skip
        with pytest.raises(MalformedResponse):
            parse_xoauth2(bad)


def test_oauthbearer_rfc7628_example() -> None:
    # RFC 7628 section 4.1.
    blob = base64.b64decode(
        "bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1"
        "dGg9QmVhcmVyIHZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2c9PQEB"
    )
    assert parse_oauthbearer(blob) == OAuthBearerCredentials(
        login=b"user@example.com", token=b"vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==",
        host=b"server.example.com", port=143,
    )


def test_oauthbearer_parse_rules() -> None:
    assert parse_oauthbearer(b"n,,\x01auth=Bearer t\x01\x01") == (
        OAuthBearerCredentials(login=None, token=b"t")
    )
    # "y": the client supports channel binding, this server does not.
    assert parse_oauthbearer(b"y,a=a=3Db=2Cc,\x01auth=Bearer t\x01x=y\x01\x01").login == b"a=b,c"
    for bad in (
        b"\x01",  # the answer to an error challenge is not a first response
        b"n,,\x01\x01", b"n,,\x01auth=Bearer t\x01",
        b"p=tls-unique,,\x01auth=Bearer t\x01\x01",  # no channel binding
        b"F,n,,\x01auth=Bearer t\x01\x01", b"n,\x01auth=Bearer t\x01\x01",
        b"n,,,\x01auth=Bearer t\x01\x01", b"n,u=x,\x01auth=Bearer t\x01\x01",
        b"n,a=x=2,\x01auth=Bearer t\x01\x01", b"n,a=x=,\x01auth=Bearer t\x01\x01",
        b"n,,\x01port=x\x01auth=Bearer t\x01\x01", b"n,,\x01port=65536\x01auth=Bearer t\x01\x01",
        b"n,,\x01port=\x01auth=Bearer t\x01\x01", b"n,,\x01port=-1\x01auth=Bearer t\x01\x01",
        b"n,,\x01host=a\x01host=b\x01auth=Bearer t\x01\x01",
        b"n,,\x01auth=MAC t\x01\x01", b"n,,\x01user=u\x01\x01",
    ):  # fmt: skip
        with pytest.raises(MalformedResponse):
            parse_oauthbearer(bad)


def test_reprs_hide_secrets() -> None:
    cram = CramMD5Response(login=b"tim", challenge=b"<1.2@h>", digest=b"b913a602" * 4)
    assert repr(cram) == str(cram) == (
        "CramMD5Response(login='tim', challenge='<1.2@h>', digest=...)"
    )
    x = XOAuth2Credentials(login=b"\xffu", token=b"s3cret")
    assert repr(x) == str(x) == "XOAuth2Credentials(login='\\xffu', token=...)"
    o = OAuthBearerCredentials(login=None, token=b"s3cret", host=b"h", port=25)
    assert repr(o) == "OAuthBearerCredentials(login=None, token=..., host='h', port=25)"
    for obj in (cram, x, o):
        assert "s3cret" not in repr(obj) and "b913a602" not in repr(obj)
        with pytest.raises(AttributeError):  # frozen
            obj.login = b"x"  # type: ignore[misc]


# -- Pure parsing: properties ----------------------------------------------------------------

no_kvsep = st.binary(max_size=40).filter(lambda b: b"\x01" not in b)
# RFC 6750 b64token.
tokens = st.from_regex(rb"[A-Za-z0-9\-._~+/]+=*", fullmatch=True)


@given(user=no_kvsep, token=tokens)
def test_xoauth2_round_trip(user: bytes, token: bytes) -> None:
    assert parse_xoauth2(xoauth2_blob(user, token)) == XOAuth2Credentials(login=user,
                                                                          token=token)


@given(token=tokens, authzid=st.none() | no_kvsep, host=st.none() | no_kvsep,
       port=st.none() | st.integers(0, 65535))
def test_oauthbearer_round_trip(token: bytes, authzid: Optional[bytes],
                                host: Optional[bytes], port: Optional[int]) -> None:
    parsed = parse_oauthbearer(oauthbearer_blob(token, authzid, host, port))
    assert parsed == OAuthBearerCredentials(login=authzid, token=token, host=host, port=port)


@given(user=st.binary(min_size=1, max_size=40).filter(lambda b: b[-1:] != b" "),
       secret=st.binary(max_size=40), challenge=st.binary(max_size=60))
def test_cram_md5_round_trip(user: bytes, secret: bytes, challenge: bytes) -> None:
    parsed = parse_cram_md5(cram_md5_answer(user, secret, challenge), challenge)
    assert parsed.login == user and parsed.challenge == challenge
    assert parsed.verify(secret)
    assert not parsed.verify(secret + b"x")


@given(data=st.binary(max_size=200))
@example(data=b"\x01")
@example(data=b"n,,\x01auth=Bearer \x01\x01")
@example(data=b"n,a=\xff=3D,\x01port=99999999999999999999\x01auth=Bearer t\x01\x01")
def test_arbitrary_bytes_raise_only_malformed(data: bytes) -> None:
    for parse in (parse_xoauth2, parse_oauthbearer, lambda d: parse_cram_md5(d, b"<c>")):
        try:
            parse(data)
        except MalformedResponse:
            pass


# -- Over loopback -------------------------------------------------------------------------------


class Authenticator:
    """Accepts USER with SECRET (PLAIN, LOGIN, CRAM-MD5) or TOKEN (bearer)."""

    def __init__(self, result: Optional[AuthResult] = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.result = result

    def __call__(self, server: SMTP, session: Session, envelope: Envelope,
                 mechanism: str, auth_data: Any) -> AuthResult:
        self.calls.append((mechanism, auth_data))
        if self.result is not None:
            return self.result
        if isinstance(auth_data, LoginPassword):
            ok = auth_data == (USER.encode(), SECRET.encode())
        elif isinstance(auth_data, CramMD5Response):
            ok = auth_data.login == USER.encode() and auth_data.verify(SECRET)
        else:
            assert isinstance(auth_data, (XOAuth2Credentials, OAuthBearerCredentials))
            ok = auth_data.token == TOKEN.encode()
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    @property
    def mechanisms(self) -> list[str]:
        return [mechanism for mechanism, _ in self.calls]


class Handler(Recorder):
    async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope,
                          arg: Optional[str]) -> str:
        self.sessions.append(session)
        return "250 OK"


@pytest.fixture
def connect() -> Iterator[Callable[..., LineClient]]:
    clients: list[LineClient] = []

    def connect(port: int, *, ehlo: bool = True) -> LineClient:
        client = LineClient(port)
        clients.append(client)
        if ehlo:
            assert client.cmd("EHLO c").startswith(b"250-")
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def authenticator() -> Authenticator:
    return Authenticator()


@pytest.fixture
def handler() -> Handler:
    return Handler()


@pytest.fixture
def port(serve: Any, handler: Handler, authenticator: Authenticator) -> int:
    """Every optional mechanism enabled, AUTH allowed without TLS."""
    return int(serve(handler, auth_require_tls=False, authenticator=authenticator,
                     auth_enable_mechanism=ALL))


def challenge_of(reply: bytes) -> bytes:
    assert reply.startswith(b"334 "), reply
    return base64.b64decode(reply[4:], validate=True)


# -- Defaults and the switch ------------------------------------------------------------------


def test_defaults_unchanged(serve: Any, connect: Any) -> None:
    port = serve(Handler(), auth_require_tls=False, authenticator=Authenticator())
    client = connect(port, ehlo=False)
    assert client.cmd("EHLO c") == (
        b"250-test.example\n250-SIZE 33554432\n250-8BITMIME\n250-AUTH LOGIN PLAIN\n250 HELP"
    )
    for mechanism in ALL:
        assert client.cmd("AUTH " + mechanism) == UNKNOWN
        assert client.cmd("AUTH " + mechanism + " " + b64(b"x")) == UNKNOWN


def test_enabled_all(port: int, connect: Any) -> None:
    client = connect(port, ehlo=False)
    assert client.cmd("EHLO c") == (
        b"250-test.example\n250-SIZE 33554432\n250-8BITMIME\n"
        b"250-AUTH CRAM-MD5 LOGIN OAUTHBEARER PLAIN XOAUTH2\n250 HELP"
    )


@pytest.mark.parametrize(
    "options, line",
    [
        ({"auth_enable_mechanism": "xoauth2"}, b"250-AUTH LOGIN PLAIN XOAUTH2"),
        ({"auth_enable_mechanism": ("Cram-Md5",)}, b"250-AUTH CRAM-MD5 LOGIN PLAIN"),
        ({"auth_enable_mechanism": ALL, "auth_exclude_mechanism": ["PLAIN", "LOGIN", "XOAUTH2"]},
         b"250-AUTH CRAM-MD5 OAUTHBEARER"),
        ({"auth_enable_mechanism": []}, b"250-AUTH LOGIN PLAIN"),
    ],
)
def test_enable_and_exclude(serve: Any, connect: Any, options: dict[str, Any],
                            line: bytes) -> None:
    port = serve(Handler(), auth_require_tls=False, **options)
    assert line in connect(port, ehlo=False).cmd("EHLO c").split(b"\n")


@pytest.mark.parametrize("bad", ["SCRAM-SHA-1", "PLAIN", "", ["CRAM-MD5", "NTLM"]])
def test_unknown_name_refused(bad: Any) -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="auth_enable_mechanism: unknown optional AUTH "
                           r"mechanism .* \(choose from CRAM-MD5, OAUTHBEARER, XOAUTH2\)"):
            SMTP(None, hostname="h", auth_enable_mechanism=bad, loop=loop)
    finally:
        loop.close()


def test_handler_mechanism_wins(serve: Any, connect: Any) -> None:
    class Own(Handler):
        async def auth_CRAM__MD5(self, server: SMTP, args: list[str]) -> AuthResult:
            return AuthResult(success=True, message="235 handler's CRAM-MD5")

    port = serve(Own(), auth_require_tls=False, auth_enable_mechanism=ALL)
    assert connect(port).cmd("AUTH CRAM-MD5") == b"235 handler's CRAM-MD5"


def test_tls_still_required_by_default(serve: Any, connect: Any) -> None:
    port = serve(Handler(), authenticator=Authenticator(), auth_enable_mechanism=ALL)
    client = connect(port, ehlo=False)
    assert b"AUTH" not in client.cmd("EHLO c")
    assert client.cmd("AUTH XOAUTH2 " + b64(xoauth2_blob(b"u", TOKEN.encode()))) == (
        b"538 5.7.11 Encryption required for requested authentication mechanism"
    )


# -- CRAM-MD5 --------------------------------------------------------------------------------


def test_cram_md5(port: int, connect: Any, handler: Handler,
                  authenticator: Authenticator) -> None:
    client = connect(port)
    first = challenge_of(client.cmd("AUTH CRAM-MD5"))
    assert re.fullmatch(rb"<\d+\.\d+@test\.example>", first)
    assert client.cmd(b64(cram_md5_answer(USER.encode(), b"wrong", first))) == INVALID
    second = challenge_of(client.cmd("auth cram-md5"))
    assert second != first
    assert client.cmd(b64(cram_md5_answer(USER.encode(), SECRET.encode(), second))) == OK
    assert client.cmd("NOOP") == b"250 OK"
    assert authenticator.mechanisms == ["CRAM-MD5", "CRAM-MD5"]
    data = authenticator.calls[1][1]
    assert isinstance(data, CramMD5Response) and data.challenge == second
    session = handler.sessions[-1]
    assert session.authenticated is True
    assert session.auth_data is data
    assert session.login_data == USER.encode()


def test_cram_md5_answer_for_another_challenge(port: int, connect: Any) -> None:
    client = connect(port)
    old = challenge_of(client.cmd("AUTH CRAM-MD5"))
    assert client.cmd("*") == ABORTED
    challenge_of(client.cmd("AUTH CRAM-MD5"))
    # A replayed answer (to the old challenge) fails.
    assert client.cmd(b64(cram_md5_answer(USER.encode(), SECRET.encode(), old))) == INVALID


@pytest.mark.parametrize(
    "answer, reply",
    [
        ("*", ABORTED),
        ("not base64!", BAD_B64),
        (b64(b"alice"), NO_SPLIT),
        (b64(b"alice 0123"), NO_SPLIT),
        ("=", NO_SPLIT),
    ],
)
def test_cram_md5_bad_answers(port: int, connect: Any, authenticator: Authenticator,
                              answer: str, reply: bytes) -> None:
    client = connect(port)
    challenge_of(client.cmd("AUTH CRAM-MD5"))
    assert client.cmd(answer) == reply
    assert client.cmd("NOOP") == b"250 OK"
    assert authenticator.calls == []


@pytest.mark.parametrize("initial", [b64(b"alice 0123456789abcdef0123456789abcdef"), "="])
def test_cram_md5_initial_response_refused(port: int, connect: Any, initial: str) -> None:
    client = connect(port)
    # RFC 4954 section 4: the server speaks first in CRAM-MD5.
    assert client.cmd("AUTH CRAM-MD5 " + initial) == NO_IR
    assert client.cmd("NOOP") == b"250 OK"


def test_cram_md5_needs_an_authenticator(serve: Any, connect: Any) -> None:
    calls: list[Any] = []
    port = serve(Handler(), auth_require_tls=False, auth_enable_mechanism=ALL,
                 auth_callback=lambda *args: calls.append(args) or True)
    client = connect(port)
    challenge = challenge_of(client.cmd("AUTH CRAM-MD5"))
    assert client.cmd(b64(cram_md5_answer(USER.encode(), SECRET.encode(), challenge))) == INVALID
    assert calls == []  # auth_callback only ever sees passwords
    assert client.cmd("AUTH PLAIN " + b64(b"\0u\0p")) == OK


# -- XOAUTH2 and OAUTHBEARER -------------------------------------------------------------------

BLOBS = {
    "XOAUTH2": lambda token: xoauth2_blob(USER.encode(), token),
    "OAUTHBEARER": lambda token: oauthbearer_blob(token, USER.encode(), b"mx.example", 587),
}
ERROR_JSON = {
    "XOAUTH2": {"status": "401", "schemes": "bearer"},
    "OAUTHBEARER": {"status": "invalid_token"},
}
# What each mechanism's client answers to the error challenge.
DUMMY = {"XOAUTH2": "", "OAUTHBEARER": b64(b"\x01")}
BEARER = pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])


def error_challenge(reply: bytes) -> Any:
    return json.loads(challenge_of(reply))


@BEARER
def test_bearer_initial_response(port: int, connect: Any, handler: Handler,
                                 authenticator: Authenticator, mechanism: str) -> None:
    client = connect(port)
    assert client.cmd(f"AUTH {mechanism} {b64(BLOBS[mechanism](TOKEN.encode()))}") == OK
    assert client.cmd("NOOP") == b"250 OK"
    [(seen, data)] = authenticator.calls
    assert seen == mechanism
    assert data.login == USER.encode() and data.token == TOKEN.encode()
    if mechanism == "OAUTHBEARER":
        assert (data.host, data.port) == (b"mx.example", 587)
    assert handler.sessions[-1].auth_data is data
    assert handler.sessions[-1].login_data == USER.encode()


@BEARER
def test_bearer_after_empty_challenge(port: int, connect: Any, mechanism: str) -> None:
    client = connect(port)
    assert client.cmd(f"AUTH {mechanism}") == b"334 "
    assert client.cmd(b64(BLOBS[mechanism](TOKEN.encode()))) == OK


@BEARER
@pytest.mark.parametrize("initial", [True, False])
def test_bearer_error_flow(port: int, connect: Any, authenticator: Authenticator,
                           mechanism: str, initial: bool) -> None:
    client = connect(port)
    blob = b64(BLOBS[mechanism](b"expired"))
    if initial:
        reply = client.cmd(f"AUTH {mechanism} {blob}")
    else:
        assert client.cmd(f"AUTH {mechanism}") == b"334 "
        reply = client.cmd(blob)
    assert error_challenge(reply) == ERROR_JSON[mechanism]
    assert client.cmd(DUMMY[mechanism]) == INVALID
    assert client.cmd("NOOP") == b"250 OK"
    assert len(authenticator.calls) == 1


@BEARER
@pytest.mark.parametrize("answer, reply", [("*", ABORTED), ("%%", BAD_B64),
                                           (b64(b"anything"), INVALID)])
def test_bearer_error_challenge_answers(port: int, connect: Any, mechanism: str,
                                        answer: str, reply: bytes) -> None:
    client = connect(port)
    error_challenge(client.cmd(f"AUTH {mechanism} {b64(BLOBS[mechanism](b'expired'))}"))
    assert client.cmd(answer) == reply
    assert client.cmd("NOOP") == b"250 OK"


@BEARER
def test_bearer_custom_error_status_and_reply(serve: Any, connect: Any, mechanism: str) -> None:
    status = {"status": "insufficient_scope", "scope": "smtp"}
    result = AuthResult(success=False, handled=False, auth_data=status,
                        message="454 4.7.0 Temporary authentication failure")
    port = serve(Handler(), auth_require_tls=False, auth_enable_mechanism=ALL,
                 authenticator=Authenticator(result))
    client = connect(port)
    reply = client.cmd(f"AUTH {mechanism} {b64(BLOBS[mechanism](b'x'))}")
    assert error_challenge(reply) == status
    assert client.cmd(DUMMY[mechanism]) == b"454 4.7.0 Temporary authentication failure"


@BEARER
def test_bearer_handled_failure_sends_nothing_more(serve: Any, connect: Any,
                                                   mechanism: str) -> None:
    port = serve(Handler(), auth_require_tls=False, auth_enable_mechanism=ALL,
                 authenticator=Authenticator(AuthResult(success=False)))
    client = connect(port)
    client.send(f"AUTH {mechanism} {b64(BLOBS[mechanism](b'x'))}\r\nNOOP\r\n".encode())
    assert client.reply() == b"250 OK"


@BEARER
@pytest.mark.parametrize(
    "blob, reply",
    [
        ("!!", BAD_B64),
        ("=", NO_SPLIT),
        (b64(b"\x01"), NO_SPLIT),
        (b64(b"user=u\x01auth=Basic dTpw\x01\x01"), NO_SPLIT),
        (b64(b"n,,\x01auth=Bearer\x01\x01"), NO_SPLIT),
    ],
)
def test_bearer_malformed(port: int, connect: Any, authenticator: Authenticator,
                          mechanism: str, blob: str, reply: bytes) -> None:
    client = connect(port)
    assert client.cmd(f"AUTH {mechanism} {blob}") == reply
    assert client.cmd(f"AUTH {mechanism}") == b"334 "
    assert client.cmd(blob) == reply
    assert client.cmd(f"AUTH {mechanism}") == b"334 "
    assert client.cmd("*") == ABORTED
    assert client.cmd("NOOP") == b"250 OK"
    assert authenticator.calls == []


@BEARER
def test_bearer_long_token(port: int, connect: Any, authenticator: Authenticator,
                           mechanism: str) -> None:
    """A JWT-sized token does not fit on the AUTH line (512 bytes) nor in a
    line_length_limit (1001) line: the answer to the 334 may be 16 KiB."""
    token = ("eyJ" + "x" * 8000).encode()
    client = connect(port)
    assert client.cmd(f"AUTH {mechanism}") == b"334 "
    assert error_challenge(client.cmd(b64(BLOBS[mechanism](token))))
    assert client.cmd(DUMMY[mechanism]) == INVALID
    assert authenticator.calls[-1][1].token == token


def test_bearer_line_limit(port: int, connect: Any) -> None:
    client = connect(port)
    assert client.cmd("AUTH XOAUTH2") == b"334 "
    assert client.cmd("A" * 20000) == (
        b"500 Error: (ValueError) Separator is found, but chunk is longer than limit"
    )
    assert client.cmd("NOOP") == b"250 OK"


def test_bearer_failures_count(serve: Any, connect: Any) -> None:
    port = serve(Handler(), auth_require_tls=False, auth_enable_mechanism=ALL,
                 authenticator=Authenticator(), auth_failure_limit=2)
    client = connect(port)
    for _ in range(2):
        error_challenge(client.cmd("AUTH XOAUTH2 " + b64(xoauth2_blob(b"u", b"bad"))))
        assert client.cmd("") == INVALID
    assert client.cmd("AUTH XOAUTH2 " + b64(xoauth2_blob(b"u", TOKEN.encode()))) == (
        b"421 4.7.0 Too many failed authentication attempts, goodbye."
    )


def test_bearer_without_authenticator(serve: Any, connect: Any) -> None:
    port = serve(Handler(), auth_require_tls=False, auth_enable_mechanism=ALL)
    client = connect(port)
    error_challenge(client.cmd("AUTH OAUTHBEARER " + b64(oauthbearer_blob(TOKEN.encode()))))
    assert client.cmd(b64(b"\x01")) == INVALID


# -- Real clients ----------------------------------------------------------------------------


# Python 3.9's smtplib cannot send an empty AUTH response (base64 of b"" is
# b"", which putcmd() rejects); it answers XOAUTH2's error challenge with ^A.
EMPTY_OK = isinstance(email.base64mime.body_encode(b"", eol=""), str)


def test_smtplib_login_prefers_cram_md5(port: int, authenticator: Authenticator) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
            client.login(USER, "wrong")
        assert failure.value.smtp_code == 535
        # smtplib tries every mechanism it knows, CRAM-MD5 first.
        assert authenticator.mechanisms == ["CRAM-MD5", "PLAIN", "LOGIN"]
        assert client.login(USER, SECRET) == (235, OK[4:])
        assert authenticator.mechanisms[3:] == ["CRAM-MD5"]


@BEARER
@pytest.mark.parametrize("initial_response_ok", [True, False])
def test_smtplib_bearer(port: int, authenticator: Authenticator, mechanism: str,
                        initial_response_ok: bool) -> None:
    def authobject(token: bytes) -> Callable[..., str]:
        def answer(challenge: Optional[bytes] = None) -> str:
            # The first response, then the empty (XOAUTH2) or ^A (OAUTHBEARER)
            # answer to the error challenge.
            if not challenge:
                return BLOBS[mechanism](token).decode("ascii")
            assert json.loads(challenge) == ERROR_JSON[mechanism]
            return "" if mechanism == "XOAUTH2" and EMPTY_OK else "\x01"
        return answer

    with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as client:
        client.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
            client.auth(mechanism, authobject(b"expired"), initial_response_ok=initial_response_ok)
        assert failure.value.smtp_code == 535
        assert client.auth(mechanism, authobject(TOKEN.encode()),
                           initial_response_ok=initial_response_ok) == (235, OK[4:])
        assert client.noop()[0] == 250
    assert authenticator.mechanisms == [mechanism, mechanism]


def test_aiosmtplib(port: int, authenticator: Authenticator) -> None:
    aiosmtplib = pytest.importorskip("aiosmtplib")
    if not hasattr(aiosmtplib.SMTP, "auth_xoauth2"):
        pytest.skip("this aiosmtplib has no XOAUTH2 (added in 4.1)")

    async def talk() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False,
                                 use_tls=False, timeout=IO_TIMEOUT)
        await client.connect()
        await client.login(USER, SECRET)  # CRAM-MD5, its first choice
        await client.quit()
        await client.connect()
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failure:
            await client.auth_xoauth2(USER, "expired")
        assert failure.value.code == 535
        response = await client.auth_xoauth2(USER, TOKEN)
        assert response.code == 235
        errors, _ = await client.sendmail("a@example.com", ["b@example.com"], b"x\r\n")
        assert errors == {}
        await client.quit()

    asyncio.run(talk())
    assert authenticator.mechanisms == ["CRAM-MD5", "XOAUTH2", "XOAUTH2"]


def swaks(port: int, secret: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("swaks") is None:
        pytest.skip("swaks is not installed (apt-get install swaks)")
    support = subprocess.run(["swaks", "--support"], capture_output=True, text=True,
                             timeout=30, stdin=subprocess.DEVNULL)
    if "AUTH CRAM-MD5 supported" not in support.stdout + support.stderr:
        pytest.skip("this swaks cannot do CRAM-MD5 (it needs Perl's Digest::MD5)")
    return subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{port}", "--from", "a@example.com",
         "--to", "b@example.com", "-a", "CRAM-MD5", "-au", USER, "-ap", secret,
         "--timeout", "20"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


def test_swaks_cram_md5(port: int, handler: Handler, authenticator: Authenticator) -> None:
    failed = swaks(port, "wrong")
    assert failed.returncode != 0
    assert "535 5.7.8 Authentication credentials invalid" in failed.stdout
    done = swaks(port, SECRET)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " -> AUTH CRAM-MD5" in done.stdout
    assert "235 2.7.0 Authentication successful" in done.stdout
    assert authenticator.mechanisms == ["CRAM-MD5", "CRAM-MD5"]
    assert [e.rcpt_tos for e in handler.envelopes] == [["b@example.com"]]


def curl(port: int, token: str, *options: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    version = subprocess.run(["curl", "--version"], capture_output=True, text=True,
                             timeout=30, stdin=subprocess.DEVNULL).stdout
    found = re.match(r"curl (\d+)\.(\d+)", version)
    # 7.65.0 made OAUTHBEARER follow RFC 7628; --sasl-ir dates from 7.31.
    if found is None or (int(found[1]), int(found[2])) < (7, 65):
        pytest.skip(f"curl too old for RFC 7628 OAUTHBEARER: {version.splitlines()[:1]}")
    return subprocess.run(
        ["curl", "-sS", "-v", "--max-time", "20", f"smtp://127.0.0.1:{port}",
         "--mail-from", "a@example.com", "--mail-rcpt", "b@example.com",
         "--upload-file", "-", "-u", f"{USER}:", "--oauth2-bearer", token, *options],
        input="Subject: x\r\n\r\nhi\r\n", capture_output=True, text=True, timeout=60,
    )


@BEARER
@pytest.mark.parametrize("sasl_ir", [True, False])
def test_curl_bearer(serve: Any, mechanism: str, sasl_ir: bool,
                     caplog: pytest.LogCaptureFixture) -> None:
    # curl prefers OAUTHBEARER when the server offers both: offer one.
    handler, authenticator = Handler(), Authenticator()
    port = serve(handler, auth_require_tls=False, authenticator=authenticator,
                 auth_enable_mechanism=[mechanism])
    caplog.set_level(logging.WARNING)
    options = ("--sasl-ir",) if sasl_ir else ()
    failed = curl(port, "expired", *options)
    assert failed.returncode == 67, failed.stderr  # CURLE_LOGIN_DENIED
    assert "< 334 " + b64(json.dumps(ERROR_JSON[mechanism], separators=(",", ":")).encode()) \
        in failed.stderr
    if mechanism == "OAUTHBEARER":
        # The RFC 7628 dummy answer; curl's XOAUTH2 hangs up instead.
        assert "> AQ==" in failed.stderr
        assert "< 535 5.7.8 Authentication credentials invalid" in failed.stderr
    done = curl(port, TOKEN, *options)
    assert done.returncode == 0, done.stderr
    auth_line = f"> AUTH {mechanism} " if sasl_ir else f"> AUTH {mechanism}\n"
    assert auth_line in done.stderr.replace("\r", "")
    assert "< 235 2.7.0 Authentication successful" in done.stderr
    assert [e.content for e in handler.envelopes] == [b"Subject: x\r\n\r\nhi\r\n"]
    assert authenticator.mechanisms == [mechanism, mechanism]
    data = authenticator.calls[-1][1]
    assert data.login == USER.encode() and data.token == TOKEN.encode()
    if mechanism == "OAUTHBEARER":
        assert (data.host, data.port) == (b"127.0.0.1", port)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
