"""AUTH: result types, the mechanism registry, the built-in mechanisms, log redaction.

A connection's AUTH settings, mechanisms and failed attempts live in one
``AuthState`` (``SMTP._auth``), which takes every decision about them
without I/O.  The ``AUTH`` command (``smtp_AUTH``) and the mechanisms are
methods of ``SMTP`` written here, as functions of an ``SMTP`` (smtp.py lists
them): they ask the state, and talk to the client.  PLAIN and LOGIN are
always built in; CRAM-MD5, XOAUTH2 and OAUTHBEARER only when
``auth_enable_mechanism`` names them (their message formats: ``_sasl.py``).
The pure pieces (base64 rules, redaction) have no I/O.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import warnings
from collections.abc import Awaitable, Iterable
from operator import attrgetter
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    NamedTuple,
    Optional,
    TypeVar,
    Union,
)

import attr

from aiosmtpd import metrics as _m
from aiosmtpd._discovery import names_with_prefix
from aiosmtpd._hooks import MISSING, _Missing, syntax
from aiosmtpd._sasl import (
    MalformedResponse,
    OAuthBearerCredentials,
    XOAuth2Credentials,
    cram_md5_challenge,
    error_status,
    parse_cram_md5,
    parse_oauthbearer,
    parse_xoauth2,
)

if TYPE_CHECKING:  # pragma: no cover
    from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger("mail.log")

RT = TypeVar("RT")


class LoginPassword(NamedTuple):
    login: bytes
    password: bytes

    def __str__(self) -> str:
        # Never show the password; never raise (a non-UTF-8 login made
        # upstream's repr raise; a deviation listed in CHANGES.rst).
        login = self.login.decode("utf-8", errors="backslashreplace")
        return f"LoginPassword(login='{login}', password=...)"

    def __repr__(self) -> str:
        return str(self)


@attr.s(auto_attribs=True, kw_only=True, eq=True, repr=False)
class AuthResult:
    """What an AUTH mechanism or an ``authenticator`` returns."""

    success: bool
    handled: bool = True
    message: Optional[str] = None
    auth_data: Any = None

    def __repr__(self) -> str:
        # auth_data may hold credentials: never show it.
        return (
            f"AuthResult(success={self.success!r}, handled={self.handled!r}, "
            f"message={self.message!r}, auth_data=...)"
        )


AuthCallbackType = Callable[[str, bytes, bytes], bool]
AuthenticatorType = Callable[["SMTP", "Session", "Envelope", str, Any], AuthResult]
AuthMechanismType = Callable[["SMTP", list[str]], Awaitable[Any]]


def login_always_fail(mechanism: str, login: bytes, password: bytes) -> bool:
    """The default ``auth_callback``: AUTH is always on, and always fails."""
    return False


VALID_AUTHMECH = re.compile(r"[A-Z0-9_-]+\Z")


def auth_mechanism(
    actual_name: str,
) -> Callable[[Callable[..., RT]], Callable[..., RT]]:
    """Give an ``auth_<name>`` method an AUTH mechanism name of its own."""
    name = actual_name.upper()
    if not VALID_AUTHMECH.match(name):
        raise ValueError(f"Invalid AUTH mechanism name: {name}")

    def decorator(f: Callable[..., RT]) -> Callable[..., RT]:
        f.__auth_mechanism_name__ = name  # type: ignore[attr-defined]
        return f

    return decorator


CLIENT_AUTH_B = re.compile(
    rb"(?P<prefix>\s*AUTH\s+\S+[ \t]+)(?P<param>\S+)(?P<crlf>\r\n)?", re.IGNORECASE
)


def sanitize(text: bytes) -> bytes:
    """Mask the initial response of an ``AUTH <mechanism> <response>`` line."""
    m = CLIENT_AUTH_B.match(text)
    if m is None:
        return text
    return m.group("prefix") + b"********" + (m.group("crlf") or b"")


def sanitized_log(func: Callable[..., Any], msg: str, *args: Any, **kwargs: Any) -> None:
    """Call a logging function with every ``bytes`` argument sanitized."""
    func(msg, *(sanitize(a) if isinstance(a, bytes) else a for a in args), **kwargs)


_STRICT_B64 = re.compile(
    rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z"
)


def decode_b64(blob: Union[str, bytes]) -> bytes:
    """Decode an AUTH response strictly; a lone ``=`` is the empty response.

    RFC 4954 section 4 defines ``=`` as an empty response; CPython 3.11 made
    validating base64 decoding reject it, so upstream's behaviour depended on
    the Python version (a deviation listed in CHANGES.rst).  Raises
    :class:`binascii.Error`.
    """
    if isinstance(blob, str):
        blob = blob.encode("ascii", errors="replace")
    if blob == b"=":
        return b""
    if not _STRICT_B64.match(blob):
        raise binascii.Error("Invalid base64")
    return base64.b64decode(blob, validate=True)


# The optional built-in mechanisms (auth_enable_mechanism): name -> method.
# The methods are not named auth_*, so that nothing registers them unasked.
OPTIONAL_MECHANISMS: dict[str, str] = {
    "CRAM-MD5": "_sasl_cram_md5",
    "OAUTHBEARER": "_sasl_oauthbearer",
    "XOAUTH2": "_sasl_xoauth2",
}

# The longest answer to a 334 challenge of XOAUTH2 and OAUTHBEARER: OAuth
# access tokens (JWTs) are often longer than line_length_limit, and RFC 4954
# section 4 wants servers to take the responses of the mechanisms they offer.
BEARER_LINE_LIMIT = 16384

# The error challenges' default JSON (RFC 7628 section 3.2.2; Google's XOAUTH2
# uses HTTP status codes).  A failed AuthResult whose auth_data is a dict of
# strings replaces it.
DEFAULT_ERROR_STATUS: dict[str, dict[str, str]] = {
    "XOAUTH2": {"status": "401", "schemes": "bearer"},
    "OAUTHBEARER": {"status": "invalid_token"},
}


def optional_mechanisms(names: Union[str, Iterable[str], None]) -> list[str]:
    """The validated names of ``auth_enable_mechanism``, upper-cased."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    chosen = []
    for name in names:
        upper = name.upper() if isinstance(name, str) else name
        if upper not in OPTIONAL_MECHANISMS:
            raise ValueError(
                f"auth_enable_mechanism: unknown optional AUTH mechanism {name!r} "
                f"(choose from {', '.join(sorted(OPTIONAL_MECHANISMS))})"
            )
        chosen.append(upper)
    return chosen


