"""The public surface of aiosmtpd.smtp (docs/smtp.rst): names, classes, constructor."""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import aiosmtpd
import aiosmtpd.smtp as smtp_module
from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
)
from tests._server import HOSTNAME, LoopThread, ServerFactory

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def make(loop: asyncio.AbstractEventLoop, handler: Any = None, **kwargs: Any) -> SMTP:
    kwargs.setdefault("hostname", HOSTNAME)
    return SMTP(handler, loop=loop, **kwargs)


# -- Module surface ----------------------------------------------------------------------


def test_all_exact() -> None:
    assert smtp_module.__all__ == [
        "AuthCallbackType", "AuthMechanismType", "MISSING", "__version__",
        "LoginPassword", "Session", "Envelope", "syntax", "auth_mechanism",
        "TLSSetupException", "sanitize", "sanitized_log", "SMTP",
    ]  # fmt: skip
    for name in smtp_module.__all__:
        assert hasattr(smtp_module, name)


def test_version_sorts_after_upstream() -> None:
    # CHANGES.rst: 1.5.0, because the project offers more than upstream 1.4.6,
    # while requirements such as ``aiosmtpd>=1.4`` still match.
    assert aiosmtpd.__version__ == "1.5.0"
    parts = tuple(int(part) for part in aiosmtpd.__version__.split("."))
    assert parts > (1, 4, 6)


def test_other_public_names() -> None:
    assert smtp_module.__version__ is aiosmtpd.__version__
    assert smtp_module.__ident__ == f"Python SMTP {aiosmtpd.__version__}"
    assert smtp_module.CALL_LIMIT_DEFAULT == 20
    assert smtp_module.DATA_SIZE_DEFAULT == 33554432
    assert "AuthResult" not in smtp_module.__all__
    assert "AuthenticatorType" not in smtp_module.__all__
    assert smtp_module.AuthenticatorType is not None
    assert smtp_module.login_always_fail("PLAIN", b"u", b"p") is False
    assert issubclass(smtp_module.TLSSetupException, Exception)


def test_missing_sentinel() -> None:
    assert type(MISSING).__name__ == "_Missing"
    assert MISSING is type(MISSING).MISSING
    assert bool(MISSING) is True
    assert str(MISSING) == "_Missing.MISSING"
    assert repr(MISSING).startswith("<_Missing.MISSING: <object object at 0x")
    assert repr(MISSING).endswith(">>")


def test_ident_read_at_construction(
    monkeypatch: pytest.MonkeyPatch, start: ServerFactory, loop: asyncio.AbstractEventLoop
) -> None:
    monkeypatch.setattr(smtp_module, "__ident__", "Disguised 0.1")
    assert make(loop).__ident__ == "Disguised 0.1"
    assert make(loop, ident="").__ident__ == "Disguised 0.1"
    assert make(loop, ident="Mine").__ident__ == "Mine"
    with start().client() as c:
        assert c.greeting == [f"220 {HOSTNAME} Disguised 0.1".encode()]


def test_instance_ident_can_be_reassigned(start: ServerFactory) -> None:
    class Renamed(SMTP):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.__ident__ = "Renamed"  # no name mangling: dunder on both sides

    with start(cls=Renamed).client() as c:
        assert c.greeting == [f"220 {HOSTNAME} Renamed".encode()]


# -- Session and Envelope -------------------------------------------------------------------


def test_session_defaults(loop: asyncio.AbstractEventLoop) -> None:
    s = Session(loop)
    assert s.peer is None
    assert s.ssl is None
    assert s.host_name is None
    assert s.extended_smtp is False
    assert s.loop is loop
    assert s.proxy_data is None
    assert s.auth_data is None
    assert s.authenticated is None
    s.anything = 1  # handlers may add attributes


def test_login_data_is_deprecated(loop: asyncio.AbstractEventLoop, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="mail.log")
    s = Session(loop)
    assert s.login_data is None
    s.login_data = b"user"
    assert s.login_data == b"user"
    text = "Session.login_data is deprecated and will be removed in version 2.0"
    records = [r for r in caplog.records if r.name == "mail.log"]
    assert [r.getMessage() for r in records] == [text] * 3
    assert all(r.levelno == logging.WARNING for r in records)


def test_envelope_defaults() -> None:
    e, f = Envelope(), Envelope()
    assert e.mail_from is None
    assert e.mail_options == []
    assert e.smtp_utf8 is False
    assert e.content is None
    assert e.original_content is None
    assert e.rcpt_tos == []
    assert e.rcpt_options == []
    assert e.mail_options is not f.mail_options
    assert e.rcpt_tos is not f.rcpt_tos


