"""The SMTP protocol: :class:`SMTP`, :class:`Session`, :class:`Envelope`.

This module is the public face: the connection's life cycle, replies, and
the one door into user code (``SMTP._user_code``).  ``SMTP`` is one class;
its commands are written beside it, by concern, as functions of an ``SMTP``
that the class lists at its end: the command loop in ``_command_loop``,
HELO/EHLO/NOOP/QUIT/RSET/VRFY/EXPN/HELP in ``_session_commands``,
MAIL/RCPT/DATA/BDAT in ``_transaction``, AUTH in ``_auth``, STARTTLS in
``_starttls``, XCLIENT in ``_xclient``; the PROXY header in ``_proxy_flow``.
The pieces that need no I/O are pure modules: the received bytes and their
phase in ``_receiver``, the command gate in ``_command_gate``, the argument
grammar in ``_grammar``, DATA framing in ``_framing``, when a connection may
be ended in ``_departure``; AUTH's state and decisions are ``_auth.AuthState``.

Data flows one way: socket bytes -> receiver -> command line (gate) or
message pieces -> ``smtp_<VERB>`` method -> handler hook -> reply.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Coroutine, Iterable, Mapping, MutableMapping, Sequence
from types import MappingProxyType
from typing import (
    Any,
    Callable,
    Optional,
    Union,
)

from aiosmtpd import (
    __version__,
    _auth,
    _command_loop,
    _grammar,
    _session_commands,
    _starttls,
    _transaction,
    _xclient,
)
from aiosmtpd import metrics as _m

# Names outside __all__ that are public (docs/smtp.rst) or that code written
# for upstream imports from here ("Upstream internals" there): "X as X"
# marks the re-export for type checkers.
from aiosmtpd._auth import CLIENT_AUTH_B as CLIENT_AUTH_B
from aiosmtpd._auth import VALID_AUTHMECH as VALID_AUTHMECH
from aiosmtpd._auth import (
    AuthCallbackType,
    AuthMechanismType,
    LoginPassword,
    ResponseTooLong,
    auth_mechanism,
    sanitize,
    sanitized_log,
)
from aiosmtpd._auth import AuthenticatorType as AuthenticatorType
from aiosmtpd._auth import AuthResult as AuthResult
from aiosmtpd._auth import login_always_fail as login_always_fail
from aiosmtpd._command_gate import BOGUS_LIMIT as BOGUS_LIMIT
from aiosmtpd._command_gate import CALL_LIMIT_DEFAULT as CALL_LIMIT_DEFAULT
from aiosmtpd._command_gate import CommandGate, CommandSizeLimits, call_limits
from aiosmtpd._departure import AFTER_DELIVERY, Departure
from aiosmtpd._discovery import (
    NO_HOOKS,
    command_names,
    ehlo_hook_version,
    names_with_prefix,
    without_command,
)
from aiosmtpd._dsn import RecipientDSN as RecipientDSN
from aiosmtpd._hooks import MISSING, syntax
from aiosmtpd._hooks import RT as RT
from aiosmtpd._hooks import DecoratorType as DecoratorType
from aiosmtpd._hooks import _Missing as _Missing
from aiosmtpd._inline import (
    CLOSED,
    DRIVING,
    HOP,
    IDLE,
    STARTING,
    TASK,
    engine_class,
    runs_commands_inline,
)
from aiosmtpd._loop import get_or_new_eventloop, wake
from aiosmtpd._message_body import (
    CLOSED_BY_SERVER,
    CONNECTION_LOST,
    TIMED_OUT,
    TRANSACTION_RESET,
    Incoming,
)
from aiosmtpd._message_body import MessageAborted as MessageAborted
from aiosmtpd._message_body import MessageBody as MessageBody
from aiosmtpd._proxy_flow import checked_proxy_timeout
from aiosmtpd._receiver import Receiver
from aiosmtpd._sasl import CramMD5Response as CramMD5Response
from aiosmtpd._sasl import OAuthBearerCredentials as OAuthBearerCredentials
from aiosmtpd._sasl import XOAuth2Credentials as XOAuth2Credentials
from aiosmtpd._starttls import (
    TLSSetupException,
    check_tls_context,
    handshake_timeout,
    tls_info,
    tls_protocol_of,
)
from aiosmtpd._streams import StreamReaderView, StreamWriterView
from aiosmtpd._xclient import Network, TrustedNetworks, after_starttls
from aiosmtpd._xclient import XClient as XClient
from aiosmtpd.operations import Operations, address_of
from aiosmtpd.proxy_protocol import ProxyData as ProxyData
from aiosmtpd.proxy_protocol import get_proxy as get_proxy

__all__ = [
    "AuthCallbackType",
    "AuthMechanismType",
    "MISSING",
    "__version__",
    "LoginPassword",
    "Session",
    "Envelope",
    "syntax",
    "auth_mechanism",
    "TLSSetupException",
    "sanitize",
    "sanitized_log",
    "SMTP",
]

__ident__ = "Python SMTP " + __version__

DATA_SIZE_DEFAULT = 2**25
ALLOWED_BEFORE_STARTTLS = frozenset({"NOOP", "EHLO", "STARTTLS", "QUIT"})

log = logging.getLogger("mail.log")

# The deadlines' 421s (docs/operations.rst, "Timeouts"): 4.4.2, "bad connection".
DATA_TOO_SLOW = "421 4.4.2 Timeout waiting for data, closing connection"
SESSION_TOO_LONG = "421 4.4.2 Session time limit reached, closing connection"
# How long a goodbye waits for the client to close (see _say_goodbye).
LINGER_SECONDS = 2.0

EMPTYBYTES = b""
EMPTY_BARR = bytearray()


def make_loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop, created and installed if there is none."""
    return get_or_new_eventloop()


