"""The receiver (aiosmtpd._receiver): a connection's received bytes and its
phase, without a socket.  Each decision it makes has a test here; hypothesis
checks that lines come out the same however the bytes are cut, and a seeded
random walk drives the phases directly, hundreds of thousands of steps, with
a model of where every byte must go."""

from __future__ import annotations

import random
from typing import Optional, Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiosmtpd._framing import DataError, DataReader
from aiosmtpd._receiver import (
    COMMAND_BACKLOG,
    MESSAGE_BACKLOG,
    NEXT,
    TOO_LONG,
    Phase,
    Receiver,
)

Line = Union[bytes, object]


def lines_of(receiver: Receiver, limit: int) -> list[Line]:
    out: list[Line] = []
    while (line := receiver.line(limit)) is not None:
        out.append(line)
    return out


# -- Command lines ---------------------------------------------------------------------


def test_a_line_waits_for_its_lf() -> None:
    r = Receiver()
    r.feed(b"NOOP\r")
    assert r.line(512) is None and not r.has_line(512)
    r.feed(b"\nQUIT\r\n")
    assert r.has_line(512)
    assert lines_of(r, 512) == [b"NOOP\r\n", b"QUIT\r\n"]
    assert r.buf == b""


def test_a_line_at_the_limit_is_a_line_and_one_more_byte_is_too_long() -> None:
    r = Receiver()
    r.feed(b"a" * 10 + b"\n" + b"b" * 11 + b"\nNOOP\n")
    assert lines_of(r, 10) == [b"a" * 10 + b"\n", TOO_LONG, b"NOOP\n"]


def test_an_over_long_line_is_dropped_as_it_arrives() -> None:
    """Never kept, however long: the buffer holds one read at most."""
    r = Receiver()
    for _ in range(1000):
        r.feed(b"x" * 4096)
        assert r.line(512) is None
        assert len(r.buf) == 0
    assert r.has_line(512) is False
    r.feed(b"tail\r\nNOOP\r\n")
    assert r.has_line(512)
    assert lines_of(r, 512) == [TOO_LONG, b"NOOP\r\n"]


def test_a_line_is_a_copy_of_the_buffer() -> None:
    r = Receiver()
    r.feed(b"MAIL FROM:<a@b>\r\n")
    line = r.line(512)
    r.feed(b"overwrite everything")
    assert line == b"MAIL FROM:<a@b>\r\n" and type(line) is bytes


@pytest.mark.parametrize(
    ("phase", "limit"),
    [(Phase.COMMANDS, COMMAND_BACKLOG), (Phase.MESSAGE, MESSAGE_BACKLOG),
     (Phase.CHUNK, MESSAGE_BACKLOG)],
)
def test_backlog_pauses_reading_past_the_phase_limit(phase: Phase, limit: int) -> None:
    r = Receiver()
    if phase is Phase.MESSAGE:
        r.begin_message(DataReader(None, 1001))
    elif phase is Phase.CHUNK:
        r.begin_chunk(10 * MESSAGE_BACKLOG)
    r.feed(b"x" * limit)
    assert not r.backlog()
    r.feed(b"x")
    assert r.backlog()


def test_after_goodbye_input_is_dropped() -> None:
    r = Receiver()
    r.feed(b"NOOP\r\n")
    r.close()
    assert r.phase is Phase.CLOSING and r.buf == b""
    assert r.feed(b"more") is False and r.buf == b""
    assert r.line(512) is None


def test_discard_forgets_plaintext_after_starttls() -> None:
    r = Receiver()
    r.feed(b"x" * 600)
    assert r.line(512) is None  # dropping an over-long line
    r.discard()
    r.feed(b"EHLO after\r\n")
    assert r.line(512) == b"EHLO after\r\n"


def test_phase_moves_are_checked() -> None:
    r = Receiver()
    r.close()
    with pytest.raises(AssertionError, match="closing -> commands"):
        r.to(Phase.COMMANDS)
    assert NEXT[Phase.CLOSING] == frozenset()
    r = Receiver()
    r.begin_chunk(3)
    with pytest.raises(AssertionError, match="chunk -> message"):
        r.begin_message(DataReader(None, 1001))


# -- DATA ------------------------------------------------------------------------------


def test_message_hands_pieces_then_goes_back_to_commands() -> None:
    r = Receiver()
    reader = DataReader(None, 1001)
    r.begin_message(reader)
    r.feed(b"line one\r\nline")
    assert r.message() == (False, True)
    r.feed(b" two\r\n.\r\nQUIT\r\n")
    assert r.message() == (True, True)
    assert b"".join(reader.pieces) == b"line one\r\nline two\r\n"
    assert r.phase is Phase.COMMANDS and r.line(512) == b"QUIT\r\n"


def test_message_is_active_only_when_a_line_is_completed() -> None:
    r = Receiver()
    r.begin_message(DataReader(None, 1001))
    r.feed(b"no line end yet")
    assert r.message() == (False, False)
    r.feed(b" still none")
    assert r.message() == (False, False)
    r.feed(b"\r")
    assert r.message() == (False, False)
    r.feed(b"\n")
    assert r.message() == (False, True)


def test_refused_data_earns_no_time_and_is_not_kept() -> None:
    r = Receiver()
    reader = DataReader(10, 1001)
    r.begin_message(reader)
    r.feed(b"x\r\n" * 100)
    assert r.message() == (False, False)
    assert reader.error is DataError.TOO_MUCH and len(r.buf) <= 4
    r.feed(b"\r\n.\r\n")
    assert r.message() == (True, True)


