"""Loopback SMTP servers on a background event loop, and a raw line client.

Used by the tests/test_smtp_*.py modules.  One event loop thread serves every
server of a test module (the ``lt`` fixture of tests/conftest.py); each test
starts its own listening socket on port 0 with whatever ``SMTP`` options it
needs, so tests do not share connection state.  No controller is involved: the
server is ``loop.create_server(factory, "127.0.0.1", 0, ssl=...)``.  For TLS,
``Certs`` makes a throwaway CA and ``LineClient`` speaks plain text, implicit
TLS or STARTTLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import socket
import ssl
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from aiosmtpd.smtp import SMTP, Envelope, Session

HOST = "127.0.0.1"
HOSTNAME = "test.example"
IO_TIMEOUT = 10.0

T = TypeVar("T")


def ipv6_loopback_works() -> bool:
    """Whether this machine can listen on the IPv6 loopback address."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


class LoopThread:
    """An asyncio loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True, name="smtp-loop")
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(IO_TIMEOUT)

    def call(self, func: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return func()

        return self.run(wrapper())

    def close(self) -> None:
        async def cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(IO_TIMEOUT)
        self.loop.close()


class Server:
    """A listening SMTP server; ``protocols`` lists the instances it created."""

    def __init__(
        self,
        lt: LoopThread,
        factory: Callable[[], SMTP],
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        self.lt = lt
        self.protocols: list[SMTP] = []
        self.errors: list[BaseException] = []

        def make() -> SMTP:
            try:
                proto = factory()
            except BaseException as e:  # surfaced by the test, not lost in asyncio
                self.errors.append(e)
                raise
            self.protocols.append(proto)
            return proto

        async def start() -> asyncio.Server:
            return await lt.loop.create_server(make, HOST, 0, ssl=ssl_context)

        self.server = lt.run(start())
        self.port: int = self.server.sockets[0].getsockname()[1]

    @property
    def last(self) -> SMTP:
        return self.protocols[-1]

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for p in self.protocols:
                if p.transport is not None:
                    p.transport.close()
            await self.server.wait_closed()

        with contextlib.suppress(Exception):
            self.lt.run(stop())

    def client(self, timeout: float = IO_TIMEOUT) -> RawClient:
        return RawClient(self.port, timeout)

    def smtplib(self) -> smtplib.SMTP:
        return smtplib.SMTP(HOST, self.port, local_hostname="client.example", timeout=IO_TIMEOUT)


class RawClient:
    """A socket client that reads SMTP replies line by line."""

    def __init__(self, port: int, timeout: float = IO_TIMEOUT) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self._buf = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """One reply line without its CRLF; b"" at EOF."""
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self._buf = self._buf, b""
                return rest
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def reply(self) -> list[bytes]:
        """All lines of one (possibly multi-line) reply."""
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return lines

    def text(self) -> str:
        """One single-line reply as text, e.g. ``"250 OK"``."""
        lines = self.reply()
        assert len(lines) == 1, lines
        return lines[0].decode("utf-8", "surrogateescape")

    def cmd(self, line: str | bytes) -> str:
        data = line.encode() if isinstance(line, str) else line
        self.send(data + b"\r\n")
        return self.text()

    def multi(self, line: str) -> list[str]:
        self.send(line.encode() + b"\r\n")
        return [x.decode() for x in self.reply()]

    def is_closed(self) -> bool:
        """True if the server closed the connection (EOF with nothing unread)."""
        return self.line() == b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LineClient:
    """A socket client, plain or TLS, whose replies are bytes.

    ``cmd`` returns the lines of a reply joined by ``b"\\n"``, so that one
    comparison checks a whole multi-line reply.  ``context`` wraps the socket
    before the greeting (implicit TLS); ``starttls`` wraps it mid-session.
    ``preamble`` is sent before the greeting is read (a PROXY header).
    """

    def __init__(
        self,
        port: int,
        context: Optional[ssl.SSLContext] = None,
        *,
        preamble: bytes = b"",
        timeout: float = IO_TIMEOUT,
    ) -> None:
        sock = socket.create_connection((HOST, port), timeout=timeout)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="localhost")
        self.use(sock)
        if preamble:
            self.send(preamble)
        self.greeting = self.lines()

    def use(self, sock: socket.socket) -> None:
        """Talk over ``sock`` from now on (e.g. the socket after a handshake)."""
        self.sock = sock
        self.file = sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def lines(self) -> list[bytes]:
        """All lines of one (possibly multi-line) reply, without CRLF."""
        lines: list[bytes] = []
        while True:
            line = self.file.readline()
            assert line.endswith(b"\r\n"), f"connection closed after {lines!r}: {line!r}"
            lines.append(line[:-2])
            if line[3:4] != b"-":
                return lines

    def reply(self) -> bytes:
        return b"\n".join(self.lines())

    def cmd(self, command: str) -> bytes:
        self.send(command.encode() + b"\r\n")
        return self.reply()

    def starttls(self, context: ssl.SSLContext) -> None:
        assert self.cmd("STARTTLS") == b"220 Ready to start TLS"
        self.use(context.wrap_socket(self.sock, server_hostname="localhost"))

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Certs:
    """A throwaway CA and its certificate for ``localhost`` and 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        import trustme  # only the TLS tests need it, and they skip without it

        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("localhost", "127.0.0.1")
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