def is_int(o: Any) -> bool:
    return isinstance(o, int)


class Session:
    """The state of one client connection."""

    #: What a trusted client said with XCLIENT (docs/xclient.rst); a class
    #: attribute, so that sessions without XCLIENT pay nothing for it.
    xclient: Optional[XClient] = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.peer: Any = None
        self.ssl: Optional[dict[str, Any]] = None
        self.host_name: Optional[str] = None
        self.extended_smtp = False
        self.loop = loop
        self.proxy_data: Any = None
        self.auth_data: Any = None
        self.authenticated: Optional[bool] = None
        self._login_data: Any = None

    @property
    def login_data(self) -> Any:
        log.warning("Session.login_data is deprecated and will be removed in version 2.0")
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        log.warning("Session.login_data is deprecated and will be removed in version 2.0")
        self._login_data = value


class Envelope:
    """The state of one mail transaction."""

    # Set only when the client sends them (docs/extensions.rst); class
    # defaults keep a plain transaction as cheap as 1.4.6's.
    #: RET of DSN (RFC 3461) on MAIL: "FULL" or "HDRS".
    dsn_ret: Optional[str] = None
    #: ENVID of DSN on MAIL, decoded from xtext.
    dsn_envid: Optional[str] = None
    #: NOTIFY and ORCPT of DSN, by accepted recipient address.
    dsn_recipients: Mapping[str, RecipientDSN] = MappingProxyType({})
    #: AUTH on MAIL (RFC 4954): the mailbox, or "<>" (always "<>" when the
    #: session has not authenticated).
    mail_auth: Optional[str] = None

    def __init__(self) -> None:
        self.mail_from: Optional[str] = None
        self.mail_options: list[str] = []
        self.smtp_utf8 = False
        self.content: Union[None, bytes, str] = None
        self.original_content: Optional[bytes] = None
        self.rcpt_tos: list[str] = []
        self.rcpt_options: list[str] = []


# socket.getfqdn() may cost a DNS round trip; upstream paid it on every
# connection.  A short-lived cache keeps the value current without that cost.
_FQDN_TTL = 60.0
_fqdn_cache: tuple[float, str] = (-_FQDN_TTL, "")


def _fqdn() -> str:
    global _fqdn_cache
    now = time.monotonic()
    if now - _fqdn_cache[0] >= _FQDN_TTL:
        _fqdn_cache = (now, socket.getfqdn())
    return _fqdn_cache[1]


