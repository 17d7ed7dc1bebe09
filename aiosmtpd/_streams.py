"""``SMTP._reader`` and ``SMTP._writer``: stream views of one connection.

Upstream aiosmtpd kept an ``asyncio.StreamReader``/``StreamWriter`` pair per
connection, and code written for it reads and writes through them: a
handler or subclass may ``await server._reader.readline()`` to take the
client's next line, or ``server._writer.write(...)`` and ``drain()``.  We
have no StreamReader (the connection reads into its own buffer, see
``_command_loop``), so these views offer the same methods over that buffer
and transport.  They are made on first use: a connection that never touches
them pays nothing.  docs/smtp.rst ("Upstream internals") describes them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover
    from aiosmtpd.smtp import SMTP

# asyncio's default StreamReader limit, which upstream's reader had.
READER_LIMIT = 2**16


class StreamReaderView:
    """The ``asyncio.StreamReader`` methods over a connection's receive buffer.

    Bytes read here are gone for the command loop too, as with upstream's
    reader: both read one stream.
    """

    __slots__ = ("_server", "_transport", "_limit", "_eof", "__weakref__")

    def __init__(self, server: SMTP, limit: int = READER_LIMIT) -> None:
        self._server = server
        # Upstream code assigns this after its own STARTTLS (smtpdfix does).
        self._transport = server.transport
        self._limit = limit
        self._eof = False

    def __repr__(self) -> str:
        return f"<StreamReaderView buffered={len(self._server._receiver.buf)} eof={self._eof}>"

    # -- What the connection tells the view ------------------------------------------

    def feed_eof(self) -> None:
        self._eof = True
        self._server._wake_reader()

    def exception(self) -> Optional[BaseException]:
        return None

    def at_eof(self) -> bool:
        return self._eof and not self._server._receiver.buf

    async def _wait(self, caller: str) -> None:
        server = self._server
        waiter = server._waiter
        if waiter is not None and not waiter.done():
            raise RuntimeError(
                f"{caller}() called while another coroutine is already "
                "waiting for incoming data"
            )
        try:
            await server._wait_for_data()
        except ConnectionResetError:
            # The transport is gone: what is buffered is all there will be.
            self._eof = True

    # -- The StreamReader API ------------------------------------------------------------

    async def readline(self) -> bytes:
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as error:
            return error.partial
        except asyncio.LimitOverrunError as error:
            buf = self._server._receiver.buf
            if buf.startswith(b"\n", error.consumed):
                del buf[: error.consumed + 1]
            else:
                buf.clear()
            raise ValueError(error.args[0]) from None

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        if not separator:
            raise ValueError("Separator should be at least one-byte string")
        buf = self._server._receiver.buf
        seplen = len(separator)
        offset = 0
        while True:
            i = buf.find(separator, offset)
            if i >= 0:
                if i > self._limit:
                    raise asyncio.LimitOverrunError(
                        "Separator is found, but chunk is longer than limit", i
                    )
                chunk = bytes(buf[: i + seplen])
                del buf[: i + seplen]
                return chunk
            # Never search again what was searched: a separator could only
            # start in the last seplen-1 bytes.
            offset = max(0, len(buf) + 1 - seplen)
            if offset > self._limit:
                raise asyncio.LimitOverrunError(
                    "Separator is not found, and chunk exceed the limit", offset
                )
            if self._eof:
                chunk = bytes(buf)
                buf.clear()
                raise asyncio.IncompleteReadError(chunk, None)
            await self._wait("readuntil")

    async def readexactly(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        buf = self._server._receiver.buf
        while len(buf) < n:
            if self._eof:
                chunk = bytes(buf)
                buf.clear()
                raise asyncio.IncompleteReadError(chunk, n)
            await self._wait("readexactly")
        chunk = bytes(buf[:n])
        del buf[:n]
        return chunk

    async def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        buf = self._server._receiver.buf
        if n < 0:
            while not self._eof:
                await self._wait("read")
            chunk = bytes(buf)
            buf.clear()
            return chunk
        if not buf and not self._eof:
            await self._wait("read")
        chunk = bytes(buf[:n])
        del buf[:n]
        return chunk

    def __aiter__(self) -> StreamReaderView:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if line == b"":
            raise StopAsyncIteration
        return line


class StreamWriterView:
    """The ``asyncio.StreamWriter`` methods over a connection's transport."""

    __slots__ = ("_server", "_transport", "__weakref__")

    def __init__(self, server: SMTP) -> None:
        self._server = server
        # Upstream code assigns this after its own STARTTLS (smtpdfix does).
        self._transport: Any = server.transport

    def __repr__(self) -> str:
        return f"<StreamWriterView transport={self._transport!r}>"

    @property
    def transport(self) -> Any:
        return self._transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def writelines(self, data: Any) -> None:
        self._transport.writelines(data)

    def write_eof(self) -> None:
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return bool(self._transport.can_write_eof())

    def close(self) -> None:
        self._transport.close()

    def is_closing(self) -> bool:
        return bool(self._transport.is_closing())

    async def wait_closed(self) -> None:
        await self._server._wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    async def drain(self) -> None:
        if self._transport.is_closing():
            # As StreamWriter: let connection_lost run before reporting it.
            await asyncio.sleep(0)
        await self._server._drain()