def test_session_peer_and_fresh_state(start: ServerFactory) -> None:
    srv = start()
    with srv.client() as c:
        c.cmd("NOOP")
        proto = srv.last
        assert proto.session.peer == c.sock.getsockname()
        assert isinstance(proto.envelope, Envelope)
        assert proto.transport is not None
        assert proto.loop is srv.lt.loop
        assert proto.session.loop is srv.lt.loop


# -- AuthResult and LoginPassword --------------------------------------------------------------


def test_auth_result() -> None:
    r = AuthResult(success=True)
    assert (r.success, r.handled, r.message, r.auth_data) == (True, True, None, None)
    assert repr(r) == "AuthResult(success=True, handled=True, message=None, auth_data=...)"
    r2 = AuthResult(success=False, handled=False, message="535 no", auth_data={"k": 1})
    assert repr(r2) == "AuthResult(success=False, handled=False, message='535 no', auth_data=...)"
    assert AuthResult(success=True, auth_data=1) == AuthResult(success=True, auth_data=1)
    assert AuthResult(success=True, auth_data=1) != AuthResult(success=True, auth_data=2)
    with pytest.raises(TypeError):
        hash(r)
    r.message = "235 changed"
    assert r.message == "235 changed"
    with pytest.raises(TypeError):
        AuthResult()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        AuthResult(True)  # type: ignore[misc]


def test_login_password() -> None:
    lp = LoginPassword(b"user", b"secret")
    login, password = lp
    assert (login, password) == (b"user", b"secret")
    assert lp.login == b"user" and lp.password == b"secret"
    assert str(lp) == repr(lp) == "LoginPassword(login='user', password=...)"
    assert "secret" not in repr(lp)
    assert isinstance(lp, tuple)
    # Deviation (CHANGES.rst): never raise for non-UTF-8 logins.
    odd = LoginPassword(b"\xffuser", b"x")
    assert repr(odd) == "LoginPassword(login='\\xffuser', password=...)"
    assert str(odd) == repr(odd)


# -- Constructor ---------------------------------------------------------------------------------


def test_signature() -> None:
    params = list(inspect.signature(SMTP).parameters.values())
    assert params[0].name == "handler"
    assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    expected = [
        ("data_size_limit", 33554432), ("enable_SMTPUTF8", False), ("decode_data", False),
        ("hostname", None), ("ident", None), ("tls_context", None),
        ("require_starttls", False), ("timeout", 300), ("auth_required", False),
        ("auth_require_tls", True), ("auth_exclude_mechanism", None), ("auth_callback", None),
        ("command_call_limit", None), ("authenticator", None),
        ("proxy_protocol_timeout", None), ("loop", None),
    ]  # fmt: skip
    got = [(p.name, p.default) for p in params[1 : len(expected) + 1]]
    assert got == expected
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])
    extra = {p.name: p.default for p in params[len(expected) + 1 :]}
    assert extra.get("strict_line_endings") is False
    with pytest.raises(TypeError):
        SMTP(None, 100)  # type: ignore[misc]


def test_class_attributes() -> None:
    assert SMTP.command_size_limit == 512
    assert SMTP.line_length_limit == 1001
    assert SMTP.local_part_limit == 0
    assert SMTP.AuthLoginUsernameChallenge == "User Name\x00"
    assert SMTP.AuthLoginPasswordChallenge == "Password\x00"
    assert issubclass(SMTP, asyncio.StreamReaderProtocol)


def test_instance_attributes(loop: asyncio.AbstractEventLoop) -> None:
    handler = object()
    s = make(loop, handler, data_size_limit=10, enable_SMTPUTF8=True, decode_data=True)
    assert s.event_handler is handler
    assert s.data_size_limit == 10
    assert s.enable_SMTPUTF8 is True
    assert s._decode_data is True
    assert s.hostname == HOSTNAME
    assert s.tls_context is None
    assert not s.require_starttls
    assert s.session is None and s.envelope is None and s.transport is None
    assert s.loop is loop
    assert not hasattr(s, "authenticated")
    assert s.max_command_size_limit == 512


