"""The receive path: reads land in a reused buffer (asyncio.BufferedProtocol).

What must hold for users: every byte arrives once and in order, whatever the
read sizes, over plain TCP and TLS; a subclass that overrides
``data_received`` still gets every byte, as ``bytes``; connections served by
different threads (one Controller each) never see each other's bytes.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
from typing import Any

import pytest

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import SMTP, Envelope, Session
from tests._server import Recorder, ServerFactory


def big_message(fill: bytes, size: int) -> bytes:
    line = fill * 76 + b"\r\n"
    return b"Subject: big\r\n\r\n" + line * (size // len(line))


def test_smtp_is_a_buffered_protocol() -> None:
    assert isinstance(SMTP(Sink(), hostname="h"), asyncio.BufferedProtocol)
    assert isinstance(SMTP(Sink(), hostname="h"), asyncio.StreamReaderProtocol)


def test_message_larger_than_the_read_buffer_arrives_intact(start: ServerFactory) -> None:
    handler = Recorder()
    server = start(handler)
    body = big_message(b"a", 3 * 1024 * 1024)
    with server.smtplib() as client:
        client.sendmail("a@example.com", ["b@example.com"], body)
    assert handler.envelopes[0].content == body


def test_subclass_data_received_sees_every_byte_as_bytes(start: ServerFactory) -> None:
    seen: list[Any] = []

    class Spy(SMTP):
        def data_received(self, data: bytes) -> None:
            seen.append(data)
            super().data_received(data)

    handler = Recorder()
    server = start(handler, cls=Spy)
    body = big_message(b"s", 600 * 1024)
    with server.smtplib() as client:
        client.sendmail("a@example.com", ["b@example.com"], body)
    assert all(type(chunk) is bytes for chunk in seen)
    received = b"".join(seen)
    assert body in received
    assert received.startswith(b"ehlo ") and received.endswith(b"QUIT\r\n")
    assert handler.envelopes[0].content == body


def test_threads_never_share_received_bytes() -> None:
    """Two Controllers (two loop threads) receive large messages at once."""

    class Keep:
        def __init__(self) -> None:
            self.contents: list[bytes] = []

        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            assert isinstance(envelope.content, bytes)
            self.contents.append(envelope.content)
            return "250 OK"

    handlers = [Keep(), Keep()]
    controllers = [Controller(h, hostname="127.0.0.1", port=0) for h in handlers]
    for c in controllers:
        c.start()
    bodies = [big_message(b"x", 2 * 1024 * 1024), big_message(b"y", 2 * 1024 * 1024)]
    errors: list[BaseException] = []

    def send(index: int) -> None:
        try:
            port = controllers[index].server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                for _ in range(3):
                    client.sendmail("a@example.com", ["b@example.com"], bodies[index])
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for c in controllers:
            c.stop()
    assert not errors
    for handler, body in zip(handlers, bodies):
        assert len(handler.contents) == 3
        assert all(content == body for content in handler.contents)


# -- A message nothing can see is checked as it arrives, not kept ------------------


class BufferWatch(SMTP):
    """Notes the largest receive buffer (a sync override: commands stay inline)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.most = 0

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.most = max(self.most, len(self._receiver.buf))


@pytest.mark.engine("inline")  # in a Task, a subclass could see it
def test_sink_message_is_not_kept(start: ServerFactory) -> None:
    server = start(Sink(), cls=BufferWatch, data_size_limit=None)
    body = big_message(b"k", 8 * 1024 * 1024)
    with server.smtplib() as client:
        client.sendmail("a@example.com", ["b@example.com"], body)
        assert client.noop() == (250, b"OK")
    watch = server.last
    assert isinstance(watch, BufferWatch)
    assert watch.most < 1024 * 1024  # a few reads' worth, not the 8 MiB message


def test_sink_still_enforces_the_limits(start: ServerFactory) -> None:
    server = start(Sink(), data_size_limit=5000)
    with server.client() as c:
        c.multi("EHLO client")
        for body, reply in [
            ((b"x" * 80 + b"\r\n") * 100, "552 Error: Too much mail data"),
            (b"y" * 2000 + b"\r\n", "500 Line too long (see RFC5321 4.5.3.1.6)"),
            ((b"z" * 80 + b"\r\n") * 10, "250 OK"),
        ]:
            assert c.cmd("MAIL FROM:<a@example.com>") == "250 OK"
            assert c.cmd("RCPT TO:<b@example.com>") == "250 OK"
            assert c.cmd("DATA").startswith("354")
            c.send(body)
            assert c.cmd(".") == reply
        assert c.cmd("NOOP") == "250 OK"


def test_strict_line_endings_still_see_a_sink_message(start: ServerFactory) -> None:
    server = start(Sink(), strict_line_endings=True)
    with server.client() as c:
        c.multi("EHLO client")
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.com>")
        c.cmd("DATA")
        c.send(b"bare\nLF\r\n")
        assert c.cmd(".") == "554 5.6.0 Error: bare CR or LF in message data"


class KeepsEnvelopes(SMTP):
    def _set_post_data_state(self) -> None:
        self.last_envelope = self.envelope
        super()._set_post_data_state()


class HasData:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


class ProcessMessage:
    def process_message(self, *args: Any) -> None:
        return None


def test_message_is_kept_whenever_something_can_see_it(lt: Any) -> None:
    async def unseen(handler: Any, cls: type[SMTP] = SMTP, **kwargs: Any) -> bool:
        return cls(handler, hostname="h", **kwargs)._message_unseen()

    assert lt.run(unseen(Sink()))
    assert not lt.run(unseen(HasData()))
    assert not lt.run(unseen(ProcessMessage()))
    assert not lt.run(unseen(Sink(), decode_data=True))
    assert not lt.run(unseen(Sink(), strict_line_endings=True))
    assert not lt.run(unseen(Sink(), cls=KeepsEnvelopes))


class SlowConsumer:
    """handle_RCPT takes the client's next bytes through ``server._reader``,
    a little at a time, yielding to the loop between reads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.chunks: list[bytes] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        remaining = self.size
        while remaining:
            chunk = await server._reader.readexactly(min(remaining, 997))
            self.chunks.append(chunk)  # kept as handed over, never copied
            remaining -= len(chunk)
            await asyncio.sleep(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_bytes_handed_to_user_code_stay_its_connections(start: ServerFactory) -> None:
    # The read buffer is shared by the connections of a thread; what user code
    # gets must be this connection's bytes, however long it holds them and
    # whatever other clients send meanwhile (docs/internals.rst).
    size = 2 * 1024 * 1024
    payload = bytes(range(256)) * (size // 256)
    consumer = SlowConsumer(size)
    slow = start(consumer)
    busy = start(Sink())
    with slow.client() as c:
        assert c.cmd("HELO c").startswith("250")
        assert c.cmd("MAIL FROM:<a@example.com>") == "250 OK"
        c.send(b"RCPT TO:<b@example.com>\r\n")

        def send_payload() -> None:
            c.send(payload)

        sender = threading.Thread(target=send_payload)
        sender.start()
        # Meanwhile another client pushes other bytes through the same loop.
        with busy.smtplib() as other:
            other.sendmail("x@example.com", ["y@example.com"], big_message(b"z", size))
        sender.join(30)
        assert c.text() == "250 OK"
    received = b"".join(consumer.chunks)
    assert len(received) == size
    assert received == payload
