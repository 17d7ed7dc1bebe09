"""The test servers: threaded (:class:`SMTPTestServer`) and in the caller's
event loop (:class:`AsyncSMTPTestServer`)."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import weakref
from types import TracebackType
from typing import Any, Optional

from aiosmtpd.controller import Controller
from aiosmtpd.testing._capture import CapturedMessage, CaptureHandler
from aiosmtpd.testing._certs import TestCertificates, certificates_for
from aiosmtpd.testing._config import ServerConfig
from aiosmtpd.testing._faults import Fault, FaultPlan
from aiosmtpd.testing._protocol import RecordingSMTP
from aiosmtpd.testing._transcript import Recorder, Transcript

# How long stopping waits for cancelled sessions to wind down.
_STOP_GRACE = 5.0


def _connectable(host: str) -> str:
    """The address a client uses to reach a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


class _TestServerBase:
    """What both test servers share: configuration, capture, transcript, faults."""

    def __init__(self, config: Optional[ServerConfig] = None, **options: Any) -> None:
        self.config = (config or ServerConfig()).evolve(**options)
        self._handler = CaptureHandler(self.config.credentials)
        self._recorder = Recorder()
        #: The faults in force; ``add()`` more or ``clear()`` them at any time.
        self.faults = FaultPlan(self.config.faults)
        self._certificates: Optional[TestCertificates] = None
        self._server_context: Optional[ssl.SSLContext] = None
        self._client_context: Optional[ssl.SSLContext] = None
        if self.config.tls != "off":
            self._certificates = certificates_for(self.config.host)
            self._server_context = self._certificates.server_context()
            self._client_context = self._certificates.client_context()
        self._port = 0
        self._armed = False
        self._protocols: weakref.WeakSet[RecordingSMTP] = weakref.WeakSet()

    # -- What tests read ------------------------------------------------------------

    @property
    def hostname(self) -> str:
        """The address to connect to."""
        return _connectable(self.config.host)

    @property
    def port(self) -> int:
        """The port the server listens on (the real one, also for port 0)."""
        return self._port

    @property
    def messages(self) -> list[CapturedMessage]:
        """The accepted messages, oldest first (a copy)."""
        return self._handler.messages

    @property
    def transcript(self) -> Transcript:
        """Every session so far, AUTH secrets masked (a snapshot)."""
        return self._recorder.snapshot()

    def clear(self) -> None:
        """Forget the captured messages and the transcript."""
        self._handler.clear()
        self._recorder.clear()

    def inject(self, *faults: Fault) -> None:
        """Add faults for the connections to come."""
        for fault in faults:
            self.faults.add(fault)

    @property
    def tls(self) -> str:
        return self.config.tls

    @property
    def client_context(self) -> Optional[ssl.SSLContext]:
        """A client SSL context that trusts this server (``None`` without TLS)."""
        return self._client_context

    @property
    def credentials(self) -> dict[str, str]:
        return dict(self.config.credentials)

    @property
    def login(self) -> str:
        """The first configured login (for the usual single account)."""
        if not self.config.credentials:
            raise AttributeError("this server has no AUTH credentials configured")
        return next(iter(self.config.credentials))

    @property
    def password(self) -> str:
        return self.config.credentials[self.login]

    def client(self, timeout: float = 30.0) -> smtplib.SMTP:
        """A connected :mod:`smtplib` client (``SMTP_SSL`` for implicit TLS)."""
        if self.config.tls == "implicit":
            return smtplib.SMTP_SSL(
                self.hostname, self.port, timeout=timeout, context=self._client_context
            )
        return smtplib.SMTP(self.hostname, self.port, timeout=timeout)

    # -- Building connections ---------------------------------------------------------

    def _smtp_kwargs(self) -> dict[str, Any]:
        config = self.config
        kwargs: dict[str, Any] = {
            "hostname": config.server_hostname,
            "data_size_limit": config.data_size_limit,
            "enable_SMTPUTF8": config.enable_SMTPUTF8,
            "timeout": config.timeout,
            "auth_require_tls": config.effective_auth_require_tls,
        }
        if config.tls == "starttls":
            kwargs["tls_context"] = self._server_context
            kwargs["require_starttls"] = config.require_starttls
        if config.auth_enabled:
            kwargs["authenticator"] = self._handler.authenticate
        else:
            # No credentials, no AUTH: do not advertise a login nobody can pass.
            kwargs["auth_exclude_mechanism"] = ["PLAIN", "LOGIN"]
        return kwargs

    def _protocol(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> RecordingSMTP:
        # Before the server is armed the only client is the controller's own
        # readiness probe: it gets neither a transcript nor faults.
        armed = self._armed
        protocol = RecordingSMTP(
            self._handler,
            recorder=self._recorder if armed else None,
            plan=self.faults if armed else None,
            require_auth=self.config.auth_required,
            loop=loop,
            **self._smtp_kwargs(),
        )
        self._protocols.add(protocol)
        return protocol

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.hostname}:{self.port} tls={self.config.tls}>"


