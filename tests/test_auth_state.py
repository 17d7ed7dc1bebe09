"""AUTH's state and decisions, socket-free (aiosmtpd/_auth.py, ``AuthState``):
whether AUTH is advertised, the EHLO line, the TLS and AUTH requirements,
the failure limit, the mechanism lookup, the credential check, and the
registry of mechanisms.  At the end, over loopback: the 1.4.6 names
(``server._auth_required`` ...) still take effect when set after construction.
"""

from __future__ import annotations

import asyncio
import base64
import warnings
from collections.abc import Iterator
from typing import Any, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiosmtpd._auth import (
    AuthState,
    auth_mechanism,
    auth_state,
    login_always_fail,
    mechanisms,
)
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from tests._server import LineClient, ServerFactory

BUILTINS = {"LOGIN": ("auth_LOGIN", True), "PLAIN": ("auth_PLAIN", True)}
NAMES = st.from_regex(r"[A-Z0-9_-]{1,12}", fullmatch=True)


def state(**kwargs: Any) -> AuthState:
    methods = kwargs.pop("methods", BUILTINS)
    return AuthState(methods, **kwargs)


# -- Advertised, and EHLO's line -------------------------------------------------------


@given(st.booleans(), st.booleans(), st.booleans())
def test_advertised(have_methods: bool, require_tls: bool, tls_active: bool) -> None:
    auth = state(methods=BUILTINS if have_methods else {}, require_tls=require_tls)
    expected = have_methods and (tls_active or not require_tls)
    assert auth.advertised(tls_active) is expected


def test_not_advertised_with_no_mechanism_even_over_tls() -> None:
    # Deviation (CHANGES.rst): no bare "250-AUTH " line.
    assert not state(methods={}, require_tls=False).advertised(True)


@given(st.sets(NAMES, min_size=1))
def test_ehlo_line_lists_every_mechanism_sorted(names: set[str]) -> None:
    auth = state(methods={name: ("auth_" + name, True) for name in names})
    line = auth.ehlo_line()
    assert line.startswith("250-AUTH ")
    assert line[len("250-AUTH "):].split(" ") == sorted(names)


def test_ehlo_line_of_the_builtins() -> None:
    assert state().ehlo_line() == "250-AUTH LOGIN PLAIN"


# -- What is refused: 538 for want of TLS, 530 for want of AUTH ------------------------------


@pytest.mark.parametrize(
    "require_tls, tls_active, refused",
    [(True, False, True), (True, True, False), (False, False, False), (False, True, False)],
)
def test_needs_tls(require_tls: bool, tls_active: bool, refused: bool) -> None:
    assert state(require_tls=require_tls).needs_tls(tls_active) is refused


@pytest.mark.parametrize(
    "required, authenticated, refused",
    [
        (True, None, True),  # Session.authenticated before any AUTH
        (True, False, True),
        (True, True, False),
        (False, None, False),
        (False, True, False),
    ],
)
def test_needed(required: bool, authenticated: Optional[bool], refused: bool) -> None:
    assert state(required=required).needed(authenticated) is refused


# -- Failed attempts and auth_failure_limit ----------------------------------------------------


@given(st.integers(min_value=0, max_value=50))
def test_no_limit_by_default(failures: int) -> None:
    auth = state()
    for _ in range(failures):
        auth.failed()
    assert auth.failures == failures
    assert not auth.over_limit()


@given(st.integers(min_value=1, max_value=20), st.integers(min_value=0, max_value=40))
def test_over_limit_once_failures_reach_it(limit: int, failures: int) -> None:
    auth = state(failure_limit=limit)
    for _ in range(failures):
        auth.failed()
    assert auth.over_limit() is (failures >= limit)


def test_limit_counts_per_state() -> None:
    one, other = state(failure_limit=1), state(failure_limit=1)
    one.failed()
    assert one.over_limit() and not other.over_limit()


# -- Which mechanism a name means --------------------------------------------------------------


def test_find_exact_and_any_case() -> None:
    auth = state(methods={"PLAIN": ("auth_PLAIN", True), "X-Token": ("auth_X__Token", False)})
    assert auth.find("PLAIN") == "PLAIN"
    assert auth.find("plain") == "PLAIN"
    # The registry's own spelling is what handlers and mechanisms see.
    assert auth.find("x-token") == "X-Token"
    assert auth.find("X-TOKEN") == "X-Token"
    assert auth.find("CRAM-MD5") is None
    assert state(methods={}).find("PLAIN") is None