def test_semi_private_helpers(loop: asyncio.AbstractEventLoop) -> None:
    s = make(loop)
    assert isinstance(s._create_session(), Session)
    assert s._create_session().loop is loop
    assert isinstance(s._create_envelope(), Envelope)
    s._set_rset_state()
    first = s.envelope
    s._set_rset_state()
    assert isinstance(s.envelope, Envelope) and s.envelope is not first
    assert s._strip_command_keyword("FROM:", "from: <a@b> ") == "<a@b>"
    assert s._strip_command_keyword("FROM:", "TO:<a@b>") is None
    assert s._getaddr("<a@b> SIZE=1") == ("a@b", "SIZE=1")
    assert s._getaddr("") == ("", "")
    assert s._getaddr("<a@b") == (None, None)
    assert s._getparams(["SIZE=1", "BODY=7BIT", "SMTPUTF8"]) == {
        "SIZE": "1", "BODY": "7BIT", "SMTPUTF8": True,
    }
    assert s._getparams(["X-Y=1"]) is None


@pytest.mark.parametrize("value", [None, 0, 1, 10**12, True])
def test_data_size_limit_accepts_int_or_none(loop: asyncio.AbstractEventLoop, value: Any) -> None:
    assert make(loop, data_size_limit=value).data_size_limit == value


@pytest.mark.parametrize("value", [1.5, "100", [1]])
def test_data_size_limit_type(loop: asyncio.AbstractEventLoop, value: Any) -> None:
    with pytest.raises(AssertionError):
        make(loop, data_size_limit=value)


@pytest.mark.parametrize("value", [0, -1, 0.0])
def test_proxy_protocol_timeout_positive(loop: asyncio.AbstractEventLoop, value: Any) -> None:
    with pytest.raises(ValueError, match=r"^proxy_protocol_timeout must be > 0$"):
        make(loop, proxy_protocol_timeout=value)


def test_proxy_protocol_timeout_short_warns(loop: asyncio.AbstractEventLoop, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="mail.log")
    make(loop, proxy_protocol_timeout=2.9)
    make(loop, proxy_protocol_timeout=3.0)
    assert [r.getMessage() for r in caplog.records] == ["proxy_protocol_timeout < 3.0"]


class Ehlo3:
    async def handle_EHLO(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 x"


class Ehlo6Default:
    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str], extra: Any = None) -> list[str]:
        return responses


class EhloVarargs:
    async def handle_EHLO(self, *args: Any) -> list[str]:
        return []


@pytest.mark.parametrize("handler", [Ehlo3(), Ehlo6Default(), EhloVarargs()])
def test_unsupported_ehlo_hook(loop: asyncio.AbstractEventLoop, handler: Any) -> None:
    with pytest.raises(RuntimeError, match=r"^Unsupported EHLO Hook$"):
        make(loop, handler)


def test_four_argument_ehlo_hook_warns(loop: asyncio.AbstractEventLoop) -> None:
    class Old:
        async def handle_EHLO(self, server: Any, session: Any, envelope: Any,
                              hostname: str) -> str:
            return "250 x"

    with pytest.warns(DeprecationWarning, match="Use the 5-argument handle_EHLO"):
        make(loop, Old())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", "command_call_limit must be int or Dict[str, int]"),
        (5.0, "command_call_limit must be int or Dict[str, int]"),
        ([5], "command_call_limit must be int or Dict[str, int]"),
        ({"NOOP": "5"}, "All command_call_limit values must be int"),
        ({"NOOP": 5, "*": 1.5}, "All command_call_limit values must be int"),
    ],
)
def test_command_call_limit_types(
    loop: asyncio.AbstractEventLoop, value: Any, message: str
) -> None:
    with pytest.raises(TypeError) as exc:
        make(loop, command_call_limit=value)
    assert str(exc.value) == message


def test_command_call_limit_accepts_bool_values(loop: asyncio.AbstractEventLoop) -> None:
    make(loop, command_call_limit={"NOOP": True})
    make(loop, command_call_limit=3)


