"""One connection's received bytes, and what they are: pure, no I/O.

The protocol (``smtp.SMTP``) appends what the transport reads (:meth:`feed`)
and asks for the next thing the protocol phase expects: a command line
(:meth:`line`), the pieces of a DATA message (:meth:`message`, with the
``DataReader`` of ``_framing``), the bytes of a BDAT chunk (:meth:`chunk`).
The phase is one enum, and every move is checked against :data:`NEXT`.  The
receiver also decides when reading should pause (:meth:`backlog`) and drops
what arrives once the server said goodbye.  docs/internals.rst ("Received
bytes") has the picture.

The buffer belongs to its connection: every line, piece or chunk handed out
is a copy (``bytes``), never a view of a buffer that changes later.
"""

from __future__ import annotations

import enum
from typing import Optional, Union

from aiosmtpd._framing import PIECE_SIZE, DataReader

__all__ = [
    "COMMAND_BACKLOG",
    "MESSAGE_BACKLOG",
    "NEXT",
    "TOO_LONG",
    "Phase",
    "Receiver",
]


class Phase(enum.Enum):
    """What the bytes arriving now are."""

    COMMANDS = "commands"  # command lines (and the lines a command reads itself)
    MESSAGE = "message"  # DATA content, up to CRLF . CRLF
    CHUNK = "chunk"  # a BDAT chunk: a count of bytes, sent as they are
    CLOSING = "closing"  # the server said goodbye: what arrives is dropped

    # Enum's own __hash__ is Python code; NEXT is looked up at every move.
    __hash__ = object.__hash__


COMMANDS, MESSAGE, CHUNK, CLOSING = Phase.COMMANDS, Phase.MESSAGE, Phase.CHUNK, Phase.CLOSING

#: The moves between phases; :meth:`Receiver.to` asserts every change.
NEXT: dict[Phase, frozenset[Phase]] = {
    COMMANDS: frozenset({MESSAGE, CHUNK, CLOSING}),
    MESSAGE: frozenset({COMMANDS, CLOSING}),
    CHUNK: frozenset({COMMANDS, CLOSING}),
    CLOSING: frozenset(),
}

# Reading pauses while more than this waits unanswered: command lines of a
# client that sends faster than it is answered, or message bytes that a
# slow stream hook has not taken yet (backpressure).
COMMAND_BACKLOG = 64 * 1024
MESSAGE_BACKLOG = 1024 * 1024


class _TooLong:
    __slots__ = ()

    def __repr__(self) -> str:
        return "TOO_LONG"


#: What :meth:`Receiver.line` returns for a line longer than its limit,
#: once the whole line has been dropped.
TOO_LONG = _TooLong()