@given(st.sets(NAMES, min_size=1, max_size=6), st.data())
def test_find_any_casing_of_a_registered_name(names: set[str], data: st.DataObject) -> None:
    auth = state(methods=dict.fromkeys(names, ("auth_x", True)))
    name = data.draw(st.sampled_from(sorted(names)))
    casing = "".join(
        c.lower() if data.draw(st.booleans()) else c for c in name
    )
    assert auth.find(casing) == name


@given(st.sets(NAMES, max_size=6), NAMES)
def test_find_unknown(names: set[str], asked: str) -> None:
    auth = state(methods=dict.fromkeys(names, ("auth_x", True)))
    found = auth.find(asked)
    assert (found is None) is (asked.upper() not in {n.upper() for n in names})


# -- The credential check ---------------------------------------------------------------------


CREDENTIALS = LoginPassword(b"user", b"s3cret")


def test_check_calls_the_authenticator_with_everything() -> None:
    calls: list[tuple[Any, ...]] = []
    verdict = AuthResult(success=True, auth_data="me")

    def authenticator(*args: Any) -> AuthResult:
        calls.append(args)
        return verdict

    server, session, envelope = object(), object(), object()
    auth = state(authenticator=authenticator, callback=lambda *a: pytest.fail("not called"))
    result = auth.check(server, session, envelope, "PLAIN", CREDENTIALS)  # type: ignore[arg-type]
    assert result is verdict
    assert calls == [(server, session, envelope, "PLAIN", CREDENTIALS)]


def test_check_by_callback() -> None:
    seen: list[tuple[str, bytes, bytes]] = []

    def callback(mechanism: str, login: bytes, password: bytes) -> bool:
        seen.append((mechanism, login, password))
        return password == b"s3cret"

    auth = state(callback=callback)
    assert auth.check(None, None, None, "LOGIN", CREDENTIALS) == AuthResult(  # type: ignore[arg-type]
        success=True, handled=True, auth_data=CREDENTIALS
    )
    wrong = LoginPassword(b"user", b"nope")
    assert auth.check(None, None, None, "PLAIN", wrong) == AuthResult(  # type: ignore[arg-type]
        success=False, handled=False
    )
    assert seen == [("LOGIN", b"user", b"s3cret"), ("PLAIN", b"user", b"nope")]


def test_check_by_default_always_fails() -> None:
    auth = state()
    assert auth.callback is login_always_fail
    result = auth.check(None, None, None, "PLAIN", CREDENTIALS)  # type: ignore[arg-type]
    assert result == AuthResult(success=False, handled=False)


def test_check_without_authenticator_refuses_what_is_no_password() -> None:
    # The optional mechanisms' credentials need an authenticator.
    auth = state(callback=lambda *a: pytest.fail("not called"))
    assert auth.check(None, None, None, "XOAUTH2", object()) == AuthResult(  # type: ignore[arg-type]
        success=False, handled=False
    )


# -- The registry of mechanisms ---------------------------------------------------------------


class Server:
    """Stands for an SMTP: only its auth_* attributes count."""

    async def auth_PLAIN(self, *args: Any) -> None: ...

    async def auth_LOGIN(self, *args: Any) -> None: ...

    async def auth_X__OLD(self, *args: Any) -> None: ...

    @auth_mechanism("weird.name".replace(".", "-"))
    async def auth_anything(self, *args: Any) -> None: ...


class Handler:
    async def auth_PLAIN(self, *args: Any) -> None: ...

    async def auth_TOKEN(self, *args: Any) -> None: ...


def test_mechanisms_from_server_then_handler() -> None:
    registry = mechanisms(Server(), Handler(), None, None)
    assert registry == {
        "LOGIN": ("auth_LOGIN", True),
        "PLAIN": ("auth_PLAIN", False),  # the handler's replaces the built-in
        "X-OLD": ("auth_X__OLD", True),  # "__" is "-"
        "WEIRD-NAME": ("auth_anything", True),  # @auth_mechanism's name
        "TOKEN": ("auth_TOKEN", False),
    }


def test_mechanisms_excluded_and_optional() -> None:
    registry = mechanisms(Server(), None, ["LOGIN", "NOPE"], ["cram-md5", "XOAUTH2"])
    assert list(registry)[:2] == ["CRAM-MD5", "XOAUTH2"]  # optional built-ins first
    assert registry["CRAM-MD5"] == ("_sasl_cram_md5", True)
    assert "LOGIN" not in registry
    with pytest.raises(ValueError, match="unknown optional AUTH mechanism 'BOGUS'"):
        mechanisms(Server(), None, None, "BOGUS")


def test_equal_registries_are_shared() -> None:
    first = mechanisms(Server(), Handler(), None, None)
    assert mechanisms(Server(), Handler(), None, None) is first
    assert mechanisms(Server(), None, None, None) is not first