def test_end_abandons_a_message_or_chunk() -> None:
    r = Receiver()
    r.begin_message(DataReader(None, 1001))
    r.end()
    assert r.phase is Phase.COMMANDS
    r.begin_chunk(5)
    r.end()
    assert r.phase is Phase.COMMANDS and r.chunk_left() == 0
    r.close()
    r.end()  # a goodbye stays a goodbye
    assert r.phase is Phase.CLOSING


# -- BDAT ------------------------------------------------------------------------------


def test_chunk_takes_exactly_its_size_whatever_the_bytes() -> None:
    r = Receiver()
    r.begin_chunk(8)
    r.feed(b"QUIT\r\n.\r")
    r.feed(b"\nNOOP\r\n")
    assert r.chunk() == b"QUIT\r\n.\r" and r.chunk_left() == 0
    assert r.phase is Phase.COMMANDS and lines_of(r, 512) == [b"\n", b"NOOP\r\n"]


def test_chunk_waits_and_may_drop() -> None:
    r = Receiver()
    r.begin_chunk(5)
    assert r.chunk() is None
    r.feed(b"ab")
    assert r.chunk(keep=False) == b"" and r.chunk_left() == 3
    r.feed(b"cdeNOOP")
    assert r.chunk() == b"cde" and bytes(r.buf) == b"NOOP"


def test_an_empty_chunk_is_done_at_once() -> None:
    r = Receiver()
    r.begin_chunk(0)
    assert r.phase is Phase.COMMANDS and r.chunk_left() == 0


# -- Properties ---------------------------------------------------------------------------


def ref_lines(stream: bytes, limit: int) -> list[Line]:
    """Every complete line of ``stream``, one at a time: TOO_LONG for one
    longer than ``limit`` bytes before its LF."""
    out: list[Line] = []
    for part in stream.split(b"\n")[:-1]:
        out.append(part + b"\n" if len(part) + 1 <= limit + 1 else TOO_LONG)
    return out


@settings(max_examples=500, deadline=None)
@given(
    stream=st.lists(st.sampled_from([b"a", b"bcd", b"\r", b"\n", b"\r\n", b"x" * 9]),
                    max_size=60).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=8),
    limit=st.integers(min_value=1, max_value=20),
)
def test_lines_are_the_same_however_the_bytes_are_cut(
    stream: bytes, cuts: list[int], limit: int
) -> None:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    r = Receiver()
    got: list[Line] = []
    for a, b in zip([0, *points], [*points, len(stream)]):
        r.feed(stream[a:b])
        while r.has_line(limit):  # has_line() says what line() will do
            line = r.line(limit)
            assert line is not None
            got.append(line)
        assert r.line(limit) is None
    assert got == ref_lines(stream, limit)


STEPS = 300_000


def test_random_walk_through_the_phases() -> None:
    """A seeded walk: random bytes, random cuts, random phases.  After every
    step the buffer must be exactly what the model says is left (nothing
    lost, nothing seen twice), and each output must be what the model
    expects."""
    rng = random.Random(20261204)
    alphabet = [b"a", b"\r", b"\n", b".", b"\r\n", b"\r\n.\r\n", b"zz"]
    r = Receiver()
    stream = bytearray()  # everything fed since the model's last resync
    pos = 0  # what the receiver must have consumed of it
    limit = 8
    dropping = False
    message: Optional[tuple[DataReader, int]] = None
    seen = {"lines": 0, "too long": 0, "chunks": 0, "messages": 0}
    for step in range(STEPS):
        op = rng.random()
        if op < 0.35:
            data = b"".join(rng.choices(alphabet, k=rng.randint(0, 4)))
            assert r.feed(data)
            stream += data
        elif r.phase is Phase.COMMANDS and op < 0.8:
            avail = bytes(stream[pos:])
            got = r.line(limit)
            # The model of line():
            expected: Optional[Line]
            if not dropping and (j := avail.find(b"\n", 0, limit + 1)) >= 0:
                expected, pos = avail[: j + 1], pos + j + 1
            elif not dropping and len(avail) <= limit:
                expected = None
            elif (j := avail.find(b"\n")) >= 0:
                expected, pos, dropping = TOO_LONG, pos + j + 1, False
            else:
                expected, pos, dropping = None, len(stream), True
            assert got == expected, step
            if got is TOO_LONG:
                seen["too long"] += 1
            elif got is not None:
                seen["lines"] += 1
        elif r.phase is Phase.COMMANDS and op < 0.9:
            if rng.random() < 0.5:
                r.begin_chunk(rng.randint(0, 12))
            else:
                reader = DataReader(None, 1000)
                r.begin_message(reader)
                message = (reader, pos)
        elif r.phase is Phase.CHUNK:
            left = r.chunk_left()
            piece = r.chunk()
            if piece is not None:
                assert piece == stream[pos : pos + len(piece)] and len(piece) <= left
                pos += len(piece)
                seen["chunks"] += not r.chunk_left()
        elif r.phase is Phase.MESSAGE:
            assert message is not None
            reader, start = message
            done, _ = r.message()
            if done:
                rest = bytes(stream[start:])
                end = 0 if rest.startswith(b".\r\n") else rest.find(b"\r\n.\r\n") + 2
                assert b"".join(reader.pieces) == rest[:end], step
                pos = start + end + 3
                message = None
                seen["messages"] += 1
            else:
                pos = len(stream) - len(r.buf)  # the framing keeps what it needs
        if r.phase is not Phase.MESSAGE:
            assert bytes(r.buf) == bytes(stream[pos:]), step
        if pos > 4096 and r.phase is Phase.COMMANDS:
            del stream[:pos]
            pos = 0
    # The walk went everywhere, many times.
    assert min(seen.values()) > 1000, seen
