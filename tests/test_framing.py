"""DATA framing (aiosmtpd._framing) against naive reference implementations.

The references below follow docs/decisions.rst, "DATA line and size limits",
literally, one CRLF-delimited line at a time; the real code searches a buffer
in large steps.  Hypothesis checks that
both agree for any byte stream fed in any chunking.
"""

from __future__ import annotations

from typing import Optional

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aiosmtpd._framing import (
    BareLineEndings,
    DataError,
    DataReader,
    find_long_line,
    unstuff,
)
from tests._hostile import SMUGGLING_ENDS

Outcome = Optional[tuple[int, Optional[DataError], Optional[bytes]]]


# -- Reference implementations ---------------------------------------------------


def ref_read(stream: bytes, size_limit: Optional[int], line_limit: int) -> Outcome:
    """Return (bytes consumed, error, raw content) or None if no terminator yet."""
    pos = 0
    size = 0
    error: Optional[DataError] = None
    lines: list[bytes] = []
    while True:
        i = stream.find(b"\r\n", pos)
        if i < 0:
            return None
        line = stream[pos : i + 2]
        pos = i + 2
        if line == b".\r\n":
            return pos, error, (b"".join(lines) if error is None else None)
        # Upstream reads with a stream limit of line_limit: a longer line
        # *content* (without CRLF) overruns it before the line is counted;
        # lines of line_limit + 1 or + 2 bytes are counted first, and then
        # found too long.
        if error is None and len(line) - 2 > line_limit:
            error = DataError.TOO_LONG
        size += len(line)
        if error is None and size_limit and size > size_limit:
            error = DataError.TOO_MUCH
        if error is None and len(line) > line_limit:
            error = DataError.TOO_LONG
        lines.append(line)


def ref_unstuff(content: bytes) -> bytes:
    out = []
    for line in content.split(b"\r\n"):
        out.append(line[1:] if line.startswith(b".") else line)
    return b"\r\n".join(out)


def ref_find_long_line(buf: bytes, line_limit: int) -> Optional[int]:
    pos = 0
    while True:
        i = buf.find(b"\r\n", pos)
        if i < 0:
            # A partial line is certainly too long once it has line_limit bytes.
            return pos if len(buf) - pos >= line_limit else None
        if i + 2 - pos > line_limit:
            return pos
        pos = i + 2


def has_bare_cr_or_lf(content: bytes) -> bool:
    """BareLineEndings over the whole content at once."""
    check = BareLineEndings()
    check.feed(content)
    return check.finish()


def ref_bare(content: bytes) -> bool:
    for i, b in enumerate(content):
        if b == 13 and content[i + 1 : i + 2] != b"\n":
            return True
        if b == 10 and (i == 0 or content[i - 1] != 13):
            return True
    return False


def run_reader(
    chunks: list[bytes], size_limit: Optional[int], line_limit: int, keep: bool = True
) -> tuple[Outcome, bytes]:
    """Feed chunks as a protocol would; return the outcome and what is left."""
    reader = DataReader(size_limit, line_limit, keep)
    buf = bytearray()
    taken: list[bytes] = []
    for k, chunk in enumerate(chunks):
        buf += chunk
        n = reader.feed(buf)
        taken += reader.pieces
        reader.pieces.clear()
        if n is not None:
            consumed = n + reader._dropped
            del buf[:n]
            content = b"".join(taken) if keep and reader.error is None else None
            return (consumed, reader.error, content), bytes(buf) + b"".join(chunks[k + 1 :])
    return None, bytes(buf)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for p in points:
        chunks.append(data[last:p])
        last = p
    chunks.append(data[last:])
    return chunks


# -- Strategies -------------------------------------------------------------------

# Few distinct bytes, so that CR, LF and dots meet often.
pieces = st.sampled_from(
    [b"\r\n", b"\r", b"\n", b".", b"a", b"xyz", b"\r\n.", b".\r\n", b"\r\n.\r\n", b"a" * 7]
)
streams = st.lists(pieces, max_size=40).map(b"".join)
cut_lists = st.lists(st.integers(min_value=0, max_value=10_000), max_size=8)
size_limits = st.one_of(st.none(), st.just(0), st.integers(min_value=1, max_value=60))
line_limits = st.integers(min_value=3, max_value=30)