class Recorder:
    """A handler that keeps a copy of every delivered envelope."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.sessions: list[Session] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        copy = Envelope()
        copy.__dict__.update({k: (list(v) if isinstance(v, list) else v)
                              for k, v in vars(envelope).items()})
        self.envelopes.append(copy)
        self.sessions.append(session)
        return "250 OK"


ServerFactory = Callable[..., Server]

MAIL = "MAIL FROM:<a@example.com>"
RCPT = "RCPT TO:<b@example.com>"


def esmtp_transaction(c: RawClient, mail: str = MAIL) -> None:
    """EHLO, then MAIL and RCPT, each accepted: ready for DATA or BDAT."""
    c.multi("EHLO c")
    assert c.cmd(mail) == "250 OK"
    assert c.cmd(RCPT) == "250 OK"


@contextlib.contextmanager
def serving(
    lt: LoopThread,
    handler: Any = None,
    *,
    cls: type[SMTP] = SMTP,
    ssl_context: Optional[ssl.SSLContext] = None,
    **kwargs: Any,
) -> Iterator[Server]:
    """A server for the ``with`` block; ``ssl_context`` makes it implicit TLS."""
    kwargs.setdefault("hostname", HOSTNAME)
    if handler is None:
        handler = Recorder()
    server = Server(lt, lambda: cls(handler, **kwargs), ssl_context)
    try:
        yield server
    finally:
        server.close()


def make_server_fixture(
    lt: LoopThread, stack: contextlib.ExitStack, *, inline: bool = True
) -> ServerFactory:
    """``start(handler, cls=SMTP, ssl_context=None, **SMTP_options)``; with
    ``inline=False`` every ``cls`` runs its commands in a Task per connection
    (``_inline_commands = False``, docs/internals.rst)."""

    def start(
        handler: Any = None,
        *,
        cls: type[SMTP] = SMTP,
        ssl_context: Optional[ssl.SSLContext] = None,
        **kwargs: Any,
    ) -> Server:
        if not inline:
            cls = type(cls.__name__, (cls,), {"_inline_commands": False})
        return stack.enter_context(
            serving(lt, handler, cls=cls, ssl_context=ssl_context, **kwargs)
        )

    return start


def wait_for(predicate: Callable[[], bool], lt: LoopThread, timeout: float = IO_TIMEOUT) -> bool:
    """Poll ``predicate`` on the loop thread until true, bounded by ``timeout``.

    For state changes that happen after the last byte a client can observe
    (e.g. the log record of a closed connection).
    """
    deadline = lt.call(lambda: lt.loop.time()) + timeout

    async def poll() -> bool:
        while lt.loop.time() < deadline:
            if predicate():
                return True
            await asyncio.sleep(0.005)
        return predicate()

    return asyncio.run_coroutine_threadsafe(poll(), lt.loop).result(timeout + 1)

