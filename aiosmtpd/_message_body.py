"""Where a message's bytes go while it arrives, by DATA or by BDAT chunks.

The receive side hands each piece of a message to an :class:`Incoming` as
the piece leaves the connection's buffer (a DATA piece always ends just
before a CRLF, so dot-stuffing can be undone piece by piece; a BDAT piece is
any run of bytes).  ``Incoming`` checks line endings, logs, un-stuffs, and
then either keeps the pieces for ``handle_DATA`` (joined once, at the end)
or passes them on at once to a handler's ``handle_DATA_STREAM`` through a
:class:`MessageBody`, which pushes back on the client when the handler is
slow.  docs/large.rst describes the hook; docs/internals.rst ("Large
messages") the reasons.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Callable, Optional

from aiosmtpd._framing import BareLineEndings, unstuff
from aiosmtpd._loop import wake

__all__ = ["Incoming", "MessageAborted", "MessageBody"]

log = logging.getLogger("mail.log")

# Backpressure: the server stops handing pieces (and so, soon, stops reading
# from the client) while this much is queued for a stream handler, and goes
# on once half of it has been taken.
QUEUE_HIGH = 512 * 1024
QUEUE_LOW = QUEUE_HIGH // 2

# Joining a message this large takes milliseconds (page faults included):
# it is done in a worker thread, where bytes.join releases the GIL.
JOIN_OFF_LOOP = 4 * 1024 * 1024

# Why a streamed message is abandoned (MessageAborted.reason).
CONNECTION_LOST = "connection lost"
CLOSED_BY_SERVER = "connection closed by the server"  # drain, deadline
TIMED_OUT = "timed out"  # data_timeout
TRANSACTION_RESET = "transaction reset"
TOO_MUCH_DATA = "message too big"
LINE_TOO_LONG = "line too long"
BARE_LINE_ENDING = "bare CR or LF"
NOT_ASCII = "not ASCII"  # decode_data=True without SMTPUTF8


class MessageAborted(Exception):
    """Raised into a ``handle_DATA_STREAM`` hook by its message body: the
    message will not be delivered (the client went away, it broke a limit,
    the transaction was reset, or the server is stopping).  Discard what was
    stored of it.  ``reason`` says which, in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MessageBody:
    """A message as it arrives, for ``handle_DATA_STREAM``: iterate it with
    ``async for chunk in body`` to get its bytes in order (dot-stuffing
    undone, as ``envelope.original_content`` would hold them), chunk by
    chunk.  ``size`` counts the bytes handed over so far."""

    __slots__ = ("_loop", "_chunks", "_queued", "_ended", "_error", "_waiter", "_room",
                 "_gone", "size")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._ended = False
        self._error: Optional[MessageAborted] = None
        # The reader's wait for a chunk, and the server's wait for room.
        self._waiter: Optional[asyncio.Future[None]] = None
        self._room: Optional[asyncio.Future[None]] = None
        # The hook has returned (or raised): later chunks are dropped.
        self._gone = False
        self.size = 0

    def __repr__(self) -> str:
        state = "aborted" if self._error else "ended" if self._ended else "open"
        return f"<MessageBody {state} size={self.size} queued={self._queued}>"

    def __aiter__(self) -> MessageBody:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._error is not None:
                raise self._error
            chunks = self._chunks
            if chunks:
                chunk = chunks.popleft()
                self._queued -= len(chunk)
                if self._room is not None and self._queued <= QUEUE_LOW:
                    self._make_room()
                return chunk
            if self._ended:
                raise StopAsyncIteration
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    # -- The server's side ------------------------------------------------------------

    def _put(self, chunk: bytes) -> Optional[asyncio.Future[None]]:
        """Queue ``chunk``; returns a future to wait for when the queue is full."""
        if self._gone or self._error is not None:
            return None
        self._chunks.append(chunk)
        self._queued += len(chunk)
        self.size += len(chunk)
        self._wake()
        if self._queued > QUEUE_HIGH:
            room = self._room = self._loop.create_future()
            return room
        return None

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def _abort(self, reason: str) -> None:
        """Tell the hook the message is abandoned (once, and never after
        the whole message was handed over)."""
        if self._ended or self._error is not None:
            return
        self._error = MessageAborted(reason)
        self._chunks.clear()
        self._queued = 0
        self._wake()
        self._make_room()

    def _hook_done(self, _task: Any = None) -> None:
        self._gone = True
        self._chunks.clear()
        self._queued = 0
        self._make_room()

    def _wake(self) -> None:
        wake(self._waiter)

    def _make_room(self) -> None:
        room, self._room = self._room, None
        wake(room)


# Hooks of aborted messages still running: the loop keeps only weak
# references to Tasks, and nothing else refers to these any more.
_orphans: set[asyncio.Task[Any]] = set()