@settings(max_examples=600, deadline=None)
@given(stream=streams, cuts=cut_lists, size_limit=size_limits, line_limit=line_limits)
@example(stream=b"x" * 30 + b"\r\n.\r\n", cuts=[15], size_limit=10, line_limit=20)
@example(stream=b"a" * 12 + b"\r\n" + b"x" * 30 + b"\r\n.\r\n", cuts=[], size_limit=10,
         line_limit=20)
def test_reader_matches_reference_in_any_chunking(
    stream: bytes, cuts: list[int], size_limit: Optional[int], line_limit: int
) -> None:
    expected = ref_read(stream, size_limit, line_limit)
    got, rest = run_reader(split(stream, cuts), size_limit, line_limit)
    assert got == expected
    if expected is not None:
        assert rest == stream[expected[0] :]


@settings(max_examples=600, deadline=None)
@given(stream=streams, cuts=cut_lists, size_limit=size_limits, line_limit=line_limits)
@example(stream=b"ab\r\n" * 5 + b"x" * 30 + b"\r\n.\r\n", cuts=[12, 17], size_limit=16,
         line_limit=20)
def test_reader_without_keeping_content_decides_the_same(
    stream: bytes, cuts: list[int], size_limit: Optional[int], line_limit: int
) -> None:
    """keep=False drops checked lines as it goes: same outcome, no content."""
    expected = ref_read(stream, size_limit, line_limit)
    got, rest = run_reader(split(stream, cuts), size_limit, line_limit, keep=False)
    if expected is None:
        assert got is None
    else:
        assert got == (expected[0], expected[1], None)
        assert rest == stream[expected[0] :]
    byte_by_byte, _ = run_reader([bytes([b]) for b in stream], size_limit, line_limit, False)
    assert byte_by_byte == got


def test_reader_without_keeping_content_holds_little() -> None:
    reader = DataReader(None, 1001, keep=False)
    buf = bytearray()
    chunk = b"0123456789" * 70 + b"\r\n"  # 702 bytes
    most = 0
    for _ in range(15_000):  # about 10 MiB
        buf += chunk * 10
        assert reader.feed(buf) is None
        most = max(most, len(buf))
    assert most < 2 * len(chunk) * 10
    buf += b".\r\nQUIT\r\n"
    n = reader.feed(buf)
    assert n is not None and reader.error is None and reader.pieces == []
    assert bytes(buf[n:]) == b"QUIT\r\n"


def test_reader_keeping_content_holds_little_in_its_buffer() -> None:
    """The content leaves the buffer as pieces, read by read: the buffer
    itself stays about a read long, whatever the message size."""
    reader = DataReader(None, 1001)
    buf = bytearray()
    chunk = (b"0123456789" * 70 + b"\r\n") * 10
    most = 0
    taken = 0
    for _ in range(1_500):  # about 1 MiB
        buf += chunk
        assert reader.feed(buf) is None
        most = max(most, len(buf))
        taken += sum(map(len, reader.pieces))
        reader.pieces.clear()
    assert most < 2 * len(chunk)
    buf += b".\r\nQUIT\r\n"
    n = reader.feed(buf)
    assert n is not None and reader.error is None
    taken += sum(map(len, reader.pieces))
    assert taken == 1_500 * len(chunk) and bytes(buf[n:]) == b"QUIT\r\n"


def pieces_of(stream: bytes, cuts: list[int]) -> Optional[list[bytes]]:
    """The pieces a reader (line limit 30) hands out for ``stream`` fed in
    ``cuts``; None when the data does not end or breaks a limit (the engine
    then abandons what it was handed)."""
    reader = DataReader(None, 30)
    buf = bytearray()
    pieces: list[bytes] = []
    for chunk in split(stream, cuts):
        buf += chunk
        n = reader.feed(buf)
        pieces += reader.pieces
        reader.pieces.clear()
        if n is not None:
            return None if reader.error is not None else pieces
    return None


@settings(max_examples=600, deadline=None)
@given(stream=streams, cuts=cut_lists)
def test_pieces_unstuff_one_by_one(stream: bytes, cuts: list[int]) -> None:
    """Each piece ends just before a CRLF, so un-stuffing piece by piece,
    and the bare CR/LF check over the pieces, give what they give on the
    whole content (which the streaming hook relies on)."""
    pieces = pieces_of(stream, cuts)
    if pieces is None:
        return
    whole = b"".join(pieces)
    for piece in pieces[1:]:
        assert piece.startswith(b"\r\n")
    assert b"".join(map(unstuff, pieces)) == unstuff(whole)
    check = BareLineEndings()
    for piece in pieces:
        check.feed(piece)
    assert check.finish() == has_bare_cr_or_lf(whole)


