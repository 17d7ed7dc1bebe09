"""DATA framing over a receive buffer: end-of-data search, limits, dot-stuffing.

Pure code, no I/O.  The protocol appends received bytes to one ``bytearray``;
:class:`DataReader` searches it for the end of data in large steps, never one
line at a time, and never copies a line.  Only ``CRLF . CRLF`` ends the data:
a bare LF or CR never ends a line (the SMTP smuggling class of bugs).

Line-length and size limits follow upstream's rules (docs/decisions.rst,
"DATA line and size limits"):

* a line is the run of bytes up to and including CRLF, *before* dot
  un-stuffing; it is too long when it is longer than ``line_limit``;
* the size is the number of content bytes before un-stuffing, including the
  CRLF that precedes the terminating dot;
* the first limit broken wins; errors are reported only after the terminator,
  and once the data is known to be rejected it is no longer kept.
"""

from __future__ import annotations

import enum
from typing import Optional

__all__ = [
    "BareLineEndings",
    "DataError",
    "DataReader",
    "find_long_line",
    "unstuff",
]

# The largest piece handed out.  A piece is a new bytes object; one over
# glibc's mmap threshold (128 KiB by default) is mapped and unmapped for
# each read, which costs a page fault per 4 KiB touched: 256 KiB pieces made
# a streamed message 20% slower than one that is never kept.
PIECE_SIZE = 64 * 1024

_END = b"\r\n.\r\n"
_END_AT_START = b".\r\n"


class DataError(enum.Enum):
    TOO_LONG = "line too long"
    TOO_MUCH = "too much data"


def find_long_line(buf: bytes | bytearray, line_limit: int, start: int = 0,
                   end: Optional[int] = None) -> Optional[int]:
    """Return the start offset of the first CRLF-terminated line in
    ``buf[start:end]`` longer than ``line_limit`` bytes (CRLF included), or
    ``None``.  ``start`` must be the start of a line.  A trailing partial line
    counts only once it is already longer than the limit.

    Each step searches a window of ``line_limit`` bytes for its *last* CRLF,
    so the loop advances by about a line-limit per step instead of one line.
    """
    if end is None:
        end = len(buf)
    p = start
    while end - p > line_limit - 2:
        # A CRLF at index q ends a line of q + 2 - p bytes; it fits the limit
        # when q + 2 <= p + line_limit, i.e. the CRLF lies inside the window.
        stop = p + line_limit
        if stop > end:
            stop = end
        # Fast path: a one-byte search (memrchr) for the window's last LF,
        # which nearly always ends a CRLF; a two-byte search is ten times
        # slower.
        q = buf.rfind(b"\n", p, stop)
        if q > p and buf[q - 1] == 13:
            p = q + 1
            continue
        q = buf.rfind(b"\r\n", p, stop)
        if q < 0:
            if end - p >= line_limit:
                return p
            return None
        p = q + 2
    return None


def unstuff(content: bytes) -> bytes:
    """Undo dot-stuffing: remove the first byte of every line starting with '.'.

    Lines start at the beginning of the content and after each CRLF (a bare LF
    does not start a line).  ``bytes.replace`` returns ``content`` itself when
    there is nothing to replace, so the common case copies nothing.
    """
    # A one-byte search is far faster than the three-byte one below, and
    # large bodies (base64 attachments) usually contain no dot at all.
    if b"." not in content:
        return content
    if content[:1] == b".":
        content = content[1:]
    return content.replace(b"\r\n.", b"\r\n")


class BareLineEndings:
    """Whether a message has a CR not followed by LF or an LF not after a
    CR, over pieces cut anywhere (a CR at the end of one piece may pair
    with an LF starting the next)."""

    __slots__ = ("found", "_cr")

    def __init__(self) -> None:
        self.found = False
        self._cr = False  # the last piece ended with a CR not yet judged

    def feed(self, piece: bytes) -> None:
        if self.found or not piece:
            return
        start = 0
        if self._cr:
            if piece[0] != 10:
                self.found = True
                return
            start = 1  # that LF completes the CRLF
        self._cr = piece[-1] == 13
        end = len(piece) - self._cr
        crlf = piece.count(b"\r\n", start, end)
        self.found = (
            piece.count(b"\r", start, end) != crlf or piece.count(b"\n", start, end) != crlf
        )

    def finish(self) -> bool:
        """Whether the message, now complete, has a bare CR or LF."""
        return self.found or self._cr


