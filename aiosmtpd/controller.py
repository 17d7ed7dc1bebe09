"""Run an SMTP server without writing the asyncio plumbing yourself.

Threaded controllers (``Controller``, ``UnixSocketController``) own a daemon
thread with a private event loop and offer blocking ``start()``/``stop()``.
Unthreaded controllers (``UnthreadedController``,
``UnixSocketUnthreadedController``) only open and close the listener inside a
loop that the caller runs (``begin()``/``end()``/``finalize()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import ipaddress
import logging
import os
import socket
import ssl
import sys
import threading
import time
import warnings
import weakref
from abc import ABCMeta, abstractmethod
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any, ClassVar, Literal, TypeVar

from aiosmtpd._starttls import handshake_timeout
from aiosmtpd.operations import Operations
from aiosmtpd.smtp import SMTP

__all__ = [
    "IP6_IS",
    "get_localhost",
    "BaseController",
    "BaseThreadedController",
    "BaseUnthreadedController",
    "InetMixin",
    "UnixSocketMixin",
    "Controller",
    "UnixSocketController",
    "UnthreadedController",
    "UnixSocketUnthreadedController",
]

DEFAULT_READY_TIMEOUT: float = 5.0

# The readiness probe talks to our own listener; one second is ample on
# loopback and bounds how long a silent server (PROXY protocol) delays start().
_PROBE_TIMEOUT = 1.0

# Bounds the final drain of cancelled tasks so that a task which refuses to
# die cannot make stop() hang.
_DRAIN_TIMEOUT = 5.0

_TIMEOUT_ENV = "AIOSMTPD_CONTROLLER_TIMEOUT"

_SERVER_KWARGS_DEPRECATION = (
    "server_kwargs will be removed in version 2.0. Just specify the keyword "
    "arguments to forward to SMTP as kwargs to this __init__ method."
)
_NOT_READY = (
    "SMTP server failed to start within allotted time. This might happen if "
    "the system is too busy. Try increasing the `ready_timeout` parameter."
)
_NOT_RESPONDING = (
    "SMTP server started, but not responding within allotted time. This might "
    "happen if the system is too busy. Try increasing the `ready_timeout` "
    "parameter."
)

log = logging.getLogger("mail.log")
# SMTP's own default inactivity timeout, for listeners whose factory gets none.
_SMTP_TIMEOUT: float = inspect.signature(SMTP).parameters["timeout"].default

_T = TypeVar("_T")
_TC = TypeVar("_TC", bound="BaseThreadedController")
_UC = TypeVar("_UC", bound="BaseUnthreadedController")


# ---------------------------------------------------------------- localhost


class IP6_IS:
    """``errno`` values of a failed ``::1`` bind, telling whether IPv6 works.

    Both sets are mutable on purpose: users may adapt them to odd platforms,
    and ``get_localhost()`` reads them at call time.
    """

    NO: ClassVar[set[int]] = {errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}
    YES: ClassVar[set[int]] = {errno.EADDRINUSE}


def get_localhost() -> Literal["::1", "127.0.0.1"]:
    """Return ``"::1"`` if IPv6 loopback is usable here, else ``"127.0.0.1"``."""
    if not socket.has_ipv6:
        return "127.0.0.1"
    # A build flag is not proof: kernels and containers can disable IPv6, and
    # only an actual bind tells.
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError as error:
        if error.errno in IP6_IS.NO:
            return "127.0.0.1"
        if error.errno in IP6_IS.YES:
            return "::1"
        raise
    return "::1"


# ------------------------------------------------------------------ helpers


class _ClosingProtocol(asyncio.Protocol):
    """Serves a connection whose ``factory()`` failed: hang up at once.

    Keeping the connection open would stall the readiness probe and, on
    Python >= 3.12, make ``Server.wait_closed()`` (and so ``stop()``) wait
    forever.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def _client_context_for(server_context: ssl.SSLContext) -> ssl.SSLContext:
    """A client context able to handshake with our own SMTPS listener.

    Verification is off because the probe only ever talks to itself; the
    server's options are copied so both ends agree on protocol versions.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.options = server_context.options
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _read_greeting(sock: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
    """Read the greeting on a connected probe socket, then close it."""
    with sock:
        if ssl_context is None:
            sock.recv(1024)
            return
        # wrap_socket() inherits the probe timeout, so the handshake is
        # bounded too.
        with _client_context_for(ssl_context).wrap_socket(sock) as tls:
            tls.recv(1024)


def _run_to_completion(loop: asyncio.AbstractEventLoop, awaitable: Awaitable[_T]) -> _T:
    """``loop.run_until_complete()`` that closes a coroutine it could not run.

    Without this, a loop that is closed or already running would also leave
    a "coroutine was never awaited" warning behind.
    """
    try:
        return loop.run_until_complete(awaitable)
    except BaseException:
        # A coroutine that did start belongs to its task now; leave it be.
        if inspect.iscoroutine(awaitable) and (
            inspect.getcoroutinestate(awaitable) == inspect.CORO_CREATED
        ):
            awaitable.close()
        raise


def _address_family(host: str) -> int | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # a host name: resolution decides the family
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


def _caller_stacklevel() -> int:
    """Stack level of the first frame outside this module, for warnings.

    The depth of the cooperative ``__init__`` chain depends on the concrete
    class, so a fixed ``stacklevel`` would blame the wrong line.
    """
    level = 1
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
        level += 1
    return level


# ------------------------------------------------------------ base classes


class BaseController(metaclass=ABCMeta):
    """What every controller shares: SMTP parameters, the per-connection
    ``factory()`` call, and the loop it all runs on."""

    server: asyncio.Server | None = None
    smtpd: SMTP | None = None
    #: The awaitable from _create_server() that opened ``server``, kept while
    #: the listener is open, as upstream did.
    server_coro: Awaitable[asyncio.Server] | None = None
    # Only where no start() probe exists to surface factory() errors.
    _log_factory_errors: ClassVar[bool] = False

    def __init__(
        self,
        handler: Any,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        **SMTP_parameters: Any,
    ) -> None:
        self.handler = handler
        # Only a loop we created may be replaced when it is found closed on
        # restart; a caller's loop is the caller's business.
        self._owns_loop = loop is None
        self.loop = asyncio.new_event_loop() if loop is None else loop
        self.ssl_context = ssl_context
        self.SMTP_kwargs: dict[str, Any] = {}
        #: Limits, drain and metrics shared by this controller's connections
        #: (docs/operations.rst); given, or made from the keywords.
        self.operations: Operations = SMTP_parameters.pop("operations", None) or Operations(
            max_connections=SMTP_parameters.pop("max_connections", None),
            max_connections_per_ip=SMTP_parameters.pop("max_connections_per_ip", None),
            metrics=SMTP_parameters.pop("metrics", False),
        )
        if "server_kwargs" in SMTP_parameters:
            warnings.warn(
                _SERVER_KWARGS_DEPRECATION,
                DeprecationWarning,
                stacklevel=_caller_stacklevel(),
            )
            server_kwargs = SMTP_parameters.pop("server_kwargs")
            # Copied, never aliased: the caller's dict stays untouched.
            if server_kwargs is not None:
                self.SMTP_kwargs.update(server_kwargs)
        self.SMTP_kwargs.update(SMTP_parameters)
        if server_hostname:
            self.SMTP_kwargs["hostname"] = server_hostname
        # Controllers default to SMTPUTF8 on, unlike SMTP itself.
        self.SMTP_kwargs.setdefault("enable_SMTPUTF8", True)
        self._factory_invoked = threading.Event()
        self._thread_exception: BaseException | None = None
        # Lets stop() find connections that outlive their cancelled session
        # (asyncio.Server offers no list of them before Python 3.13).
        self._protocols: weakref.WeakSet[asyncio.BaseProtocol] = weakref.WeakSet()

    def factory(self) -> SMTP:
        """Build the protocol instance for one connection; override to customise."""
        return SMTP(self.handler, **self.SMTP_kwargs)

    def _listener_tls(self) -> dict[str, Any]:
        """The TLS keywords of create_server(): the context and, with it, a
        handshake bounded by the SMTP ``timeout``."""
        if self.ssl_context is None:
            return {"ssl": None}
        timeout = handshake_timeout(self.SMTP_kwargs.get("timeout", _SMTP_TIMEOUT))
        return {"ssl": self.ssl_context, "ssl_handshake_timeout": timeout}

    @abstractmethod
    def _create_server(self) -> Awaitable[asyncio.Server]:
        """Return an awaitable that opens the listener.

        It must not call ``factory()``: asyncio calls the protocol factory
        once per accepted connection.
        """

    def _factory_invoker(self) -> asyncio.BaseProtocol:
        """The protocol factory handed to asyncio."""
        try:
            self.smtpd = self.factory()
            protocol = self.smtpd
            if protocol is None:
                raise RuntimeError("factory() returned None")
            if isinstance(protocol, SMTP) and protocol._ops is None:
                # Also for a factory() that does not pass operations=.
                protocol._attach(self.operations)
            with contextlib.suppress(TypeError):  # not weak-referenceable
                self._protocols.add(protocol)
            return protocol
        except Exception as error:
            # Raising here would only make asyncio log and drop the socket;
            # recording the error lets start() report it to the caller.
            self._thread_exception = error
            if self._log_factory_errors:
                log.error("factory() raised an exception", exc_info=error)
            return _ClosingProtocol()
        finally:
            self._factory_invoked.set()

    def cancel_tasks(self, stop_loop: bool = True) -> None:
        """Optionally stop the loop, then cancel every task on it.

        Not thread-safe: from another thread, schedule it with
        ``loop.call_soon_threadsafe(controller.cancel_tasks)``.
        """
        if stop_loop:
            self.loop.stop()
        for task in asyncio.all_tasks(self.loop):
            task.cancel()

    async def _drain_connections(self, timeout: float) -> None:
        """Stop accepting, then let the connections finish (graceful stop)."""
        if self.server is not None:
            self.server.close()
        await self.operations.drain(timeout)

    def _cleanup(self) -> None:
        self.operations.draining = False
        self.server = None
        self.server_coro = None
        self.smtpd = None
        self._thread_exception = None
        self._factory_invoked.clear()


class BaseThreadedController(BaseController, metaclass=ABCMeta):
    """Runs the server on a private loop in a daemon thread."""

    _thread: threading.Thread | None = None

    def __init__(
        self,
        handler: Any,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        **SMTP_parameters: Any,
    ) -> None:
        # Parsed before the base class creates a loop, so that a bad value
        # does not leak an unclosed loop.  The environment wins so test
        # runners on slow machines can raise every timeout at once.
        env_timeout = os.environ.get(_TIMEOUT_ENV)
        self.ready_timeout = float(ready_timeout if env_timeout is None else env_timeout)
        super().__init__(
            handler,
            loop,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            **SMTP_parameters,
        )

    @abstractmethod
    def _trigger_server(self) -> None:
        """Connect to the listener and read the greeting.

        asyncio only calls the protocol factory when a connection arrives,
        so this is what makes ``factory()`` run (and fail) inside
        ``start()``.
        """

    def _run(self, ready: threading.Event) -> None:
        """Body of the server thread."""
        loop = self.loop
        # The SMTP constructor picks up the thread's current loop.
        asyncio.set_event_loop(loop)
        try:
            self.server_coro = self._create_server()
            self.server = _run_to_completion(loop, self.server_coro)
        except Exception as error:
            self._thread_exception = error
            try:
                if not loop.is_running():  # never touch a foreign, running loop
                    self._drain(loop)
            finally:
                # Wake start() now instead of letting it sit out ready_timeout.
                ready.set()
            return
        # Signal from inside the loop, so start() knows it is really running.
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            server, self.server = self.server, None
            if server is not None:
                server.close()
            # The cancelled sessions close their connections gracefully...
            self._drain(loop)
            # ...but a TLS connection then waits for the peer's close_notify
            # (up to 30 s), and a write buffer for a peer that does not read.
            # Cut them, or the loop would close with sockets still open (and
            # 3.12+ wait_closed() below would wait for them).
            for protocol in list(self._protocols):
                transport = getattr(protocol, "transport", None)
                if isinstance(transport, asyncio.WriteTransport):
                    transport.abort()
            self._protocols.clear()
            if server is not None:
                loop.run_until_complete(server.wait_closed())
            self._drain(loop)
            loop.close()

    @staticmethod
    def _drain(loop: asyncio.AbstractEventLoop) -> None:
        """Let cancelled tasks finish and queued callbacks run."""
        tasks = asyncio.all_tasks(loop)
        if tasks:
            loop.run_until_complete(asyncio.wait(tasks, timeout=_DRAIN_TIMEOUT))
        # One more pass runs the connection_lost callbacks that closing queued.
        loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(loop.shutdown_asyncgens())

    def start(self) -> None:
        """Start the server thread; return once it accepts connections.

        On failure nothing is cleaned up, so the state can be inspected;
        call ``stop()`` afterwards in any case.
        """
        if self._thread is not None:
            raise AssertionError("SMTP daemon already running")
        if self.loop.is_closed():
            if not self._owns_loop:
                raise RuntimeError("Event loop is closed")
            self.loop = asyncio.new_event_loop()
        self._factory_invoked.clear()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        started = time.monotonic()
        self._thread.start()
        ready.wait(self.ready_timeout)
        if self._thread_exception is not None:
            raise self._thread_exception
        if not ready.is_set():
            raise TimeoutError(_NOT_READY)
        remaining = self.ready_timeout - (time.monotonic() - started)
        try:
            self._trigger_server()
        except socket.timeout:
            pass  # the server may stay silent (PROXY protocol); not an error
        except OSError:
            # A failed factory() makes the server hang up on the probe; the
            # factory error is then the real cause worth reporting.
            if self._thread_exception is not None:
                raise self._thread_exception from None
            raise
        if not self._factory_invoked.wait(max(remaining, 0.0)):
            raise TimeoutError(_NOT_RESPONDING)
        if self._thread_exception is not None:
            raise self._thread_exception
        if self.smtpd is None:
            raise RuntimeError("Unknown Error, failed to init SMTP server")

    def stop(self, no_assert: bool = False, *, drain_timeout: float | None = None) -> None:
        """Stop the server, disconnect clients, end the thread, close the loop.

        ``drain_timeout``: first stop accepting and let transactions in
        flight finish, for at most that many seconds (see
        :meth:`Operations.drain <aiosmtpd.operations.Operations.drain>`).
        ``None`` (the default): disconnect at once, as 1.4.6 did.
        """
        thread = self._thread
        if thread is None and not no_assert:
            raise AssertionError("SMTP daemon not running")
        # With no thread there is nothing to stop, and anything scheduled on
        # the idle loop would sabotage the next start().
        if thread is not None:
            if thread.is_alive() and drain_timeout is not None:
                with contextlib.suppress(RuntimeError):  # the loop is gone already
                    asyncio.run_coroutine_threadsafe(
                        self._drain_connections(drain_timeout), self.loop
                    ).result()
            if thread.is_alive():
                self._call_threadsafe(self.cancel_tasks)
            thread.join()
            self._thread = None
            # The thread closes the loop after a normal run; after a failed
            # server creation it is left to us.  A loop running elsewhere
            # (passed in by mistake) belongs to someone else.
            if not self.loop.is_closed() and not self.loop.is_running():
                self.loop.close()
        self._cleanup()

    # ``with Controller(handler) as controller:`` starts it and stops it.
    def __enter__(self: _TC) -> _TC:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call_threadsafe(self, callback: Callable[[], object]) -> None:
        try:
            self.loop.call_soon_threadsafe(callback)
        except RuntimeError:
            # The thread may have closed the loop in the meantime (someone
            # else stopped it); then there is nothing left to stop.
            if not self.loop.is_closed():
                raise


class BaseUnthreadedController(BaseController, metaclass=ABCMeta):
    """Opens and closes the listener on a loop that the caller runs."""

    _log_factory_errors = True

    def __init__(
        self,
        handler: Any,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        **SMTP_parameters: Any,
    ) -> None:
        super().__init__(
            handler,
            loop,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            **SMTP_parameters,
        )
        self.ended = threading.Event()
        self._finalizing: asyncio.Task[None] | None = None

    def begin(self) -> None:
        """Open the listener; the caller then runs the loop."""
        # A new run has not ended: a stale flag from the previous end() would
        # let ``call_soon_threadsafe(end); ended.wait()`` return too early.
        self.ended.clear()
        asyncio.set_event_loop(self.loop)
        self.server_coro = self._create_server()
        self.server = _run_to_completion(self.loop, self.server_coro)

    async def finalize(self, *, drain_timeout: float | None = None) -> None:
        """Close the listener and set ``ended``.

        Established sessions are neither waited for nor closed (Python >= 3.12
        ``wait_closed()`` would block on them): they finish on the still
        running loop, or the caller cancels them with ``cancel_tasks()``.
        With ``drain_timeout``, they are first drained: each finishes its
        transaction (for at most that many seconds) and is then closed (see
        :meth:`Operations.drain <aiosmtpd.operations.Operations.drain>`).
        """
        self.ended.clear()
        server = self.server
        if server is None:
            raise AssertionError("SMTP server not started, call begin() first")
        # Closing stops accepting and closes the listening sockets right away.
        server.close()
        if drain_timeout is not None:
            await self.operations.drain(drain_timeout)
        self._cleanup()
        self.ended.set()

    # ``with`` on a loop the caller runs afterwards: begin() ... end().
    def __enter__(self: _UC) -> _UC:
        self.begin()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.end()

    # ``async with`` inside the running loop: the listener opens and closes
    # on it (a loop the controller made for itself, never run, is dropped).
    async def __aenter__(self: _UC) -> _UC:
        running = asyncio.get_running_loop()
        if self.loop is not running:
            if not self._owns_loop or self.loop.is_running():
                raise RuntimeError(
                    "async with needs the controller on the running loop: "
                    "pass loop=asyncio.get_running_loop()"
                )
            self.loop.close()
            self.loop, self._owns_loop = running, False
        self.ended.clear()
        self.server_coro = self._create_server()
        self.server = await self.server_coro
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.finalize()

    def end(self, *, drain_timeout: float | None = None) -> None:
        """Run ``finalize()``: in the background if the loop runs, else now.

        From another thread use ``loop.call_soon_threadsafe(controller.end)``
        and then ``controller.ended.wait()``.
        """
        self.ended.clear()
        finalizing = self.finalize(drain_timeout=drain_timeout)
        if self.loop.is_running():
            # Keep a reference: the loop holds tasks only weakly.
            self._finalizing = self.loop.create_task(finalizing)
        else:
            _run_to_completion(self.loop, finalizing)


# ------------------------------------------------------------------ mixins


class InetMixin(BaseController, metaclass=ABCMeta):
    """Listens on a TCP host and port."""

    def __init__(
        self,
        handler: Any,
        hostname: str | None = None,
        port: int = 8025,
        loop: asyncio.AbstractEventLoop | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, loop=loop, **kwargs)
        self._localhost = get_localhost()
        # Only None means "loopback"; "" means all interfaces to asyncio.
        self.hostname = self._localhost if hostname is None else hostname
        self.port = port

    async def _create_server(self) -> asyncio.Server:
        server = await self.loop.create_server(
            self._factory_invoker,
            host=self.hostname,
            port=self.port,
            **self._listener_tls(),
        )
        if self.port == 0 and server.sockets:
            # The OS chose the port: report it so that the probe and users
            # can connect.  Each address gets its own ephemeral port, so
            # prefer the socket the probe will reach.
            family = _address_family(self._probe_host())
            sockets = list(server.sockets)
            chosen = next((s for s in sockets if s.family == family), sockets[0])
            self.port = chosen.getsockname()[1]
        return server

    def _probe_host(self) -> str:
        # "" is not connectable; the detected loopback is.
        return self.hostname or self._localhost

    def _trigger_server(self) -> None:
        sock = socket.create_connection((self._probe_host(), self.port), _PROBE_TIMEOUT)
        _read_greeting(sock, self.ssl_context)


class UnixSocketMixin(BaseController, metaclass=ABCMeta):
    """Listens on a Unix domain socket."""

    def __init__(
        self,
        handler: Any,
        unix_socket: str | os.PathLike[str],
        loop: asyncio.AbstractEventLoop | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, loop=loop, **kwargs)
        self.unix_socket = str(unix_socket)

    def _create_server(self) -> Awaitable[asyncio.Server]:
        # The socket file is left behind on stop on every Python version
        # (3.13+ would remove it by default); callers remove it themselves.
        if sys.version_info >= (3, 13):
            return self.loop.create_unix_server(
                self._factory_invoker,
                path=self.unix_socket,
                cleanup_socket=False,
                **self._listener_tls(),
            )
        return self.loop.create_unix_server(
            self._factory_invoker,
            path=self.unix_socket,
            **self._listener_tls(),
        )

    def _trigger_server(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_PROBE_TIMEOUT)
            sock.connect(self.unix_socket)
        except BaseException:
            sock.close()
            raise
        _read_greeting(sock, self.ssl_context)


# -------------------------------------------------------- concrete classes


class Controller(InetMixin, BaseThreadedController):
    """Threaded controller listening on TCP."""


class UnixSocketController(UnixSocketMixin, BaseThreadedController):
    """Threaded controller listening on a Unix socket."""


class UnthreadedController(InetMixin, BaseUnthreadedController):
    """Unthreaded controller listening on TCP."""


class UnixSocketUnthreadedController(UnixSocketMixin, BaseUnthreadedController):
    """Unthreaded controller listening on a Unix socket."""