@engine_class
class SMTP(asyncio.StreamReaderProtocol, asyncio.BufferedProtocol):
    """An asyncio protocol serving one SMTP connection."""

    # Slots keep a connection small: with its base class's attributes the
    # instance dict would outgrow CPython's compact shared-key layout.
    # Subclasses still get a __dict__ (from the asyncio base class).
    __slots__ = (
        "event_handler", "data_size_limit", "enable_SMTPUTF8", "hostname", "tls_context",
        "require_starttls", "session", "envelope", "transport", "loop",
        "_decode_data", "_strict_line_endings", "_max_recipients", "_idle_timeout",
        "_timeout_duration",
        "_timeout_handle", "_last_activity", "_proxy_timeout", "_handle_hooks",
        "_ehlo_hook_ver", "_call_limits", "_smtp_commands",
        "_receiver", "_waiter", "_reading_paused", "_handler_coroutine",
        "_writable", "_lost_waiter",
        "_original_transport", "_tls_protocol", "_tls_handshake_okay",
        "_reader_view", "_writer_view", "_auth",
        "_inline", "_run", "_suspended", "_turn", "_gate",
        "_ops", "_metrics", "_departure", "_message",
        "_session_timer", "_data_timeout", "_session_timeout",
        "_tls_handshake_timeout", "_brief_tls_errors", "_cork", "_linger",
        "enable_PIPELINING", "enable_ENHANCEDSTATUSCODES", "enable_DSN", "enable_CHUNKING",
        "_xclient_trusted",
    )

    # The command budgets, made when the greeting is sent (_begin_commands).
    _gate: CommandGate
    # XCLIENT's trusted networks, set up by _xclient._init_xclient.
    _xclient_trusted: Optional[tuple[Network, ...]]

    command_size_limit = 512
    command_size_limits: MutableMapping[str, int] = {}
    line_length_limit = 1001
    local_part_limit = 0
    AuthLoginUsernameChallenge = "User Name\x00"
    AuthLoginPasswordChallenge = "Password\x00"

    def __init__(
        self,
        handler: Any,
        *,
        data_size_limit: Optional[int] = DATA_SIZE_DEFAULT,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
        hostname: Optional[str] = None,
        ident: Optional[str] = None,
        tls_context: Optional[ssl.SSLContext] = None,
        require_starttls: bool = False,
        timeout: float = 300,
        auth_required: bool = False,
        auth_require_tls: bool = True,
        auth_exclude_mechanism: Optional[Any] = None,
        auth_callback: Optional[AuthCallbackType] = None,
        command_call_limit: Union[int, dict[str, int], None] = None,
        authenticator: Optional[AuthenticatorType] = None,
        proxy_protocol_timeout: Optional[Union[int, float]] = None,
        loop: Optional[asyncio.AbstractEventLoop] = None,
        strict_line_endings: bool = False,
        max_recipients: Optional[int] = None,
        auth_failure_limit: Optional[int] = None,
        operations: Optional[Operations] = None,
        data_timeout: Optional[float] = None,
        session_timeout: Optional[float] = None,
        tls_handshake_timeout: Optional[float] = None,
        brief_tls_errors: bool = False,
        enable_PIPELINING: bool = False,
        enable_ENHANCEDSTATUSCODES: bool = False,
        enable_DSN: bool = False,
        enable_CHUNKING: bool = False,
        xclient_trusted: Optional[TrustedNetworks] = None,
        auth_enable_mechanism: Union[str, Iterable[str], None] = None,
    ) -> None:
        self.loop = loop if loop else get_or_new_eventloop()
        # No StreamReader: the protocol keeps its own receive buffer.  First,
        # so that the base class's __del__ finds its state if we raise below.
        super().__init__(None, loop=self.loop)  # type: ignore[arg-type]
        # An explicit check rather than `assert`: it must survive `python -O`.
        if not (data_size_limit is None or isinstance(data_size_limit, int)):
            raise AssertionError("data_size_limit must be None or int")
        self.__ident__ = ident or __ident__
        self.event_handler = handler
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        self._strict_line_endings = strict_line_endings
        if max_recipients is not None and (
            not isinstance(max_recipients, int) or max_recipients < 1
        ):
            raise ValueError("max_recipients must be None or a positive int")
        self._max_recipients = max_recipients
        self.hostname = hostname if hostname else _fqdn()
        self.tls_context = tls_context
        if tls_context:
            check_tls_context(tls_context)
        self.require_starttls = tls_context and require_starttls
        # The idle timeout; _timeout_duration is the one running now (the
        # PROXY handshake has its own).
        self._idle_timeout = timeout
        self._timeout_duration = timeout
        self._timeout_handle: Optional[asyncio.TimerHandle] = None
        self._last_activity = 0.0
        self._proxy_timeout = checked_proxy_timeout(proxy_protocol_timeout)
        self._data_timeout = _checked_timeout("data_timeout", data_timeout)
        self._session_timeout = _checked_timeout("session_timeout", session_timeout)
        self._session_timer: Optional[asyncio.TimerHandle] = None
        self._tls_handshake_timeout = (
            handshake_timeout(timeout)
            if tls_handshake_timeout is None
            else _checked_timeout("tls_handshake_timeout", tls_handshake_timeout)
        )
        self._brief_tls_errors = brief_tls_errors
        self._attach(operations)
        # When a connection the server wants to end may be ended (drain,
        # session deadline): never while a command runs or the handler delivers.
        self._departure = Departure()
        # The message being received (DATA, or BDAT chunks until LAST).
        self._message: Optional[Incoming] = None
        # Replies held back while pipelined command lines wait (see _flush).
        self._cork: Optional[list[bytes]] = None
        # Set while a goodbye lingers (see _say_goodbye): input is dropped.
        self._linger: Optional[asyncio.TimerHandle] = None
        self.enable_PIPELINING = enable_PIPELINING
        self.enable_ENHANCEDSTATUSCODES = enable_ENHANCEDSTATUSCODES
        self.enable_DSN = enable_DSN
        self.enable_CHUNKING = enable_CHUNKING
        # AUTH's settings, mechanisms and failed attempts (_auth.AuthState).
        self._auth = _auth.auth_state(
            self,
            handler,
            auth_required=auth_required,
            auth_require_tls=auth_require_tls,
            auth_exclude_mechanism=auth_exclude_mechanism,
            auth_callback=auth_callback,
            authenticator=authenticator,
            failure_limit=auth_failure_limit,
            enable_mechanism=auth_enable_mechanism,
        )

        self._handle_hooks: dict[str, Callable[..., Any]] = {
            name[7:]: getattr(handler, name)
            for name in names_with_prefix(handler, "handle_")
        } or NO_HOOKS
        self._ehlo_hook_ver = ehlo_hook_version(self._handle_hooks.get("EHLO"))
        # (per-command limits, default), for the budgets made at the greeting.
        self._call_limits = call_limits(command_call_limit)

        self.command_size_limits = CommandSizeLimits(
            self.command_size_limit, type(self).command_size_limits
        )
        # Names only: binding a method per command per connection costs
        # memory on every idle connection; commands are bound when used.
        self._smtp_commands = command_names(self)
        self._init_xclient(xclient_trusted)
        if not enable_CHUNKING:  # the default: BDAT is no command at all
            self._smtp_commands = without_command(type(self), self._smtp_commands, "BDAT")

        self.transport: Optional[asyncio.BaseTransport] = None
        self.session: Optional[Session] = None
        self.envelope: Optional[Envelope] = None
        # The received bytes, and what they are now (_receiver.py).
        self._receiver = Receiver()
        self._waiter: Optional[asyncio.Future[None]] = None
        self._reading_paused = False
        self._handler_coroutine: Optional[asyncio.Task[None]] = None
        # Flow control of our own (pause_writing / resume_writing, public
        # protocol callbacks) rather than asyncio's private helpers: a
        # future while the transport's write buffer is over its high mark;
        # a future for _wait_closed, or _LOST once the connection is lost.
        # (Two slots, not three: one more pushes the instance into a larger
        # allocator size class, which idle connections pay for.)
        self._writable: Optional[asyncio.Future[None]] = None
        self._lost_waiter: Union[None, asyncio.Future[None], object] = None
        # Commands run inside data_received when the class allows it (see
        # _pump); _run says who serves the commands now, _suspended holds the
        # inline command that waits for client bytes.
        self._inline = runs_commands_inline(type(self))
        self._run = STARTING
        self._suspended: Optional[Coroutine[Any, Any, bool]] = None
        # The next turn of the loop, when _pump left lines for it (fairness).
        self._turn: Optional[asyncio.Handle] = None
        self._original_transport: Optional[asyncio.BaseTransport] = None
        # The TLS layer once the connection is encrypted (STARTTLS or implicit
        # TLS); code written for upstream reads it to know whether TLS is on.
        self._tls_protocol: Any = None
        self._tls_handshake_okay = True
        # Made on first use (see the _reader and _writer properties).
        self._reader_view: Optional[StreamReaderView] = None
        self._writer_view: Optional[StreamWriterView] = None

    # -- Overridable factories and helpers used by subclasses ------------------

    @property
    def max_command_size_limit(self) -> int:
        try:
            return max(self.command_size_limits.values())
        except ValueError:
            return self.command_size_limit

    def _create_session(self) -> Session:
        return Session(self.loop)

    def _create_envelope(self) -> Envelope:
        return Envelope()

    def _set_rset_state(self) -> None:
        self._abandon_message(TRANSACTION_RESET)
        self.envelope = self._create_envelope()

    def _set_post_data_state(self) -> None:
        self.envelope = self._create_envelope()

    def _strip_command_keyword(self, keyword: str, arg: str) -> Optional[str]:
        return _grammar.strip_keyword(keyword, arg)

    def _getaddr(self, arg: str) -> tuple[Optional[str], Optional[str]]:
        return _grammar.get_address(arg, self.local_part_limit)

    def _getparams(self, params: list[str]) -> Optional[dict[str, Union[str, bool]]]:
        return _grammar.get_params(params)

    def _command_method(self, command: str) -> Optional[Callable[[Optional[str]], Awaitable[Any]]]:
        if command in self._smtp_commands:
            return getattr(self, "smtp_" + command)  # type: ignore[no-any-return]
        return None

    def _syntax_available(self, method: Any) -> bool:
        if not hasattr(method, "__smtp_syntax__"):
            return False
        when = getattr(method, "__smtp_syntax_when__", None)
        return not when or bool(getattr(self, when))

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        hook = self._handle_hooks.get(command)
        if hook is None:
            return MISSING
        return await self._user_code(hook, self, self.session, self.envelope, *args)

    async def _user_code(self, call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``await call(*args)``, in a Task: the one door into user code.

        Handler hooks, ``handle_exception``, ``process_message``, the
        deprecated hooks, and the AUTH and STARTTLS commands (authenticators,
        mechanisms, ``handle_STARTTLS``) all pass here.  A command run inline
        moves into the connection's Task first (docs/internals.rst, "Inline
        commands and the Task"); a stream hook gets a Task of its own
        (``_message_body``).
        """
        if self._run is DRIVING:
            await HOP
        return await call(*args)

    def __del__(self) -> None:
        # An instance whose __init__ never ran to the base class (bad
        # arguments) lacks its state, and Python 3.9's
        # StreamReaderProtocol.__del__ would raise AttributeError.
        if "_closed" in self.__dict__:
            base_del = getattr(super(), "__del__", None)
            if base_del is not None:
                base_del()

    # -- asyncio protocol callbacks ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.transport is not None:
            # Called again by STARTTLS with the TLS transport, as upstream did
            # (code that counts connections sees two calls).
            self._tls_established(transport)
            return
        self._set_rset_state()
        self.session = self._create_session()
        peer = self.session.peer = transport.get_extra_info("peername")
        self._reset_timeout()
        self.transport = transport
        log.info("Peer: %r", peer)
        if self._ops is not None and not self._admitted(peer):
            return
        if self._session_timeout is not None:
            self._session_timer = self.loop.call_later(
                self._session_timeout, self._session_expired
            )
        # Implicit TLS (SMTPS): the transport is already encrypted, and the
        # session counts as TLS (CHANGES.rst, "Implicit TLS").
        if transport.get_extra_info("ssl_object") is not None:
            self._tls_protocol = tls_protocol_of(transport)
            self.session.ssl = tls_info(transport)
            self._count(_m.TLS_HANDSHAKES)
        log.info("%r handling connection", peer)
        if not _serves_itself(self):
            # A subclass (or a test's patch) took over _handle_client(): it
            # decides what the client sees first, as it could upstream.
            self._to(TASK)
            self._handler_coroutine = self.loop.create_task(self._handle_client())
            return
        # Without PROXY the greeting goes out now rather than one loop
        # iteration later from the task: a client waits for nothing else.
        greeted = self._proxy_timeout is None and self._greet(transport)
        if greeted and self._inline:
            # No Task until a command needs one: data_received serves the rest.
            self._begin_commands()
            self._to(IDLE)
        else:
            self._to(TASK)
            self._handler_coroutine = self.loop.create_task(self._serve_session(greeted))

    def _admitted(self, peer: Any) -> bool:
        """Whether the connection limits let this client in; if not, it is
        told so and disconnected, before any handler code runs."""
        assert self._ops is not None
        refusal = self._ops.opened(self, peer)
        if refusal is None and self._proxy_timeout is None:
            refusal = self._identified(address_of(peer))
        if refusal is None:
            return True
        self._to(CLOSED)
        self._say_goodbye(refusal, greeted=True)
        return False

    def _identified(self, address: object) -> Optional[str]:
        """The per-address limit, once the client's address is known (the
        peer's, or the PROXY header's source)."""
        assert self._ops is not None
        if not isinstance(address, str) or not address:
            return None  # a Unix socket's peer has no address
        return self._ops.identified(self, address)

    def _tls_established(self, transport: asyncio.BaseTransport) -> None:
        """STARTTLS is done: the RFC 3207 reset, on the TLS transport."""
        assert self.session is not None
        self._original_transport = self.transport
        self.transport = transport
        for view in (self._reader_view, self._writer_view):
            if view is not None:
                view._transport = transport
        if self._tls_protocol is None:
            self._tls_protocol = tls_protocol_of(transport)
        old_session = self.session
        self._set_rset_state()
        self.session = self._create_session()
        self.session.peer = transport.get_extra_info("peername")
        self.session.proxy_data = old_session.proxy_data
        after_starttls(old_session, self.session)
        self.session.ssl = tls_info(transport)
        self._reset_timeout()

    def _greet(self, transport: asyncio.BaseTransport) -> bool:
        try:
            data = self._encode(f"220 {self.hostname} {self.__ident__}")
        except UnicodeEncodeError:
            return False  # the task's push() reports it as upstream did
        transport.write(data + b"\r\n")  # type: ignore[attr-defined]
        self._count(_m.REPLY_CLASS[ord("2")])
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%r << %r", self.session.peer if self.session else None, data)
        return True

    def connection_lost(self, exc: Optional[Exception]) -> None:
        peer = self.session.peer if self.session else None
        log.info("%r connection lost", peer)
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
            self._timeout_handle = None
        if self._session_timer is not None:
            self._session_timer.cancel()
            self._session_timer = None
        if self._linger is not None:
            self._linger.cancel()
        if self._ops is not None:
            self._ops.closed(self)
        if self._original_transport is not None:
            self._original_transport.close()
        super().connection_lost(exc)
        wake(self._writable)
        if isinstance(self._lost_waiter, asyncio.Future):
            wake(self._lost_waiter)
        self._writable, self._lost_waiter = None, _LOST
        self._stop_commands()
        self._abandon_message(CONNECTION_LOST)  # BDAT chunks that had no LAST
        self.transport = None

    def eof_received(self) -> Optional[bool]:
        log.info("%r EOF received", self.session.peer if self.session else None)
        if self._linger is not None:
            return False  # the client has our goodbye and is gone: close
        if self._reader_view is not None:
            self._reader_view.feed_eof()
        self._stop_commands()
        if self.session is not None and self.session.ssl is not None:
            return False
        return super().eof_received()

    # -- Inactivity timer -----------------------------------------------------------

    def _reset_timeout(self) -> None:
        # Restarting a TimerHandle per command is costly; instead the timer
        # checks the time of the last activity when it fires and re-arms.
        self._last_activity = self.loop.time()
        if self._timeout_handle is None:
            self._timeout_handle = self.loop.call_at(
                self._last_activity + self._timeout_duration, self._timeout_cb
            )

    def _set_timeout(self, duration: float) -> None:
        """Restart the inactivity timer with a new duration."""
        self._timeout_duration = duration
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
            self._timeout_handle = None
        self._reset_timeout()

    def _timeout_cb(self) -> None:
        self._timeout_handle = None
        deadline = self._last_activity + self._timeout_duration
        if self.loop.time() < deadline:
            self._timeout_handle = self.loop.call_at(deadline, self._timeout_cb)
            return
        log.info("%r connection timeout", self.session.peer if self.session else None)
        if self.transport is not None:
            self.transport.close()
        in_proxy_header = self._proxy_timeout is not None and not self._greeted()
        self._count(_m.TIMEOUT_PROXY if in_proxy_header else _m.TIMEOUT_IDLE)

    # -- Leaving: limits, drain, deadlines (docs/operations.rst) --------------------

    def _attach(self, operations: Optional[Operations]) -> None:
        """Count this connection with ``operations`` (its limits, drain, metrics)."""
        self._ops = operations
        self._metrics = operations.metrics if operations is not None else None

    def _code(self, reply: str, enhanced: Optional[str]) -> str:
        """``reply`` with its enhanced status code (RFC 2034, RFC 3463) when
        ENHANCEDSTATUSCODES is on; replies a handler chose never pass here."""
        if enhanced is None or not self.enable_ENHANCEDSTATUSCODES:
            return reply
        return f"{reply[:4]}{enhanced} {reply[4:]}"

    def _count(self, index: int, amount: int = 1) -> None:
        if self._metrics is not None:
            self._metrics.values[index] += amount

    def _say_goodbye(self, reply: str, greeted: Optional[bool] = None) -> None:
        """Send ``reply`` (a 421) and close, now.  Nothing is sent before
        the greeting (a PROXY header is still awaited)."""
        if self._cork is not None:
            self._flush()
        if self._ending():
            return
        self._abandon_message(CLOSED_BY_SERVER)
        transport: Any = self.transport
        if greeted is None:
            greeted = self._greeted()
        if greeted:
            self._reply_transport().write(reply.encode("ascii") + b"\r\n")
            log.info("%r << %r", self.session.peer if self.session else None, reply)
            self._count(_m.REPLY_CLASS[ord(reply[0])])
        if self._writer_view is not None or not transport.can_write_eof():
            transport.close()  # TLS: close_notify, then the close
            return
        # A lingering close: closed with unread input, a socket sends a
        # reset, and the client's TCP stack may then drop the goodbye before
        # the client reads it (a client that pipelines, or is still sending
        # DATA, always has input on its way).  So: our side ends (FIN after
        # the reply), what the client still sends is read and dropped, and
        # the connection closes when the client closes, or after LINGER_SECONDS.
        self._receiver.close()
        transport.write_eof()
        self._linger = self.loop.call_later(LINGER_SECONDS, transport.close)
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    def _leave(self, reply: str, after: str) -> int:
        """End the connection with ``reply`` as soon as it is safe: now if
        it is idle, else after its transaction (``after="transaction"``) or
        after the handler's delivery (``"delivery"``); ``Departure`` decides.
        Returns 1 when a handler is delivering (the caller waits for it), else 0."""
        if self._ending():
            return 0
        departure = self._departure
        if departure.leave(reply, after, self._in_transaction()):
            self._say_goodbye(reply)
            return 0
        return int(departure.delivering)

    def _ending(self) -> bool:
        """Whether the connection is gone or closing (or saying goodbye)."""
        transport = self.transport
        return transport is None or transport.is_closing() or self._linger is not None

    def _greeted(self) -> bool:
        """Whether the client has had the greeting (the command budgets
        start with it): before, a PROXY header is awaited and nothing is sent."""
        return hasattr(self, "_gate")

    def _in_transaction(self) -> bool:
        return self.envelope is not None and bool(self.envelope.mail_from)

    def _leaving_now(self) -> bool:
        """After a command: whether a goodbye that waited is due (then sent)."""
        reply = self._departure.due(self._in_transaction())
        if reply is None:
            return False
        self._say_goodbye(reply)
        return True

    def _closing_done(self) -> bool:
        """Whether nothing here is worth waiting for any more (for drain)."""
        transport = self.transport
        return self._departure.settled(transport is None or transport.is_closing())

    def _session_expired(self) -> None:
        self._session_timer = None
        log.info("%r session timeout", self.session.peer if self.session else None)
        self._count(_m.TIMEOUT_SESSION)
        self._leave(SESSION_TOO_LONG, after=AFTER_DELIVERY)

    def _data_expired(self) -> None:
        log.info("%r DATA timeout", self.session.peer if self.session else None)
        self._count(_m.TIMEOUT_DATA)
        self._abandon_message(TIMED_OUT)
        self._say_goodbye(DATA_TOO_SLOW)

    # -- Replies --------------------------------------------------------------------

    def _encode(self, status: Union[str, bytes]) -> bytes:
        if isinstance(status, str):
            return status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        if isinstance(status, bytes):
            return status
        raise TypeError(f"push() argument must be str or bytes, not {type(status).__name__}")

    async def push(self, status: Union[str, bytes]) -> None:
        await self._write(self._encode(status))

    async def _write(self, data: bytes, lines: Sequence[bytes] = ()) -> None:
        transport: Any = self.transport
        if transport is None or self._linger is not None:
            raise ConnectionResetError("Connection lost")
        if self._writer_view is not None:
            # Replies go through _writer, as upstream's did: code written for
            # it that does its own STARTTLS swaps _writer._transport only.
            transport = self._writer_view._transport
        cork = self._cork
        if cork is None:
            transport.write(data + b"\r\n")
        else:
            cork.append(data + b"\r\n")
        metrics = self._metrics
        if metrics is not None and data:
            index = _m.REPLY_CLASS.get(data[0])
            if index is not None:
                metrics.values[index] += 1
        if log.isEnabledFor(logging.DEBUG):
            # As upstream logs them (docs/decisions.rst, "One log record per reply line").
            for line in lines or (data,):
                log.debug("%r << %r", self.session.peer if self.session else None, line)
        if self._writable is not None:
            await self._drain()

    def _flush(self) -> None:
        """Send the replies held back while answering pipelined commands
        (see _command_loop._pump): one write, so one TCP segment for a
        group of replies rather than one each (RFC 2920 section 3.2)."""
        cork, self._cork = self._cork, None
        if cork and self.transport is not None:
            self._reply_transport().write(b"".join(cork))

    def _reply_transport(self) -> Any:
        """Where replies go: ``_writer``'s transport once that is in use, as
        in 1.4.6 (code that does its own STARTTLS swaps only that one).
        ``_write`` makes the same choice inline: it runs for every reply."""
        if self._writer_view is not None:
            return self._writer_view._transport
        return self.transport

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._writable is None:
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        super().resume_writing()
        wake(self._writable)
        self._writable = None

    async def _drain(self) -> None:
        """Wait while the transport's write buffer is over its high mark;
        ConnectionResetError once the connection is lost (as
        ``StreamWriter.drain``)."""
        waiter = self._writable
        if waiter is not None and self._lost_waiter is not _LOST:
            await waiter
        if self._lost_waiter is _LOST:
            raise ConnectionResetError("Connection lost")

    async def _wait_closed(self) -> None:
        """Wait until the connection is lost."""
        waiter = self._lost_waiter
        if waiter is _LOST:
            return
        if waiter is None:
            waiter = self._lost_waiter = self.loop.create_future()
        assert isinstance(waiter, asyncio.Future)
        await asyncio.shield(waiter)

    # -- Upstream's internals that code written for it uses -------------------------

    @property
    def _tls_active(self) -> bool:
        """Whether the connection is encrypted.

        Derived from ``_tls_protocol`` so that a subclass that performs its
        own STARTTLS and sets ``_tls_protocol``, as code written for upstream
        does, counts as TLS.
        """
        return self._tls_protocol is not None

    @property
    def _reader(self) -> StreamReaderView:
        """The client's bytes as an ``asyncio.StreamReader``-like stream."""
        view = self._reader_view
        if view is None:
            view = self._reader_view = StreamReaderView(self)
        return view

    @_reader.setter
    def _reader(self, view: StreamReaderView) -> None:
        self._reader_view = view

    @property
    def _writer(self) -> StreamWriterView:
        """The connection's transport as an ``asyncio.StreamWriter``-like stream."""
        view = self._writer_view
        if view is None:
            view = self._writer_view = StreamWriterView(self)
        return view

    @_writer.setter
    def _writer(self, view: StreamWriterView) -> None:
        self._writer_view = view

    def _wake_reader(self) -> None:
        wake(self._waiter)

    async def _push_lines(self, lines: Sequence[Union[str, bytes]]) -> None:
        """Push several reply lines with one transport write: a multi-line
        reply sent line by line costs a syscall and a TCP segment per line."""
        if lines:
            encoded = [self._encode(line) for line in lines]
            await self._write(b"\r\n".join(encoded), encoded)

    async def handle_exception(self, error: Exception) -> Any:
        handler_method = getattr(self.event_handler, "handle_exception", None)
        if handler_method is not None:
            return await handler_method(error)
        peer = self.session.peer if self.session else None
        if isinstance(error, ResponseTooLong):
            log.warning("%r AUTH response too long", peer)
        elif isinstance(error, TLSSetupException) and self._brief_tls_errors:
            log.warning("%r TLS handshake failed: %s", peer, _cause(error))
        else:
            log.exception("%r SMTP session exception", peer)
        return self._code(f"500 Error: ({error.__class__.__name__}) {error}", "5.0.0")

    async def _reply_to_exception(self, error: Exception) -> bool:
        """Reply to an exception raised by a command; False ends the session."""
        peer = self.session.peer if self.session else None
        try:
            status = await self._user_code(self.handle_exception, error)
        except Exception as inner:
            log.exception("%r Exception in handle_exception()", peer)
            status = self._code(_describe_error(inner), "5.0.0")
        if isinstance(error, TLSSetupException):
            if self.transport is not None:
                self.transport.close()
            self.connection_lost(error)
            return False
        if not isinstance(status, (str, bytes)):
            # Upstream died silently here and left the client hanging.
            log.error(
                "%r handle_exception() returned %r, not a reply; sending the default one",
                peer,
                status,
            )
            status = self._code(_describe_error(error), "5.0.0")
        await self.push(status)
        return True

    def _allowed_before_starttls(self) -> frozenset[str]:
        return ALLOWED_BEFORE_STARTTLS

    async def _accept_proxy_header(self) -> bool:
        """Read and accept the PROXY header; False closes the connection."""
        from aiosmtpd._proxy_flow import accept_proxy_header

        return await accept_proxy_header(self)

    # -- Guards -------------------------------------------------------------------------

    async def check_helo_needed(self, helo: str = "HELO") -> bool:
        assert self.session is not None
        if not self.session.host_name:
            await self.push(self._code(f"503 Error: send {helo} first", "5.5.1"))
            return True
        return False

    async def check_auth_needed(self, caller_method: str) -> bool:
        assert self.session is not None
        if self._auth.needed(self.session.authenticated):
            log.info("%s: Authentication required", caller_method)
            await self.push("530 5.7.0 Authentication required")
            return True
        return False

    # -- The parts of the engine, by concern ---------------------------------------------
    #
    # Methods written in their own modules, as functions of an SMTP (their
    # first parameter is ``self: SMTP``): one class, no mixins, and the type
    # checker sees every field as SMTP declares it (docs/internals.rst,
    # "Where the code is").

    # Receiving, the command loop, and where each command runs (_command_loop)
    get_buffer = _command_loop.get_buffer
    buffer_updated = _command_loop.buffer_updated
    data_received = _command_loop.data_received
    _received = _command_loop._received
    _resume_reading = _command_loop._resume_reading
    _wait_for_data = _command_loop._wait_for_data
    _readline = _command_loop._readline
    _handle_client = _command_loop._handle_client
    _serve_session = _command_loop._serve_session
    _open_session = _command_loop._open_session
    _begin_commands = _command_loop._begin_commands
    _lost_during_command = _command_loop._lost_during_command
    _serve_commands = _command_loop._serve_commands
    _process_line = _command_loop._process_line
    _close = _command_loop._close
    _to = _command_loop._to
    _pump = _command_loop._pump
    _answer_lines = _command_loop._answer_lines
    _next_turn = _command_loop._next_turn
    _continue = _command_loop._continue
    _stop_commands = _command_loop._stop_commands
    _drive = _command_loop._drive

    # HELO, EHLO, NOOP, QUIT, RSET, VRFY, EXPN, HELP (_session_commands)
    smtp_HELO = _session_commands.smtp_HELO
    smtp_EHLO = _session_commands.smtp_EHLO
    _ehlo = _session_commands._ehlo
    smtp_NOOP = _session_commands.smtp_NOOP
    smtp_QUIT = _session_commands.smtp_QUIT
    smtp_RSET = _session_commands.smtp_RSET
    smtp_VRFY = _session_commands.smtp_VRFY
    smtp_EXPN = _session_commands.smtp_EXPN
    smtp_HELP = _session_commands.smtp_HELP

    # The mail transaction: MAIL, RCPT, DATA, BDAT (_transaction)
    _syntax_error = _transaction._syntax_error
    smtp_MAIL = _transaction.smtp_MAIL
    smtp_RCPT = _transaction.smtp_RCPT
    smtp_DATA = _transaction.smtp_DATA
    _incoming = _transaction._incoming
    _deliver_message = _transaction._deliver_message
    _remember_mail_parameters = _transaction._remember_mail_parameters
    smtp_BDAT = _transaction.smtp_BDAT
    _abandon_message = _transaction._abandon_message
    _chunking_refuses_data = _transaction._chunking_refuses_data
    _message_begins = _transaction._message_begins
    _message_ends = _transaction._message_ends
    _read_chunk = _transaction._read_chunk
    _message_unseen = _transaction._message_unseen
    _data_failed = _transaction._data_failed
    _delivery_status = _transaction._delivery_status
    _handler_verdict = _transaction._handler_verdict
    _deliver = _transaction._deliver
    _read_data = _transaction._read_data

    # AUTH and its mechanisms (_auth)
    _authenticate = _auth._authenticate
    _decode_response = _auth._decode_response
    _auth_interact = _auth._auth_interact
    _decode_initial_response = _auth._decode_initial_response
    auth_PLAIN = _auth.auth_PLAIN
    auth_LOGIN = _auth.auth_LOGIN
    _sasl_cram_md5 = _auth._sasl_cram_md5
    _sasl_xoauth2 = _auth._sasl_xoauth2
    _sasl_oauthbearer = _auth._sasl_oauthbearer
    smtp_AUTH = _auth.smtp_AUTH
    _auth_failed = _auth._auth_failed
    _apply_auth_result = _auth._apply_auth_result
    challenge_auth = _auth.challenge_auth
    _exchange = _auth._exchange
    _bearer_exchange = _auth._bearer_exchange
    # AUTH's settings under their 1.4.6 names, read and set by code written
    # for it (testing._protocol sets _auth_required); they live in self._auth.
    _auth_methods = _auth.setting("methods")
    _authenticator = _auth.setting("authenticator")
    _auth_callback = _auth.setting("callback")
    _auth_required = _auth.setting("required")
    _auth_require_tls = _auth.setting("require_tls")

    # STARTTLS (_starttls)
    smtp_STARTTLS = _starttls.smtp_STARTTLS

    # XCLIENT (_xclient)
    _init_xclient = _xclient._init_xclient
    _xclient_client = _xclient._xclient_client
    _ehlo_lines = _xclient._ehlo_lines
    smtp_XCLIENT = _xclient.smtp_XCLIENT
    _xclient_reset = _xclient._xclient_reset

    @property
    def _xclient_advertised(self) -> bool:
        return _xclient._xclient_advertised(self)

_OWN_HANDLE_CLIENT = SMTP._handle_client


def _serves_itself(server: SMTP) -> bool:
    """Whether ``server`` runs our own ``_handle_client`` (not a subclass's
    override or a test's patch of it)."""
    return (
        type(server)._handle_client is _OWN_HANDLE_CLIENT
        and "_handle_client" not in server.__dict__
    )


# SMTP._lost_waiter once the connection is lost.
_LOST = object()


def _checked_timeout(name: str, value: Optional[float]) -> Optional[float]:
    if value is not None and (isinstance(value, bool) or not value > 0):
        raise ValueError(f"{name} must be None or a number of seconds > 0, not {value!r}")
    return value


def _cause(error: BaseException) -> str:
    """What went wrong under ``error``, on one line."""
    cause = error.__cause__ or error
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__


def _describe_error(error: BaseException) -> str:
    try:
        return f"500 Error: ({error.__class__.__name__}) {error}"
    except Exception:
        return "500 Error: Cannot describe error"