class Incoming:
    """One message being received: its pieces, checks and destination."""

    __slots__ = ("stuffed", "size", "pieces", "body", "hook", "unseen", "ascii_only",
                 "_not_ascii", "_bare", "_tail", "_debug")

    def __init__(self, *, stuffed: bool, strict: bool, keep: bool = True) -> None:
        #: DATA's pieces are dot-stuffed; BDAT's are as the message is.
        self.stuffed = stuffed
        #: Bytes received so far, as sent (before un-stuffing).
        self.size = 0
        #: The pieces kept for handle_DATA (None once abandoned, or when
        #: streaming, or when nothing looks at the message).
        self.pieces: Optional[list[bytes]] = [] if keep else None
        self.body: Optional[MessageBody] = None
        self.hook: Optional[asyncio.Task[Any]] = None
        self._bare = BareLineEndings() if strict else None
        #: A stream of a server with decode_data=True and no SMTPUTF8: the
        #: message must be ASCII, as handle_DATA's would be to be decoded.
        self.ascii_only = False
        self._not_ascii = False
        #: Nothing looks at the message (not kept, checked or streamed).
        self.unseen = not keep and not strict
        # The start of a line not yet logged (DEBUG only).
        self._tail = b""
        self._debug = keep and log.isEnabledFor(logging.DEBUG)

    def stream_to(
        self,
        loop: asyncio.AbstractEventLoop,
        hook: Callable[..., Any],
        *args: Any,
    ) -> None:
        """Hand the pieces to ``hook(*args, body)``, run in its own Task."""
        body = self.body = MessageBody(loop)
        self.pieces = None
        self.unseen = False
        task = self.hook = loop.create_task(_run_hook(hook, *args, body))
        task.add_done_callback(body._hook_done)

    def add(self, raw: bytes) -> Optional[asyncio.Future[None]]:
        """Take the next piece as received; returns a future to wait for
        before reading more (a slow stream handler), or None."""
        self.size += len(raw)
        if self._bare is not None:
            self._bare.feed(raw)
            if self._bare.found:
                self.abandon(BARE_LINE_ENDING)
                return None
        if self.ascii_only and not raw.isascii():
            self._not_ascii = True
            self.abandon(NOT_ASCII)  # bare line endings are still looked for
        if self._debug:
            self._log(raw)
        if self.body is not None:
            return self.body._put(unstuff(raw) if self.stuffed else raw)
        if self.pieces is not None:
            self.pieces.append(unstuff(raw) if self.stuffed else raw)
        return None

    def finish(self) -> Optional[str]:
        """The whole message is in: None, or the check it fails
        (BARE_LINE_ENDING before NOT_ASCII, the order of handle_DATA's)."""
        if self._debug and self._tail:
            log.debug("DATA readline: %s", self._tail)
        if self._bare is not None and self._bare.finish():
            self.abandon(BARE_LINE_ENDING)
            return BARE_LINE_ENDING
        if self._not_ascii:
            return NOT_ASCII
        if self.body is not None:
            self.body._end()
        return None

    def abandon(self, reason: str) -> None:
        """The message will not be delivered: drop it, tell a stream hook."""
        self.pieces = None
        body = self.body
        if body is not None:
            body._abort(reason)
        hook, self.hook = self.hook, None
        if hook is not None:
            # Nobody awaits its verdict any more.
            if hook.done():
                _hook_outcome(hook)
            else:
                _orphans.add(hook)
                hook.add_done_callback(_hook_outcome)

    async def content(self, loop: asyncio.AbstractEventLoop) -> bytes:
        """The kept pieces as one ``bytes`` (large ones joined off the loop)."""
        pieces = self.pieces or []
        self.pieces = None
        if len(pieces) > 1 and self.size > JOIN_OFF_LOOP:
            return await loop.run_in_executor(None, b"".join, pieces)
        return b"".join(pieces)

    def _log(self, raw: bytes) -> None:
        # As 1.4.6 logged DATA: one record per line, as received.
        lines = (self._tail + raw).splitlines(keepends=True)
        self._tail = b""
        if lines and lines[-1][-1:] != b"\n":
            self._tail = lines.pop()  # goes on in the next piece (maybe just its LF)
        for line in lines:
            log.debug("DATA readline: %s", line)


async def _run_hook(hook: Callable[..., Any], *args: Any) -> Any:
    result = hook(*args)
    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
        result = await result
    return result


def _hook_outcome(task: asyncio.Task[Any]) -> None:
    """The end of a stream hook whose verdict nobody awaits (its message
    was abandoned): take its outcome, and report a failure of its own."""
    _orphans.discard(task)
    if task.cancelled():
        return
    error = task.exception()
    if error is not None and not isinstance(error, MessageAborted):
        log.warning("handle_DATA_STREAM failed after its message was abandoned: %r", error)