# Registries shared between connections, keyed by their content.
_registries: dict[tuple[tuple[str, tuple[str, bool]], ...], dict[str, tuple[str, bool]]] = {}


class ResponseTooLong(ValueError):
    """A challenge response longer than ``line_length_limit``.

    Upstream's reply names the class: ``500 Error: (ValueError) ...``, so the
    subclass keeps that name.  It exists so that the default exception path
    can log a client's mistake without an ERROR traceback: any client could
    otherwise fill the log with them.
    """


ResponseTooLong.__name__ = ResponseTooLong.__qualname__ = "ValueError"


# -- AUTH's state and decisions: no I/O -----------------------------------------


class AuthState:
    """AUTH on one connection: its settings, its mechanisms, its failed
    attempts, and every decision about them.  No I/O: ``smtp_AUTH`` and
    EHLO ask, then reply (``tests/test_auth_state.py`` checks each decision
    without a socket).

    One per connection, settings included: the failed attempts are the
    connection's, and code written for 1.4.6 changes the settings of one
    server after construction (``server._auth_required = True``; SMTP's
    properties of those names set them here).  The registry of mechanisms
    is shared (see ``mechanisms``).
    """

    __slots__ = (
        "required", "require_tls", "authenticator", "callback", "methods",
        "failures", "failure_limit",
    )

    def __init__(
        self,
        methods: dict[str, tuple[str, bool]],
        *,
        required: bool = False,
        require_tls: bool = True,
        authenticator: Optional[AuthenticatorType] = None,
        callback: AuthCallbackType = login_always_fail,
        failure_limit: Optional[int] = None,
    ) -> None:
        #: Mechanism name -> (attribute name, is_builtin): a built-in's method
        #: is the server's, another's the handler's (see ``mechanisms``).
        self.methods = methods
        #: ``auth_required``: MAIL, RCPT, DATA... need AUTH first (530).
        self.required = required
        #: ``auth_require_tls``: AUTH only over TLS (538; not in EHLO before).
        self.require_tls = require_tls
        self.authenticator = authenticator
        self.callback = callback
        #: Failed attempts on this connection; at ``failure_limit``, AUTH gets 421.
        self.failures = 0
        self.failure_limit = failure_limit

    def advertised(self, tls_active: bool) -> bool:
        """Whether EHLO lists AUTH (and MAIL takes ``AUTH=``)."""
        # Deviation (CHANGES.rst): no "250-AUTH " line with an empty registry.
        return bool(self.methods) and (not self.require_tls or tls_active)

    def ehlo_line(self) -> str:
        """EHLO's AUTH line: the mechanisms, sorted."""
        return "250-AUTH " + " ".join(sorted(self.methods))

    def needs_tls(self, tls_active: bool) -> bool:
        """Whether AUTH is refused for want of TLS (538)."""
        return self.require_tls and not tls_active

    def needed(self, authenticated: Optional[bool]) -> bool:
        """Whether a command is refused for want of AUTH (530)."""
        return self.required and not authenticated

    def failed(self) -> None:
        self.failures += 1

    def over_limit(self) -> bool:
        """Whether the failed attempts have reached ``auth_failure_limit``:
        AUTH then gets 421 and the connection ends."""
        limit = self.failure_limit
        return limit is not None and self.failures >= limit

    def find(self, name: str) -> Optional[str]:
        """The registered mechanism ``name`` means, or None (504)."""
        # Deviation (CHANGES.rst): SASL names are case-insensitive; the
        # registry's spelling is what handlers and mechanisms see.
        if name in self.methods:
            return name
        upper = name.upper()
        for known in self.methods:
            if known.upper() == upper:
                return known
        return None

    def check(
        self,
        server: SMTP,
        session: Optional[Session],
        envelope: Optional[Envelope],
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        """The credential check (``SMTP._authenticate``, which subclasses
        override): the ``authenticator`` if there is one, else ``auth_callback``."""
        if self.authenticator is not None:
            return self.authenticator(
                server,
                session,  # type: ignore[arg-type]
                envelope,  # type: ignore[arg-type]
                mechanism,
                auth_data,
            )
        if not isinstance(auth_data, LoginPassword):
            # auth_callback only knows passwords: the optional mechanisms
            # need an authenticator.
            return AuthResult(success=False, handled=False)
        if self.callback(mechanism, *auth_data):
            return AuthResult(success=True, handled=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)


def setting(name: str) -> Any:
    """A property of ``SMTP`` that reads and sets ``self._auth.<name>``: the
    upstream names of AUTH's settings, for code written for 1.4.6."""
    return property(
        attrgetter("_auth." + name),
        lambda server, value: setattr(server._auth, name, value),
    )


def mechanisms(
    server: Any,
    handler: Any,
    exclude: Optional[Iterable[str]],
    enable: Union[str, Iterable[str], None],
) -> dict[str, tuple[str, bool]]:
    """The AUTH mechanisms of a connection: name -> (attribute, is_builtin).

    The optional built-ins come first, then the server's ``auth_*`` methods,
    then the handler's, so that a handler's auth_PLAIN (or auth_CRAM__MD5)
    replaces the built-in one.  The names, not bound methods, are kept:
    equal registries are shared between connections.
    """
    registry: dict[str, tuple[str, bool]] = {
        name: (OPTIONAL_MECHANISMS[name], True) for name in optional_mechanisms(enable)
    }
    for obj, builtin in ((server, True), (handler, False)):
        for name in names_with_prefix(obj, "auth_"):
            mechanism = getattr(getattr(obj, name), "__auth_mechanism_name__", None)
            if mechanism is None:
                mechanism = name[5:].replace("__", "-")
            registry[mechanism] = (name, builtin)
    for mechanism in exclude or ():
        registry.pop(mechanism, None)
    key = tuple(registry.items())
    shared = _registries.get(key)
    if shared is None and len(_registries) < 256:
        shared = _registries[key] = registry
    return shared if shared is not None else registry


def auth_state(
    server: SMTP,
    handler: Any,
    *,
    auth_required: bool,
    auth_require_tls: bool,
    auth_exclude_mechanism: Optional[Iterable[str]],
    auth_callback: Optional[AuthCallbackType],
    authenticator: Optional[AuthenticatorType],
    failure_limit: Optional[int],
    enable_mechanism: Union[str, Iterable[str], None],
) -> AuthState:
    """``SMTP()``'s AUTH arguments, checked (in 1.4.6's order), as an AuthState."""
    if failure_limit is not None and (
        not isinstance(failure_limit, int) or failure_limit < 1
    ):
        raise ValueError("auth_failure_limit must be None or a positive int")
    if auth_required and not auth_require_tls:
        warnings.warn(
            "Requiring AUTH while not requiring TLS can lead to "
            "security vulnerabilities!", stacklevel=3  # SMTP()'s caller
        )
        log.warning("auth_required == True but auth_require_tls == False")
    state = AuthState(
        mechanisms(server, handler, auth_exclude_mechanism, enable_mechanism),
        required=auth_required,
        require_tls=auth_require_tls,
        authenticator=authenticator,
        callback=auth_callback or login_always_fail,
        failure_limit=failure_limit,
    )
    if log.isEnabledFor(logging.INFO):
        log.info(
            "Available AUTH mechanisms: %s",
            " ".join(
                f"{m}(builtin)" if builtin else m
                for m, (_, builtin) in sorted(state.methods.items())
            ),
        )
    return state


# -- The AUTH command and the mechanisms: methods of SMTP ----------------------------


def _authenticate(self: SMTP, mechanism: str, auth_data: Any) -> AuthResult:
    return self._auth.check(self, self.session, self.envelope, mechanism, auth_data)


async def challenge_auth(
    self: SMTP,
    challenge: Union[str, bytes],
    encode_to_b64: bool = True,
    log_client_response: bool = False,
) -> Union[_Missing, bytes]:
    """Send a ``334`` challenge; return the decoded response or MISSING."""
    line = await self._exchange(challenge, encode_to_b64, self.line_length_limit)
    if log_client_response:
        warnings.warn("AUTH interaction logging is enabled!", stacklevel=2)
        warnings.warn("Sensitive information might be leaked!", stacklevel=2)
        log.debug("%r >> %r", self.session.peer if self.session else None, line)
    return await self._decode_response(line)


async def _exchange(
    self: SMTP, challenge: Union[str, bytes], encode_to_b64: bool, limit: int
) -> bytes:
    """Send ``334 <challenge>`` and read the answer, up to ``limit`` bytes."""
    peer = self.session.peer if self.session else None
    if isinstance(challenge, str):
        challenge = challenge.encode()
    if encode_to_b64:
        challenge = base64.b64encode(challenge)
    log.debug("%r << challenge: %r", peer, challenge)
    await self.push(b"334 " + challenge)
    line = await self._readline(limit)
    if line is None:
        # The text asyncio's stream reader used in 1.4.6 (docs/decisions.rst,
        # "An over-long AUTH response").
        raise ResponseTooLong("Separator is found, but chunk is longer than limit")
    # Deviation (CHANGES.rst): an answering client is not idle.
    self._reset_timeout()
    return line


async def _decode_response(self: SMTP, line: bytes) -> Union[_Missing, bytes]:
    """The decoded answer to a challenge, or MISSING after a 501 reply."""
    peer = self.session.peer if self.session else None
    blob = line.strip()
    if blob == b"*":
        log.warning("%r aborted AUTH with '*'", peer)
        await self.push("501 5.7.0 Auth aborted")
        return MISSING
    try:
        return decode_b64(blob)
    except binascii.Error:
        # Deviation (CHANGES.rst): the blob may be a mistyped secret.
        log.debug("%r can't decode base64", peer)
        await self.push("501 5.5.2 Can't decode base64")
        return MISSING


async def _auth_interact(self: SMTP, server_message: Union[str, bytes]) -> Union[_Missing, bytes]:
    warnings.warn(
        "_auth_interact will be deprecated in version 2.0. "
        "Please use challenge_auth() instead.",
        DeprecationWarning, stacklevel=2,
    )
    if isinstance(server_message, bytes):
        server_message = server_message.decode()
    if server_message.startswith("334 "):
        server_message = server_message[4:]
    return await self.challenge_auth(challenge=server_message, encode_to_b64=False)


async def _decode_initial_response(self: SMTP, blob: str) -> Union[_Missing, bytes]:
    try:
        return decode_b64(blob)
    except binascii.Error:
        await self.push("501 5.5.2 Can't decode base64")
        return MISSING


async def auth_PLAIN(self: SMTP, _: Any, args: list[str]) -> AuthResult:
    if len(args) == 1:
        response = await self.challenge_auth("")
    else:
        response = await self._decode_initial_response(args[1])
    if response is MISSING:
        return AuthResult(success=False)
    assert isinstance(response, bytes)
    parts = response.split(b"\x00")
    if len(parts) != 3:
        await self.push("501 5.5.2 Can't split auth value")
        return AuthResult(success=False)
    # The authorization identity (parts[0]) is ignored, as upstream.
    return self._authenticate("PLAIN", LoginPassword(parts[1], parts[2]))


async def auth_LOGIN(self: SMTP, _: Any, args: list[str]) -> AuthResult:
    if len(args) == 1:
        login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
    else:
        login = await self._decode_initial_response(args[1])
    if login is MISSING:
        return AuthResult(success=False)
    password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
    if password is MISSING:
        return AuthResult(success=False)
    assert isinstance(login, bytes) and isinstance(password, bytes)
    return self._authenticate("LOGIN", LoginPassword(login, password))

# -- The optional mechanisms (auth_enable_mechanism) -------------------------------


async def _sasl_cram_md5(self: SMTP, _: Any, args: list[str]) -> AuthResult:
    """CRAM-MD5 (RFC 2195): one challenge, ``user SP hex-digest`` back."""
    if len(args) > 1:
        # RFC 4954 section 4: a server-first mechanism takes no initial
        # response.
        await self.push("501 5.5.2 Initial response not allowed")
        return AuthResult(success=False)
    challenge = cram_md5_challenge(self.hostname)
    response = await self.challenge_auth(challenge)
    if response is MISSING:
        return AuthResult(success=False)
    assert isinstance(response, bytes)
    try:
        credentials = parse_cram_md5(response, challenge)
    except MalformedResponse:
        await self.push("501 5.5.2 Can't split auth value")
        return AuthResult(success=False)
    return self._authenticate("CRAM-MD5", credentials)


async def _sasl_xoauth2(self: SMTP, _: Any, args: list[str]) -> Any:
    return await self._bearer_exchange("XOAUTH2", args, parse_xoauth2)


async def _sasl_oauthbearer(self: SMTP, _: Any, args: list[str]) -> Any:
    return await self._bearer_exchange("OAUTHBEARER", args, parse_oauthbearer)


async def _bearer_exchange(
    self: SMTP,
    mechanism: str,
    args: list[str],
    parse: Callable[[bytes], Union[XOAuth2Credentials, OAuthBearerCredentials]],
) -> Any:
    """XOAUTH2 and OAUTHBEARER: the client sends its token first (initial
    response, or the answer to an empty ``334``); on failure the server
    sends an error challenge (``334 <base64 JSON>``), the client answers
    (XOAUTH2: an empty line, OAUTHBEARER: ``^A``), then ``535``."""
    if len(args) == 1:
        line = await self._exchange(b"", False, BEARER_LINE_LIMIT)
        response = await self._decode_response(line)
    else:
        response = await self._decode_initial_response(args[1])
    if response is MISSING:
        return AuthResult(success=False)
    assert isinstance(response, bytes)
    try:
        credentials = parse(response)
    except MalformedResponse:
        await self.push("501 5.5.2 Can't split auth value")
        return AuthResult(success=False)
    result = self._authenticate(mechanism, credentials)
    if isinstance(result, AuthResult):
        failed = not result.success and not result.handled
    else:
        failed = result is False or result is MISSING
    if not failed:
        return result
    status = getattr(result, "auth_data", None)
    if not (isinstance(status, dict) and status):
        status = DEFAULT_ERROR_STATUS[mechanism]
    line = await self._exchange(error_status(status), True, BEARER_LINE_LIMIT)
    if await self._decode_response(line) is MISSING:
        # "*" or bad base64: already answered with 501.
        return AuthResult(success=False)
    return result


@syntax("AUTH <mechanism>")
async def smtp_AUTH(self: SMTP, arg: Optional[str]) -> None:
    if await self.check_helo_needed("EHLO"):
        return
    assert self.session is not None and self.envelope is not None
    if not self.session.extended_smtp:
        await self.push(self._code("500 Error: command 'AUTH' not recognized", "5.5.2"))
        return
    auth = self._auth
    if auth.needs_tls(self._tls_active):
        await self.push(
            "538 5.7.11 Encryption required for requested authentication mechanism"
        )
        return
    if self.session.authenticated:
        await self.push(self._code("503 Already authenticated", "5.5.1"))
        return
    if auth.over_limit():
        log.warning("%r too many failed AUTH attempts", self.session.peer)
        await self.push("421 4.7.0 Too many failed authentication attempts, goodbye.")
        self._close()
        return
    if self.envelope.mail_from:
        # Deviation (CHANGES.rst): RFC 4954 forbids AUTH in a transaction.
        await self.push("503 5.5.1 Error: MAIL transaction in progress")
        return
    # str.split() also splits on "\x1c".."\x1f" and Unicode spaces, which
    # the command line's bytes.strip() left in place: "AUTH \x1c" is
    # no mechanism either (it raised IndexError).
    args = arg.split() if arg else []
    if not args:
        await self.push(self._code("501 Not enough value", "5.5.4"))
        return
    if len(args) > 2:
        await self.push(self._code("501 Too many values", "5.5.4"))
        return
    mechanism = auth.find(args[0])
    if mechanism is None:
        await self.push("504 5.5.4 Unrecognized authentication type")
        return
    args[0] = mechanism
    status = await self._call_handler_hook("AUTH", args)
    if status is not MISSING:
        if status is not None:
            await self.push(status)
        return
    name, is_builtin = auth.methods[mechanism]
    method = getattr(self if is_builtin else self.event_handler, name)
    log.debug(
        "Using %s auth_ hook for %r", "builtin" if is_builtin else "handler", mechanism
    )
    result = await method(self, args)
    log.debug("auth_%s returned %r", mechanism, result)
    await self._apply_auth_result(result)


def _auth_failed(self: SMTP) -> None:
    self._auth.failed()
    self._count(_m.AUTH_FAILURES)


async def _apply_auth_result(self: SMTP, result: Any) -> None:
    assert self.session is not None
    session = self.session
    if isinstance(result, AuthResult):
        if result.success:
            session.authenticated = True
            session.auth_data = result.auth_data
            session.login_data = getattr(result.auth_data, "login", None)
            await self.push(result.message or "235 2.7.0 Authentication successful")
        else:
            self._auth_failed()
            if not result.handled:
                await self.push(
                    result.message or "535 5.7.8 Authentication credentials invalid"
                )
    elif result is None:
        pass  # legacy: the mechanism has replied already
    elif result is MISSING or result is False:
        self._auth_failed()
        await self.push("535 5.7.8 Authentication credentials invalid")
    else:
        # Legacy "identity" result; upstream forgot to mark the session
        # authenticated (a deviation listed in CHANGES.rst).
        session.login_data = result
        session.authenticated = True
        session.auth_data = result
        await self.push("235 2.7.0 Authentication successful")
