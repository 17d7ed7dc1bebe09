"""PIPELINING (RFC 2920): the flag, and replies to a pipelined group sent
together (docs/extensions.rst), over loopback sockets on both engines."""

from __future__ import annotations

from typing import Any

import pytest

from tests._server import LoopThread, Recorder, Server, wait_for

pytestmark = pytest.mark.timeout(30)

GROUP = (
    b"MAIL FROM:<a@example.com>\r\n"
    b"RCPT TO:<b@example.com>\r\n"
    b"RCPT TO:<c@example.com>\r\n"
    b"DATA\r\n"
)


def count_writes(server: Server, lt: LoopThread) -> list[bytes]:
    """Record every transport.write() of the latest connection."""
    writes: list[bytes] = []
    transport: Any = server.last.transport
    original = transport.write

    def write(data: bytes) -> None:
        writes.append(bytes(data))
        original(data)

    lt.call(lambda: setattr(transport, "write", write))
    return writes


def test_advertised_only_with_the_flag(start: Any) -> None:
    with start().client() as c:
        assert "250-PIPELINING" not in c.multi("EHLO a")
    with start(enable_PIPELINING=True).client() as c:
        lines = c.multi("EHLO a")
        assert "250-PIPELINING" in lines
        assert lines[-1] == "250 HELP"


# Only inline: a connection served by a Task (a subclass with coroutines of
# its own) writes each reply at once, since its code may write to the
# transport itself (docs/internals.rst, "Pipelined replies").
@pytest.mark.engine("inline")
@pytest.mark.parametrize("flag", [False, True])
def test_group_replies_in_one_write(start: Any, lt: LoopThread, flag: bool) -> None:
    handler = Recorder()
    server = start(handler, enable_PIPELINING=flag)
    with server.client() as c:
        c.multi("EHLO a")
        writes = count_writes(server, lt)
        c.send(GROUP)
        assert [c.text() for _ in range(4)] == [
            "250 OK", "250 OK", "250 OK", "354 End data with <CR><LF>.<CR><LF>",
        ]
        # Batching is invisible to a client that does not pipeline, so it
        # needs no flag: one write for the group in both cases.
        assert writes == [b"250 OK\r\n" * 3 + b"354 End data with <CR><LF>.<CR><LF>\r\n"]
        c.send(b"Subject: x\r\n\r\nbody\r\n.\r\nNOOP\r\n")
        assert c.text() == "250 OK"
        assert c.text() == "250 OK"
    assert handler.envelopes[0].rcpt_tos == ["b@example.com", "c@example.com"]


def test_one_line_one_write(start: Any, lt: LoopThread) -> None:
    server = start(enable_PIPELINING=True)
    with server.client() as c:
        writes = count_writes(server, lt)
        assert c.cmd("NOOP") == "250 OK"
        assert c.cmd("NOOP") == "250 OK"
        assert writes == [b"250 OK\r\n", b"250 OK\r\n"]


def test_quit_in_a_group_sends_every_reply(start: Any) -> None:
    server = start(enable_PIPELINING=True)
    with server.client() as c:
        c.send(b"NOOP\r\nHELO a\r\nQUIT\r\nNOOP\r\n")
        assert c.text() == "250 OK"
        assert c.text().startswith("250 ")
        assert c.text() == "221 Bye"
        assert c.is_closed()


def test_closing_refusal_in_a_group_sends_every_reply(start: Any) -> None:
    server = start(enable_PIPELINING=True, command_call_limit=1)
    with server.client() as c:
        c.send(b"NOOP\r\nNOOP\r\nNOOP\r\n")
        assert c.text() == "250 OK"
        assert c.text() == "421 4.7.0 NOOP sent too many times"
        assert c.is_closed()


def test_group_that_ends_in_a_hook_keeps_order(start: Any, lt: LoopThread) -> None:
    class Slow:
        async def handle_RCPT(self, server: Any, session: Any, envelope: Any,
                              address: str, options: list[str]) -> str:
            envelope.rcpt_tos.append(address)
            return "250 later"

    server = start(Slow(), enable_PIPELINING=True)
    with server.client() as c:
        c.multi("EHLO a")
        c.send(GROUP)
        assert [c.text() for _ in range(4)] == [
            "250 OK", "250 later", "250 later", "354 End data with <CR><LF>.<CR><LF>",
        ]


def test_starttls_discards_what_follows_in_the_group(
    start: Any, lt: LoopThread, tls_contexts: Any
) -> None:
    server = start(tls_context=tls_contexts[0], enable_PIPELINING=True)
    with server.client() as c:
        c.multi("EHLO a")
        c.send(b"STARTTLS\r\nNOOP\r\n")
        assert c.text() == "220 Ready to start TLS"
        # The NOOP was not answered in plain text: the server waits for a
        # TLS handshake (RFC 3207 section 6).
        assert wait_for(lambda: not server.last._receiver.buf, lt)