class DataReader:
    """Incrementally find the end of DATA content in a receive buffer.

    The content starts at offset 0 of the buffer handed to :meth:`feed`; the
    caller keeps appending received bytes to that same buffer.  When
    :meth:`feed` returns a number ``n``, the terminator ends at ``n`` and the
    caller should take the result (:attr:`content` / :attr:`error`) and
    delete ``buf[:n]``.

    Lines are checked as they arrive and then taken out of the buffer, so
    the buffer holds about a line or a read, whatever the message size.
    With ``keep`` (the default) what is taken goes to :attr:`pieces`, still
    dot-stuffed, for the caller to take away: each piece ends just before a
    CRLF (the next one starts with it), so dots can be un-stuffed piece by
    piece; the last piece ends with the CRLF before the terminating dot.
    Nothing is kept once a limit is broken.
    """

    __slots__ = ("size_limit", "line_limit", "keep", "error", "pieces", "size", "_scanned",
                 "_dropped", "_checked")

    def __init__(self, size_limit: Optional[int], line_limit: int, keep: bool = True) -> None:
        self.size_limit = size_limit or None
        self.line_limit = line_limit
        self.keep = keep
        self.error: Optional[DataError] = None
        #: Content taken from the buffer, still dot-stuffed, in order.
        self.pieces: list[bytes] = []
        #: The content's length (still dot-stuffed) once the terminator is found.
        self.size = 0
        # Bytes of the buffer already searched for the terminator.
        self._scanned = 0
        # Bytes deleted from the front of the buffer: after an error, or
        # checked lines when not keeping the content.
        self._dropped = 0
        # Start of the first line not yet checked for its length.
        self._checked = 0

    def feed(self, buf: bytearray) -> Optional[int]:
        """Search ``buf`` for the end of data; return the bytes to consume."""
        if not self._dropped and buf[:3] == _END_AT_START:
            return self._finish(buf, 0, 3)
        i = buf.find(_END, max(self._scanned - 4, 0))
        if i >= 0:
            return self._finish(buf, i + 2, i + 5)
        self._scanned = len(buf)
        if self.error is None:
            self._check(buf, len(buf))
        if self.error is not None:
            if len(buf) > 4:
                # Rejected already: keep only what may start the terminator.
                self._drop(buf, len(buf) - 4)
        elif self._checked > 2:
            # Checked lines leave the buffer; the CRLF ending the last one
            # stays, as the start of a terminator.  (_check() never moves
            # _checked past the size limit, so the line that crosses it, which
            # decides the error, is always still here.)
            if self.keep:
                self._take(buf, self._checked - 2)
            self._drop(buf, self._checked - 2)
        return None

    def _take(self, buf: bytearray, end: int) -> None:
        """Copy ``buf[:end]`` to :attr:`pieces`, cut just before a CRLF
        into pieces of about PIECE_SIZE (a longer line stays whole)."""
        pieces = self.pieces
        size = PIECE_SIZE
        with memoryview(buf) as view:
            start = 0
            while end - start > size:
                cut = buf.rfind(b"\r\n", start + 1, start + size)
                if cut < 0:
                    break
                pieces.append(bytes(view[start:cut]))
                start = cut
            pieces.append(bytes(view[start:end]))

    def _drop(self, buf: bytearray, count: int) -> None:
        del buf[:count]
        self._dropped += count
        self._scanned = len(buf)
        self._checked = max(self._checked - count, 0)

    def _check(self, buf: bytearray, end: int, final: bool = False) -> None:
        """Set :attr:`error` if the content ``buf[:end]`` breaks a limit.

        Limits apply line by line, in order, and the first one broken wins.
        Within one line, upstream (reading with a stream limit of
        ``line_limit``) rejects a line longer than ``line_limit + 2`` before
        counting its bytes, but counts a line of ``line_limit + 1`` or
        ``+ 2`` bytes first and only then finds it too long: for the line
        that takes the count past the size limit, that decides between the
        two errors.  Unless ``final``, the last line of ``buf[:end]`` may be
        incomplete, and may yet become the terminator.  Assumes
        ``line_limit >= 3`` (the terminator's length).
        """
        limit = self.size_limit
        if limit is not None:
            limit -= self._dropped  # in buffer offsets
        line_limit = self.line_limit
        if limit is not None and end > limit:
            # The line holding byte number ``limit`` is the one whose bytes
            # take the count past the limit.
            start = buf.rfind(b"\r\n", 0, limit)
            start = 0 if start < 0 else start + 2
            crlf = buf.find(b"\r\n", start, end)
            if crlf >= 0:
                if (
                    crlf + 2 - start > line_limit + 2
                    or find_long_line(buf, line_limit, 0, start) is not None
                ):
                    self.error = DataError.TOO_LONG
                else:
                    self.error = DataError.TOO_MUCH
                return
            # That line is not complete (so not ``final``): it may yet turn
            # out too long, or be the terminator.  Decide once it is
            # complete, or as soon as it is longer than line_limit + 2
            # whatever follows.
            if end - start >= line_limit + 2:
                self.error = DataError.TOO_LONG
            return
        # Within the size limit, a long line is the first error.  Complete
        # lines are checked as they arrive, each once, so that a long line
        # is dropped at once rather than kept (memory stays bounded even
        # without a size limit).
        if final:
            if find_long_line(buf, line_limit, self._checked, end) is not None:
                self.error = DataError.TOO_LONG
            return
        last = buf.rfind(b"\r\n", self._checked, end)
        if last >= 0:
            if find_long_line(buf, line_limit, self._checked, last + 2) is not None:
                self.error = DataError.TOO_LONG
                return
            self._checked = last + 2
        # An unfinished line this long is too long whatever follows.
        if end - self._checked >= line_limit + 2:
            self.error = DataError.TOO_LONG

    def _finish(self, buf: bytearray, content_end: int, consumed: int) -> int:
        self.size = self._dropped + content_end
        if self.error is None:
            self._check(buf, content_end, final=True)
            if self.error is None and self.keep and content_end:
                self._take(buf, content_end)
        if self.error is not None:
            self.pieces.clear()
        return consumed


def parse_bdat(arg: Optional[str]) -> Optional[tuple[int, bool]]:
    """``BDAT <size> [LAST]`` (RFC 3030): (size, last), or None if malformed."""
    words = (arg or "").split(" ")
    if not 1 <= len(words) <= 2 or not (words[0].isascii() and words[0].isdigit()):
        return None
    if len(words) == 2 and words[1].upper() != "LAST":
        return None
    return int(words[0]), len(words) == 2