def test_validation_order(loop: asyncio.AbstractEventLoop) -> None:
    bad = {"command_call_limit": "x", "proxy_protocol_timeout": 0}
    with pytest.raises(AssertionError):
        make(loop, Ehlo3(), data_size_limit=1.5, **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make(loop, Ehlo3(), **bad)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        make(loop, Ehlo3(), command_call_limit="x")
    with pytest.raises(TypeError):
        make(loop, command_call_limit="x")


def test_auth_required_without_tls_warns(loop: asyncio.AbstractEventLoop, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="mail.log")
    order: list[str] = []

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            order.append("log:" + record.getMessage())

    spy = Spy()
    logging.getLogger("mail.log").addHandler(spy)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            original = warnings.showwarning

            def show(message: Any, *args: Any, **kwargs: Any) -> None:
                order.append("warn:" + str(message))
                original(message, *args, **kwargs)

            warnings.showwarning = show
            make(loop, auth_required=True, auth_require_tls=False)
    finally:
        logging.getLogger("mail.log").removeHandler(spy)
    user = [w for w in caught if w.category is UserWarning]
    assert [str(w.message) for w in user] == [
        "Requiring AUTH while not requiring TLS can lead to security vulnerabilities!"
    ]
    assert order[:2] == [
        "warn:Requiring AUTH while not requiring TLS can lead to security vulnerabilities!",
        "log:auth_required == True but auth_require_tls == False",
    ]


def test_no_warning_when_tls_required(loop: asyncio.AbstractEventLoop) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(loop, auth_required=True)


def test_default_construction_logs_once(loop: asyncio.AbstractEventLoop, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(loop)
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert records == [
        ("mail.log", logging.INFO, "Available AUTH mechanisms: LOGIN(builtin) PLAIN(builtin)")
    ]


def test_auth_mechanisms_log_with_exclusion(loop: asyncio.AbstractEventLoop, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="mail.log")
    make(loop, auth_exclude_mechanism=["LOGIN", "NOPE"])
    assert caplog.records[-1].getMessage() == "Available AUTH mechanisms: PLAIN(builtin)"


def test_tls_context_warnings(loop: asyncio.AbstractEventLoop, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="mail.log")
    client_ctx = ssl.create_default_context()  # CERT_REQUIRED and check_hostname
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # CERT_NONE
    hostname_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    hostname_ctx.verify_mode = ssl.CERT_OPTIONAL
    hostname_ctx.check_hostname = True
    make(loop, tls_context=client_ctx)
    make(loop, tls_context=server_ctx)
    make(loop, tls_context=hostname_ctx)
    assert [r.getMessage() for r in caplog.records] == [
        "tls_context.verify_mode not in {CERT_NONE, CERT_OPTIONAL}; "
        "this might cause client connection problems",
        "tls_context.check_hostname == True; this might cause client connection problems",
    ]
    # The context is never modified.
    assert client_ctx.verify_mode is ssl.CERT_REQUIRED and client_ctx.check_hostname


def test_loop_default_is_current_loop(loop: asyncio.AbstractEventLoop) -> None:
    async def build() -> SMTP:
        return SMTP(None, hostname=HOSTNAME)

    s = loop.run_until_complete(build())
    assert s.loop is loop


def test_loop_default_without_current_loop() -> None:
    result: dict[str, Any] = {}

    def in_thread() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s = SMTP(None, hostname=HOSTNAME)
        result["loop"] = s.loop
        result["current"] = asyncio.get_event_loop_policy().get_event_loop()
        result["warnings"] = [w for w in caught if w.category is DeprecationWarning]
        s.loop.close()

    t = threading.Thread(target=in_thread)
    t.start()
    t.join(10)
    assert result["loop"] is result["current"]
    assert result["warnings"] == []


def test_protocol_on_an_accepted_socket(lt: LoopThread) -> None:
    """The class is a plain asyncio protocol: any transport can drive it."""
    ours, theirs = socket.socketpair()

    async def attach() -> SMTP:
        proto = SMTP(None, hostname=HOSTNAME)
        await lt.loop.connect_accepted_socket(lambda: proto, ours)
        return proto

    proto = lt.run(attach())
    try:
        theirs.settimeout(10)
        f = theirs.makefile("rwb")
        assert f.readline() == f"220 {HOSTNAME} Python SMTP {aiosmtpd.__version__}\r\n".encode()
        f.write(b"NOOP\r\n")
        f.flush()
        assert f.readline() == b"250 OK\r\n"
        assert proto.session is not None
        assert isinstance(proto.session.peer, str)  # AF_UNIX: a (possibly empty) string
        assert proto.loop is lt.loop
        f.write(b"QUIT\r\n")
        f.flush()
        assert f.readline() == b"221 Bye\r\n"
        assert f.readline() == b""
    finally:
        theirs.close()


def test_constructor_warnings_point_at_the_caller() -> None:
    class OldEhlo:
        async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
            return "250 old"

    loop = asyncio.new_event_loop()
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            SMTP(OldEhlo(), hostname="h", loop=loop)
            SMTP(None, hostname="h", loop=loop, auth_required=True, auth_require_tls=False)
    finally:
        loop.close()
    assert len(record) == 2, [str(w.message) for w in record]
    assert all(w.filename == __file__ for w in record), [w.filename for w in record]