@settings(max_examples=600, deadline=None)
@given(stream=streams, cuts=cut_lists, piece_size=st.integers(min_value=1, max_value=12))
def test_large_pieces_are_cut_just_before_a_crlf(
    stream: bytes, cuts: list[int], piece_size: int
) -> None:
    """Pieces are kept small (a large bytes object costs page faults), but
    only ever cut just before a CRLF, so that un-stuffing still works piece
    by piece."""
    import aiosmtpd._framing as framing

    saved, framing.PIECE_SIZE = framing.PIECE_SIZE, piece_size
    try:
        pieces = pieces_of(stream, cuts)
    finally:
        framing.PIECE_SIZE = saved
    if pieces is None:
        return
    whole = b"".join(pieces)
    assert whole == ref_read(stream, None, 30)[2]  # type: ignore[index]
    for piece in pieces[1:]:
        assert piece.startswith(b"\r\n")
    for piece in pieces:
        # Longer than the piece size only when there was no CRLF to cut at.
        assert len(piece) <= piece_size or b"\r\n" not in piece[1:piece_size]
    assert b"".join(map(unstuff, pieces)) == unstuff(whole)


@settings(max_examples=600, deadline=None)
@given(stream=streams, cuts=cut_lists)
def test_bare_line_endings_in_any_pieces(stream: bytes, cuts: list[int]) -> None:
    check = BareLineEndings()
    for piece in split(stream, cuts):
        check.feed(piece)
    assert check.finish() == has_bare_cr_or_lf(stream)


@settings(max_examples=200, deadline=None)
@given(stream=streams, size_limit=size_limits, line_limit=line_limits)
def test_reader_byte_by_byte(stream: bytes, size_limit: Optional[int], line_limit: int) -> None:
    expected = ref_read(stream, size_limit, line_limit)
    got, _ = run_reader([bytes([b]) for b in stream], size_limit, line_limit)
    assert got == expected


@settings(deadline=None)  # no timing: a loaded machine must not fail it
@given(content=streams)
def test_unstuff_matches_reference(content: bytes) -> None:
    assert unstuff(content) == ref_unstuff(content)


@settings(deadline=None)  # no timing: a loaded machine must not fail it
@given(buf=streams, line_limit=line_limits)
def test_find_long_line_matches_reference(buf: bytes, line_limit: int) -> None:
    assert find_long_line(buf, line_limit) == ref_find_long_line(buf, line_limit)


@settings(deadline=None)  # no timing: a loaded machine must not fail it
@given(content=streams)
def test_has_bare_cr_or_lf_matches_reference(content: bytes) -> None:
    assert has_bare_cr_or_lf(content) is ref_bare(content)


# -- Explicit cases ------------------------------------------------------------------



@pytest.mark.parametrize("fake_end", SMUGGLING_ENDS, ids=repr)
def test_smuggling_end_of_data_variants_do_not_end_data(fake_end: bytes) -> None:
    smuggled = b"MAIL FROM:<evil@example.com>\r\n"
    stream = b"Subject: hi\r\n\r\nbody" + fake_end + smuggled + b"\r\n.\r\n"
    for chunks in ([stream], [bytes([b]) for b in stream]):
        got, rest = run_reader(chunks, None, 1001)
        assert got is not None
        consumed, error, content = got
        assert error is None
        assert rest == b""
        assert content is not None
        assert smuggled in content
        assert consumed == len(stream)


def test_terminator_at_start() -> None:
    got, rest = run_reader([b".\r\nNOOP\r\n"], 100, 1001)
    assert got == (3, None, b"")
    assert rest == b"NOOP\r\n"


def test_terminator_split_across_chunks() -> None:
    got, rest = run_reader([b"abc\r", b"\n", b".", b"\r", b"\nQUIT\r\n"], None, 1001)
    assert got == (8, None, b"abc\r\n")
    assert rest == b"QUIT\r\n"


def test_no_terminator_yet() -> None:
    assert run_reader([b"abc\r\n.\r"], None, 1001)[0] is None


