"""The streaming hook, ``handle_DATA_STREAM`` (docs/large.rst): a handler
that takes the message as it arrives, over DATA and over BDAT chunks, with
backpressure, and that hears of every message that will not be delivered."""

from __future__ import annotations

import asyncio
import threading
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiosmtpd._message_body import QUEUE_HIGH, MessageBody
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, MessageAborted, Session
from tests._server import MAIL, RCPT, LoopThread, Recorder, ServerFactory, serving
from tests._server import esmtp_transaction as transaction

pytestmark = pytest.mark.timeout(60)

WAIT = 20  # seconds; a safety net, never a synchronisation


class Streamer:
    """Keeps each streamed message, and what happened to the ones that were
    abandoned; ``ended`` is set when a hook ends, however it ends."""

    def __init__(self, reply: str = "250 OK", pause: float = 0.0) -> None:
        self.reply = reply
        self.pause = pause
        self.messages: list[bytes] = []
        self.aborted: list[str] = []
        self.in_task: list[bool] = []
        self.chunks = 0
        self.started = threading.Event()
        self.ended = threading.Event()
        # The server's buffered bytes of this message, at each chunk.
        self.most_buffered = 0

    async def handle_DATA_STREAM(
        self, server: SMTP, session: Session, envelope: Envelope, body: MessageBody
    ) -> str:
        self.in_task.append(asyncio.current_task() is not None)
        parts = []
        try:
            async for chunk in body:
                self.started.set()
                self.chunks += 1
                parts.append(chunk)
                buffered = len(server._receiver.buf) + body._queued
                self.most_buffered = max(self.most_buffered, buffered)
                if self.pause:
                    await asyncio.sleep(self.pause)  # a slow handler, not a wait for anything
        except MessageAborted as aborted:
            self.aborted.append(aborted.reason)
            raise
        finally:
            self.ended.set()
        self.messages.append(b"".join(parts))
        return self.reply


def send_data(c: Any, message: bytes) -> str:
    assert c.cmd("DATA") == "354 End data with <CR><LF>.<CR><LF>"
    c.send(message + b".\r\n")
    return c.text()


def stuffed(message: bytes) -> bytes:
    lines = message.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


def test_the_hook_gets_what_handle_data_would(start: ServerFactory) -> None:
    message = b"Subject: hi\r\n\r\n.starts with a dot\r\n..two\r\nend\r\n"
    streamer, recorder = Streamer(), Recorder()
    for handler in (streamer, recorder):
        with start(handler).client() as c:
            transaction(c)
            assert send_data(c, stuffed(message)) == "250 OK"
            assert c.cmd("NOOP") == "250 OK"
    assert streamer.messages == [message] == [recorder.envelopes[0].original_content]
    assert streamer.in_task == [True]