def test_auth_state_from_the_arguments() -> None:
    def authenticator(*args: Any) -> AuthResult:
        return AuthResult(success=True)

    auth = auth_state(
        Server(), None, auth_required=False, auth_require_tls=True,
        auth_exclude_mechanism=None, auth_callback=None, authenticator=authenticator,
        failure_limit=3, enable_mechanism=None,
    )
    assert (auth.required, auth.require_tls, auth.failure_limit, auth.failures) == (
        False, True, 3, 0
    )
    assert auth.callback is login_always_fail and auth.authenticator is authenticator


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3"])
def test_auth_state_checks_the_failure_limit(bad: Any) -> None:
    with pytest.raises(ValueError, match="auth_failure_limit must be None or a positive int"):
        auth_state(
            Server(), None, auth_required=False, auth_require_tls=True,
            auth_exclude_mechanism=None, auth_callback=None, authenticator=None,
            failure_limit=bad, enable_mechanism=None,
        )


# -- The 1.4.6 names on SMTP: properties of its AuthState ------------------------------------


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def test_upstream_names_read_and_set_the_state(loop: asyncio.AbstractEventLoop) -> None:
    def callback(mechanism: str, login: bytes, password: bytes) -> bool:
        return True

    server = SMTP(None, loop=loop, hostname="test.example", auth_callback=callback)
    auth = server._auth
    assert server._auth_methods is auth.methods
    assert server._auth_callback is callback
    assert server._authenticator is None
    assert server._auth_required is False and server._auth_require_tls is True
    methods = {"LOGIN": ("auth_LOGIN", True)}
    server._auth_methods = methods
    server._auth_required = True
    server._auth_require_tls = False
    server._auth_callback = login_always_fail
    server._authenticator = callback  # type: ignore[assignment]
    assert auth.methods is methods and auth.required and not auth.require_tls
    assert auth.callback is login_always_fail and auth.authenticator is callback
    # Each connection has its own: setting one server's leaves the others'.
    assert SMTP(None, loop=loop, hostname="test.example")._auth_required is False


# -- Over loopback: set after construction, they take effect ---------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Accepting:
    """An ``authenticator`` that takes one password."""

    def __call__(self, server: SMTP, session: Session, envelope: Envelope,
                 mechanism: str, auth_data: Any) -> AuthResult:
        return AuthResult(success=auth_data.password == b"s3cret", handled=False)


class LateSettings(SMTP):
    """Sets AUTH's settings after ``SMTP.__init__``, as code written for
    1.4.6 does (aiosmtpd.testing sets ``_auth_required`` so)."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._auth_required = True
        self._auth_require_tls = False
        self._authenticator = Accepting()


class LateMechanisms(SMTP):
    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._auth_require_tls = False
        self._auth_methods = {"LOGIN": ("auth_LOGIN", True)}
        self._auth_callback = lambda mechanism, login, password: password == b"pw"


@pytest.mark.engine("inline", "task")
def test_settings_set_after_construction_take_effect(start: ServerFactory) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing warns: auth_required was set late
        server = start(None, cls=LateSettings)
    with LineClient(server.port) as client:
        client.send(b"EHLO c\r\n")
        assert b"250-AUTH LOGIN PLAIN" in client.lines()  # _auth_require_tls
        assert client.cmd("MAIL FROM:<a@example.com>") == (
            b"530 5.7.0 Authentication required"  # _auth_required
        )
        assert client.cmd("AUTH PLAIN " + b64("\0u\0wrong")) == (
            b"535 5.7.8 Authentication credentials invalid"
        )
        assert client.cmd("AUTH PLAIN " + b64("\0u\0s3cret")) == (  # _authenticator
            b"235 2.7.0 Authentication successful"
        )
        assert client.cmd("MAIL FROM:<a@example.com>") == b"250 OK"


@pytest.mark.engine("inline", "task")
def test_mechanisms_and_callback_set_after_construction(start: ServerFactory) -> None:
    server = start(None, cls=LateMechanisms)
    with LineClient(server.port) as client:
        client.send(b"EHLO c\r\n")
        assert b"250-AUTH LOGIN" in client.lines()  # _auth_methods
        assert client.cmd("AUTH PLAIN " + b64("\0u\0pw")) == (
            b"504 5.5.4 Unrecognized authentication type"
        )
        assert client.cmd("AUTH LOGIN " + b64("u")) == b"334 " + b64("Password\0").encode()
        assert client.cmd(b64("pw")) == b"235 2.7.0 Authentication successful"  # _auth_callback