class Receiver:
    """The receive buffer of one connection, and its phase."""

    __slots__ = ("buf", "phase", "_dropping", "_data", "_seen", "_remaining")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.phase = COMMANDS
        # An over-long line is being dropped up to its LF.
        self._dropping = False
        # The DATA framing and the buffer length it last saw.
        self._data: Optional[DataReader] = None
        self._seen = 0
        # Bytes of the BDAT chunk not yet received.
        self._remaining = 0

    def __repr__(self) -> str:
        return f"<Receiver {self.phase.value} buffered={len(self.buf)}>"

    def to(self, phase: Phase) -> None:
        assert phase in NEXT[self.phase], f"{self.phase.value} -> {phase.value}"
        self.phase = phase

    # -- Bytes in ------------------------------------------------------------------

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> bool:
        """Take received bytes (copied); False if dropped after a goodbye."""
        if self.phase is CLOSING:
            return False
        self.buf += data
        return True

    def backlog(self) -> bool:
        """Whether reading should pause: too much waits to be taken."""
        limit = COMMAND_BACKLOG if self.phase is COMMANDS else MESSAGE_BACKLOG
        return len(self.buf) > limit

    def discard(self) -> None:
        """Forget what is buffered (plaintext sent after STARTTLS, RFC 3207)."""
        self.buf.clear()
        self._dropping = False

    def close(self) -> None:
        """The server said goodbye: drop what is buffered and what comes."""
        if self.phase is not CLOSING:
            self.to(CLOSING)
        self.buf.clear()
        self._data = None

    # -- Command lines ---------------------------------------------------------------

    def line(self, limit: int) -> Union[bytes, _TooLong, None]:
        """The next line, LF included; :data:`TOO_LONG` once a line longer
        than ``limit`` has been dropped (however long it is, it is never
        kept); None until more bytes arrive."""
        buf = self.buf
        if not buf:
            return None  # the common case after a command: nothing pipelined
        if not self._dropping:
            i = buf.find(b"\n", 0, limit + 1) + 1
            if i:
                line = bytes(buf[:i])
                del buf[:i]
                return line
            if len(buf) <= limit:
                return None
            self._dropping = True
        i = buf.find(b"\n")
        if i < 0:
            buf.clear()
            return None
        del buf[: i + 1]
        self._dropping = False
        return TOO_LONG

    def has_line(self, limit: int) -> bool:
        """Whether :meth:`line` would return something without more bytes."""
        buf = self.buf
        if not self._dropping:
            if buf.find(b"\n", 0, limit + 1) >= 0:
                return True
            if len(buf) <= limit:
                return False
        return buf.find(b"\n") >= 0  # the end of a line being dropped

    # -- DATA -----------------------------------------------------------------------

    def begin_message(self, reader: DataReader) -> None:
        """DATA content follows, framed by ``reader``."""
        self.to(MESSAGE)
        self._data = reader
        # What arrived before counts as seen: the DATA command itself was
        # activity enough.
        self._seen = len(self.buf)

    def message(self) -> tuple[bool, bool]:
        """Hand what arrived to the DATA framing.  Returns (done, active):
        done once the terminator is consumed (back to commands; the framing
        has its outcome and last pieces); active when a line was completed
        since the last call (a client that keeps sending is not idle)."""
        reader = self._data
        if reader is None:  # said goodbye meanwhile
            return False, False
        buf = self.buf
        size = len(buf)
        consumed = reader.feed(buf)
        if consumed is not None:
            del buf[:consumed]
            self._data = None
            self.to(COMMANDS)
            return True, True
        # feed() takes bytes from the front; a CRLF among the bytes that are
        # new since the last call means a completed line.  Data already
        # refused earns no time.
        seen = self._seen - (size - len(buf))
        active = reader.error is None and buf.find(b"\r\n", max(0, seen - 1)) >= 0
        self._seen = len(buf)
        return False, active

    # -- BDAT -------------------------------------------------------------------------

    def begin_chunk(self, size: int) -> None:
        """A BDAT chunk of ``size`` bytes follows."""
        self.to(CHUNK)
        self._remaining = size
        if not size:
            self.to(COMMANDS)

    def chunk(self, keep: bool = True) -> Optional[bytes]:
        """The chunk's next bytes, at most PIECE_SIZE of them (b"" when not
        ``keep``: dropped), or None until more arrive.  Back to commands once
        the chunk is complete."""
        buf = self.buf
        if self.phase is not CHUNK or not buf:
            return None
        take = min(self._remaining, len(buf), PIECE_SIZE)
        piece = bytes(memoryview(buf)[:take]) if keep else b""
        del buf[:take]
        self._remaining -= take
        if not self._remaining:
            self.to(COMMANDS)
        return piece

    def chunk_left(self) -> int:
        return self._remaining if self.phase is CHUNK else 0

    def end(self) -> None:
        """A message or chunk was abandoned (the connection is going away):
        back to commands, unless the server is saying goodbye."""
        if self.phase is MESSAGE or self.phase is CHUNK:
            self._data = None
            self._remaining = 0
            self.to(COMMANDS)