@pytest.mark.parametrize("size", [1024, 1024**2, 32 * 1024**2], ids=["1KiB", "1MiB", "32MiB"])
def test_sizes(start: ServerFactory, size: int) -> None:
    line = b".dotted line\r\n" + b"q" * 84 + b"\r\n"
    message = (line * (size // len(line) + 1))[:size - 2] + b"\r\n"
    handler = Streamer()
    with start(handler, data_size_limit=None).client() as c:
        transaction(c)
        assert send_data(c, stuffed(message)) == "250 OK"
    assert handler.messages == [message]


def test_the_data_timer_aborts_a_stalled_stream(start: ServerFactory) -> None:
    handler = Streamer()
    with start(handler, data_timeout=0.2).client() as c:
        transaction(c)
        assert c.cmd("DATA").startswith("354")
        c.send(b"the client then stalls\r\n")
        assert c.text() == "421 4.4.2 Timeout waiting for data, closing connection"
        assert handler.ended.wait(WAIT)  # at once, not when the connection closes
    assert handler.aborted == ["timed out"] and handler.messages == []


def test_the_hook_reply_is_sent_and_content_stays_none(start: ServerFactory) -> None:
    seen: list[Any] = []

    class Handler(Streamer):
        async def handle_DATA_STREAM(self, server: SMTP, session: Session,
                                     envelope: Envelope, body: MessageBody) -> str:
            reply = await super().handle_DATA_STREAM(server, session, envelope, body)
            seen.append((envelope.content, envelope.original_content, body.size))
            return reply

    with start(Handler("250 2.0.0 queued as 42")).client() as c:
        transaction(c)
        assert send_data(c, b"abc\r\n") == "250 2.0.0 queued as 42"
    assert seen == [(None, None, 5)]


def test_chunks_are_bytes_even_with_decode_data(start: ServerFactory) -> None:
    kinds: list[type] = []

    class Kinds(Streamer):
        async def handle_DATA_STREAM(self, server: SMTP, session: Session,
                                     envelope: Envelope, body: MessageBody) -> str:
            async for chunk in body:
                kinds.append(type(chunk))
            return "250 OK"

    with start(Kinds(), decode_data=True, enable_SMTPUTF8=True).client() as c:
        transaction(c)
        assert send_data(c, b"caf\xc3\xa9\r\n") == "250 OK"
    assert kinds and set(kinds) == {bytes}


def test_with_decode_data_a_stream_must_be_what_handle_data_could_decode(
    start: ServerFactory,
) -> None:
    """decode_data=True without SMTPUTF8: handle_DATA would refuse a message
    that is not ASCII, so the stream is aborted and refused the same way."""
    handler, recorder = Streamer(), Recorder()
    replies = []
    for h in (handler, recorder):
        with start(h, decode_data=True).client() as c:
            transaction(c)
            replies.append(send_data(c, b"plain\r\ncaf\xc3\xa9\r\n"))
            assert c.cmd("NOOP") == "250 OK"
    assert replies == ["500 Error: strict ASCII mode"] * 2
    assert handler.ended.wait(WAIT)
    assert handler.aborted == ["not ASCII"] and handler.messages == []


def test_stream_wins_over_handle_data(start: ServerFactory) -> None:
    class Both(Streamer):
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            return "554 handle_DATA was called"

    handler = Both()
    with start(handler).client() as c:
        transaction(c)
        assert send_data(c, b"x\r\n") == "250 OK"
    assert handler.messages == [b"x\r\n"]


def test_a_hook_that_raises_gets_handle_datas_reply(start: ServerFactory) -> None:
    class Raising:
        async def handle_DATA_STREAM(self, server: SMTP, session: Session,
                                     envelope: Envelope, body: MessageBody) -> str:
            async for _ in body:
                raise ValueError("cannot store")
            return "250 OK"

    class RaisingWhole:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            raise ValueError("cannot store")

    replies = []
    for handler in (Raising(), RaisingWhole()):
        with start(handler).client() as c:
            transaction(c)
            replies.append(send_data(c, b"line\r\n" * 50_000))
            assert c.cmd("NOOP") == "250 OK"  # the rest of the message was read, not run
    assert replies[0] == replies[1] == "500 Error: (ValueError) cannot store"


def test_an_early_verdict_is_sent_after_the_message(start: ServerFactory) -> None:
    class Refuses:
        async def handle_DATA_STREAM(self, server: SMTP, session: Session,
                                     envelope: Envelope, body: MessageBody) -> str:
            return "554 5.7.1 Not from you"

    with start(Refuses()).client() as c:
        transaction(c)
        assert send_data(c, b"NOOP\r\n" * 100_000) == "554 5.7.1 Not from you"
        assert c.cmd("NOOP") == "250 OK"


@pytest.mark.parametrize(
    ("options", "message", "reply", "reason"),
    [
        ({"data_size_limit": 1000}, (b"a" * 80 + b"\r\n") * 100, "552 Error: Too much mail data",
         "message too big"),
        ({}, b"x" * 2000 + b"\r\n", "500 Line too long (see RFC5321 4.5.3.1.6)",
         "line too long"),
        ({"strict_line_endings": True}, b"ok\r\n" * 1000 + b"bare\nLF\r\n",
         "554 5.6.0 Error: bare CR or LF in message data", "bare CR or LF"),
    ],
    ids=["size", "line", "strict"],
)
def test_a_broken_limit_aborts_the_stream_and_never_gets_a_250(
    start: ServerFactory, options: dict[str, Any], message: bytes, reply: str, reason: str
) -> None:
    # The handler even says 250 after the abort: the server's error wins.
    class Insists(Streamer):
        async def handle_DATA_STREAM(self, *args: Any) -> str:
            try:
                return await super().handle_DATA_STREAM(*args)
            except MessageAborted:
                return "250 OK"

    handler = Insists()
    with start(handler, **options).client() as c:
        transaction(c)
        assert send_data(c, b"first line\r\n" + message) == reply
        assert c.cmd("NOOP") == "250 OK"
    assert handler.ended.wait(WAIT)
    assert handler.aborted == [reason] and handler.messages == []


def test_a_client_that_vanishes_mid_message_is_reported(start: ServerFactory) -> None:
    handler = Streamer()
    with start(handler).client() as c:
        transaction(c)
        assert c.cmd("DATA").startswith("354")
        c.send(b"part of a message\r\n" * 1000)
        assert handler.started.wait(WAIT)
    assert handler.ended.wait(WAIT)
    assert handler.aborted == ["connection lost"] and handler.messages == []


def test_a_server_stop_mid_message_is_reported(start: ServerFactory) -> None:
    handler = Streamer()
    server = start(handler)
    with server.client() as c:
        transaction(c)
        assert c.cmd("DATA").startswith("354")
        c.send(b"part of a message\r\n" * 1000)
        assert handler.started.wait(WAIT)
        server.close()
        assert handler.ended.wait(WAIT)
    assert handler.aborted == ["connection lost"] and handler.messages == []


def test_a_drain_deadline_mid_message_is_reported(start: ServerFactory) -> None:
    from aiosmtpd.operations import Operations

    handler = Streamer()
    ops = Operations()
    server = start(handler, operations=ops)
    with server.client() as c:
        transaction(c)
        assert c.cmd("DATA").startswith("354")
        c.send(b"part of a message\r\n" * 1000)
        assert handler.started.wait(WAIT)
        drained = asyncio.run_coroutine_threadsafe(ops.drain(0.1), server.lt.loop)
        assert c.text() == "421 4.3.2 Service shutting down, try again later"
        assert handler.ended.wait(WAIT)
        drained.result(WAIT)
    assert handler.aborted == ["connection closed by the server"] and handler.messages == []


def test_backpressure_keeps_the_servers_buffers_bounded(start: ServerFactory) -> None:
    """A slow handler: the server stops reading rather than buffering.
    Without backpressure the 32 MiB below pile up in the server."""
    handler = Streamer(pause=0.002)
    line = b"y" * 998 + b"\r\n"
    with start(handler, data_size_limit=None).client() as c:
        transaction(c)
        assert send_data(c, line * (32 * 1024)) == "250 OK"
    assert len(handler.messages[0]) == 32 * 1024 * 1000
    # The receive buffer's bound, one read, and the hook's queue.
    assert handler.most_buffered <= 1024 * 1024 + 256 * 1024 + 2 * QUEUE_HIGH


def test_a_gibibyte_streams_in_bounded_memory(start: ServerFactory) -> None:
    """1 GiB through the hook: it never holds more than a chunk, and the
    server never holds more than its bounds (counted, not timed)."""
    state = {"size": 0, "crc": 0, "largest": 0, "buffered": 0}

    class Counter:
        async def handle_DATA_STREAM(self, server: SMTP, session: Session,
                                     envelope: Envelope, body: MessageBody) -> str:
            async for chunk in body:
                state["size"] += len(chunk)
                state["crc"] = zlib.crc32(chunk, state["crc"])
                state["largest"] = max(state["largest"], len(chunk))
                state["buffered"] = max(state["buffered"], len(server._receiver.buf) + body._queued)
            return "250 OK"

    block = (b"z" * 998 + b"\r\n") * 1024  # about 1 MiB of 1000-byte lines
    blocks = 1049  # just over 1 GiB
    with start(Counter(), data_size_limit=None).client(timeout=120) as c:
        transaction(c)
        assert c.cmd("DATA").startswith("354")
        crc = 0
        for _ in range(blocks):
            c.send(block)
            crc = zlib.crc32(block, crc)
        c.send(b".\r\n")
        assert c.text() == "250 OK"
    assert state["size"] == blocks * len(block) and state["crc"] == crc
    assert state["largest"] <= 1024 * 1024 + 256 * 1024
    assert state["buffered"] <= 1024 * 1024 + 256 * 1024 + 2 * QUEUE_HIGH


# -- BDAT --------------------------------------------------------------------------


def test_bdat_chunks_stream_as_they_arrive(start: ServerFactory) -> None:
    handler = Streamer()
    with start(handler, enable_CHUNKING=True).client() as c:
        transaction(c)
        c.send(b"BDAT 6\r\nHello ")
        assert c.text() == "250 2.0.0 6 octets received"
        assert handler.started.wait(WAIT)  # before the message is complete
        c.send(b"BDAT 7 LAST\r\nworld\r\n")
        assert c.text() == "250 OK"
    assert handler.messages == [b"Hello world\r\n"]


def test_rset_after_a_bdat_chunk_aborts_the_stream(start: ServerFactory) -> None:
    handler = Streamer()
    with start(handler, enable_CHUNKING=True).client() as c:
        transaction(c)
        c.send(b"BDAT 6\r\nHello ")
        assert c.text() == "250 2.0.0 6 octets received"
        assert c.cmd("RSET") == "250 OK"
        assert handler.ended.wait(WAIT)
        transaction(c)
        c.send(b"BDAT 3 LAST\r\nnew")
        assert c.text() == "250 OK"
    assert handler.aborted == ["transaction reset"] and handler.messages == [b"new"]


def test_bdat_over_the_size_limit_aborts_the_stream(start: ServerFactory) -> None:
    handler = Streamer()
    with start(handler, enable_CHUNKING=True, data_size_limit=10).client() as c:
        transaction(c)
        c.send(b"BDAT 6\r\nHello ")
        assert c.text() == "250 2.0.0 6 octets received"
        c.send(b"BDAT 7 LAST\r\nworld\r\n")
        assert c.text() == "552 Error: Too much mail data"
        assert handler.ended.wait(WAIT)
    assert handler.aborted == ["message too big"]


def test_a_client_that_vanishes_between_chunks_is_reported(start: ServerFactory) -> None:
    handler = Streamer()
    with start(handler, enable_CHUNKING=True).client() as c:
        transaction(c)
        c.send(b"BDAT 6\r\nHello ")
        assert c.text() == "250 2.0.0 6 octets received"
    assert handler.ended.wait(WAIT)
    assert handler.aborted == ["connection lost"]


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    message=st.binary(max_size=3000).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"\r\n")),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=6),
)
def test_any_bdat_split_streams_what_data_streams(
    lt: LoopThread, message: bytes, cuts: list[int]
) -> None:
    message += b"\r\n"
    points = sorted({c % (len(message) + 1) for c in cuts})
    chunks = [message[a:b] for a, b in zip([0, *points], [*points, len(message)])]
    handler = Streamer()
    with serving(lt, handler, enable_CHUNKING=True) as server, server.client() as c:
        transaction(c)
        assert send_data(c, stuffed(message)) == "250 OK"
        transaction(c)
        for chunk in chunks[:-1]:
            c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
            assert c.text() == f"250 2.0.0 {len(chunk)} octets received"
        c.send(b"BDAT %d LAST\r\n" % len(chunks[-1]) + chunks[-1])
        assert c.text() == "250 OK"
    assert handler.messages == [message, message]


# -- LMTP ----------------------------------------------------------------------------


def test_lmtp_hook_may_answer_per_recipient(lt: LoopThread) -> None:
    class PerRecipient:
        async def handle_DATA_STREAM(self, server: SMTP, session: Session,
                                     envelope: Envelope, body: MessageBody) -> list[str]:
            async for _ in body:
                pass
            return ["250 2.0.0 first", "452 4.2.2 second is full"]

    with serving(lt, PerRecipient(), cls=LMTP) as server, server.client() as c:
        c.multi("LHLO c")
        assert c.cmd(MAIL) == "250 OK"
        assert c.cmd(RCPT) == "250 OK"
        assert c.cmd("RCPT TO:<c@example.com>") == "250 OK"
        assert c.cmd("DATA").startswith("354")
        c.send(b"hi\r\n.\r\n")
        assert c.text() == "250 2.0.0 first"
        assert c.text() == "452 4.2.2 second is full"
