"""A socket-free wire for ``SMTP`` (and ``LMTP``) protocol objects.

``Wire`` builds a server object on an event loop of its own, connects it to a
``MemoryTransport`` and plays the client: ``send()`` hands bytes to
``data_received`` (as a read would) and returns the reply lines the server
wrote since the previous call, once the server is quiet.  No socket, no
thread, no timed sleep: each call runs the loop only until nothing is ready
to run any more (every Task then waits for client bytes, or for a timer).

Used by tests/test_replies_wire.py::

    with Wire(handler, hostname="test.example") as wire:
        assert wire.greeting == ["220 test.example Python SMTP 1.5.0"]
        assert wire.send(b"NOOP\\r\\n") == ["250 OK"]
        assert wire.send(b"QUIT\\r\\n") == ["221 Bye"]
        assert wire.closed
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, Optional

from aiosmtpd.smtp import SMTP

HOSTNAME = "test.example"
PEER = ("203.0.113.7", 40025)
SOCKNAME = ("192.0.2.1", 25)

# Loop turns one send() may take before the server counts as stuck: a
# command that hops into a Task and calls a hook takes a handful.
MAX_TURNS = 1000


class MemoryTransport(asyncio.Transport):
    """An in-memory transport: records what the protocol does to it.

    Like asyncio's socket transports, ``close()`` calls the protocol's
    ``connection_lost(None)`` on a later turn of the loop, and bytes written
    after ``close()`` never reach the client (they are kept in ``late``, so
    that a test can insist there are none).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: asyncio.BaseProtocol,
        extra: Optional[dict[str, Any]] = None,
    ) -> None:
        info: dict[str, Any] = {"peername": PEER, "sockname": SOCKNAME, "ssl_object": None}
        info.update(extra or {})
        super().__init__(info)
        self._loop = loop
        self._protocol = protocol
        self.written = bytearray()
        self.late = bytearray()
        self.closed = False
        self.reading = True
        self.pauses = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        (self.late if self.closed else self.written).extend(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading and not self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)

    def set_write_buffer_limits(
        self, high: Optional[int] = None, low: Optional[int] = None
    ) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol


class Wire:
    """One server connection driven by hand; see the module docstring.

    ``cls(handler, **kwargs)`` is built on a fresh event loop (``hostname``
    defaults to ``test.example``); ``extra`` adds to the transport's
    ``get_extra_info()`` (an ``ssl_object`` makes it an implicit-TLS
    connection).  ``greeting`` holds what ``connection_made`` wrote.
    """

    def __init__(
        self,
        handler: Any = None,
        *,
        cls: type[SMTP] = SMTP,
        extra: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        # The quiet test reads the loop's run queue (CPython's BaseEventLoop).
        assert isinstance(getattr(self.loop, "_ready", None), Sequence), self.loop
        #: What reached the loop's exception handler (tests expect nothing).
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        kwargs.setdefault("hostname", HOSTNAME)
        self.server = cls(handler, loop=self.loop, **kwargs)
        self.transport = MemoryTransport(self.loop, self.server, extra)
        self._seen = 0
        self.greeting = self._run([[]], connect=True)

    # -- The client's side ------------------------------------------------------------

    def send(self, *chunks: bytes, together: bool = False) -> list[str]:
        """Deliver ``chunks`` as separate reads (all in one turn of the loop
        with ``together``); return the reply lines written meanwhile."""
        return self.feed([chunks] if together else [[c] for c in chunks])

    def feed(self, groups: Iterable[Sequence[bytes]]) -> list[str]:
        """Each group's chunks are read in one turn of the loop; the server
        runs until quiet after each group."""
        return self._run(groups)

    def eof(self, data: bytes = b"") -> list[str]:
        """The client half-closes, as a socket transport reports it; ``data``
        arrives just before, in the same turn of the loop (as a TLS layer can
        deliver the last bytes and the close together)."""

        def read_then_eof() -> None:
            if data:
                self._read(data)
            if not self.transport.closed and not self.server.eof_received():
                self.transport.close()

        return self._run([[]], call=read_then_eof)

    @property
    def closed(self) -> bool:
        """Whether the server closed the connection."""
        return self.transport.closed

    def output(self) -> bytes:
        """Everything the server wrote, greeting included."""
        return bytes(self.transport.written)

    # -- Running the loop ------------------------------------------------------------

    def _run(self, groups: Iterable[Sequence[bytes]], connect: bool = False,
             call: Any = None) -> list[str]:
        async def drive() -> None:
            if connect:
                self.loop.call_soon(self.server.connection_made, self.transport)
            if call is not None:
                self.loop.call_soon(call)
            for group in groups:
                for chunk in group:
                    self.loop.call_soon(self._read, chunk)
                await self._quiet()

        self.loop.run_until_complete(drive())
        new = bytes(self.transport.written[self._seen:])
        self._seen = len(self.transport.written)
        lines = new.split(b"\r\n")
        if lines[-1] == b"":
            lines.pop()
        return [line.decode("utf-8", "surrogateescape") for line in lines]

    def _read(self, chunk: bytes) -> None:
        if not self.transport.closed:  # a closed socket reads nothing more
            self.server.data_received(chunk)

    async def _quiet(self) -> None:
        """Let the loop run until nothing but this coroutine was ready."""
        for _ in range(MAX_TURNS):
            await asyncio.sleep(0)
            if not self.loop._ready:  # type: ignore[attr-defined]
                return
        raise AssertionError(f"server still busy after {MAX_TURNS} turns of the loop")

    def close(self) -> None:
        """The client disconnects (if the server has not); the loop is closed."""
        if not self.loop.is_closed():
            if not self.transport.closed:
                self.transport.close()
            self._run([[]])
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