def test_stuffed_line_at_start_is_not_terminator() -> None:
    got, _ = run_reader([b"..\r\n.\r\n"], None, 1001)
    assert got == (7, None, b"..\r\n")
    assert unstuff(b"..\r\n") == b".\r\n"


@pytest.mark.parametrize(
    ("length", "error"),
    [(999, None), (1000, DataError.TOO_LONG)],
)
def test_line_length_limit_counts_crlf(length: int, error: Optional[DataError]) -> None:
    stream = b"x" * length + b"\r\n.\r\n"
    got, _ = run_reader([stream], None, 1001)
    assert got is not None
    assert got[1] is error


def test_line_limit_applies_before_unstuffing() -> None:
    got, _ = run_reader([b"." + b"x" * 999 + b"\r\n.\r\n"], None, 1001)
    assert got is not None and got[1] is DataError.TOO_LONG


@pytest.mark.parametrize(("total", "error"), [(3000, None), (3001, DataError.TOO_MUCH)])
def test_size_limit_counts_raw_bytes(total: int, error: Optional[DataError]) -> None:
    line = b"y" * 98 + b"\r\n"
    body = line * 29 + b"z" * (total - 2900 - 2) + b"\r\n"
    assert len(body) == total
    got, _ = run_reader([body + b".\r\n"], 3000, 1001)
    assert got is not None and got[1] is error


def test_first_error_wins_size_then_long_line() -> None:
    stream = b"a" * 98 + b"\r\n" + b"b" * 98 + b"\r\n" + b"c" * 2000 + b"\r\n.\r\n"
    for chunks in ([stream], [stream[:150], stream[150:]], [stream[:250], stream[250:]]):
        got, _ = run_reader(chunks, 150, 1001)
        assert got is not None and got[1] is DataError.TOO_MUCH


def test_first_error_wins_long_line_then_size() -> None:
    stream = b"c" * 2000 + b"\r\n" + b"a" * 5000 + b"\r\n.\r\n"
    got, _ = run_reader([stream[:10], stream[10:]], 3000, 1001)
    assert got is not None and got[1] is DataError.TOO_LONG


@pytest.mark.parametrize(
    ("length", "error"),
    [
        (1002, DataError.TOO_MUCH),
        (1003, DataError.TOO_MUCH),
        (1004, DataError.TOO_LONG),
    ],
)
def test_line_just_over_limit_crossing_size_limit(length: int, error: DataError) -> None:
    # Upstream 1.4.6, observed: 552 for the 1002-byte line, 500 from 1004 on.
    stream = (b"a" * 98 + b"\r\n") * 25 + b"b" * (length - 2) + b"\r\n.\r\n"
    for cut in (None, 2500 + 500, 2500 + length - 1):
        chunks = [stream] if cut is None else [stream[:cut], stream[cut:]]
        got, _ = run_reader(chunks, 3000, 1001)
        assert got is not None and got[1] is error


def test_rejected_data_is_not_kept() -> None:
    reader = DataReader(10, 1001)
    buf = bytearray(b"x\r\n" * 1000)
    assert reader.feed(buf) is None
    assert reader.error is DataError.TOO_MUCH
    assert len(buf) <= 4
    buf += b"\r\n.\r\nNOOP\r\n"
    n = reader.feed(buf)
    assert n is not None
    assert bytes(buf[n:]) == b"NOOP\r\n"
    assert reader.pieces == []


@pytest.mark.parametrize(
    ("content", "bare"),
    [
        (b"", False),
        (b"a\r\nb\r\n", False),
        (b"a\nb\r\n", True),
        (b"a\rb\r\n", True),
        (b"a\r\r\n", True),
        (b"\n", True),
        (b"\r", True),
        (b"a\n\r", True),
    ],
)
def test_has_bare_cr_or_lf_cases(content: bytes, bare: bool) -> None:
    assert has_bare_cr_or_lf(content) is bare


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", b""),
        (b".a\r\n", b"a\r\n"),
        (b"a\r\n..\r\n", b"a\r\n.\r\n"),
        (b"a\n.b\r\n", b"a\n.b\r\n"),
        (b"a\r\n.\r\n.x\r\n", b"a\r\n\r\nx\r\n"),
        (b"a\r.b\r\n", b"a\r.b\r\n"),
    ],
)
def test_unstuff_cases(content: bytes, expected: bytes) -> None:
    assert unstuff(content) == expected