class _Controller(Controller):
    def __init__(self, owner: SMTPTestServer) -> None:
        self._owner = owner
        config = owner.config
        super().__init__(
            owner._handler,
            hostname=config.host,
            port=config.port,
            ssl_context=owner._server_context if config.tls == "implicit" else None,
        )

    def factory(self) -> RecordingSMTP:
        return self._owner._protocol()


class SMTPTestServer(_TestServerBase):
    """A test server on its own thread; use ``with`` or ``start()``/``stop()``."""

    __test__ = False

    def __init__(self, config: Optional[ServerConfig] = None, **options: Any) -> None:
        super().__init__(config, **options)
        self._controller: Optional[_Controller] = None

    def start(self) -> None:
        if self._controller is not None:
            raise RuntimeError("the test server is already running")
        controller = _Controller(self)
        try:
            controller.start()
        except BaseException:
            controller.stop(no_assert=True)
            raise
        self._controller = controller
        self._port = controller.port
        self._armed = True

    def stop(self) -> None:
        """Stop serving and disconnect every client; safe to call twice."""
        controller, self._controller = self._controller, None
        self._armed = False
        if controller is not None:
            controller.stop(no_assert=True)

    @property
    def running(self) -> bool:
        return self._controller is not None

    def __enter__(self) -> SMTPTestServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()


class AsyncSMTPTestServer(_TestServerBase):
    """A test server in the running event loop (no thread).

    Use ``async with`` or ``await start()``/``await stop()`` from a coroutine.
    """

    __test__ = False

    def __init__(self, config: Optional[ServerConfig] = None, **options: Any) -> None:
        super().__init__(config, **options)
        self._server: Optional[asyncio.Server] = None

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the test server is already running")
        loop = asyncio.get_running_loop()
        self._armed = True
        config = self.config
        server = await loop.create_server(
            lambda: self._protocol(loop),
            host=config.host,
            port=config.port,
            ssl=self._server_context if config.tls == "implicit" else None,
        )
        self._server = server
        self._port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop serving and disconnect every client; safe to call twice."""
        server, self._server = self._server, None
        self._armed = False
        if server is None:
            return
        server.close()
        tasks = []
        for protocol in list(self._protocols):
            for transport in (protocol.transport, protocol._original_transport):
                if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
                    transport.abort()
            task = protocol._handler_coroutine
            if task is not None and not task.done():
                task.cancel()
                tasks.append(task)
        if tasks:
            await asyncio.wait(tasks, timeout=_STOP_GRACE)
        # Bounded: on 3.12+ wait_closed() also waits for the connections.
        await asyncio.wait([asyncio.ensure_future(server.wait_closed())], timeout=_STOP_GRACE)

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop serving the connections: the one that started it."""
        if self._server is None:
            raise RuntimeError("the test server is not running")
        return self._server.get_loop()

    async def __aenter__(self) -> AsyncSMTPTestServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.stop()
