"""CHUNKING and BINARYMIME (RFC 3030), opt-in with ``enable_CHUNKING``
(docs/extensions.rst): raw sockets on both engines for the RFC's cases, Exim
as a real client, and a property that any split into chunks delivers what
DATA delivers."""

from __future__ import annotations

from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiosmtpd._framing import parse_bdat
from tests._exim import Exim
from tests._server import MAIL, RCPT, Recorder, ServerFactory
from tests._server import esmtp_transaction as transaction
from tests._wire import Wire

pytestmark = pytest.mark.timeout(30)

NEED_MAIL = "503 Error: need MAIL command"


def test_off_by_default(start: ServerFactory) -> None:
    with start().client() as c:
        lines = c.multi("EHLO c")
        assert "250-CHUNKING" not in lines and "250-BINARYMIME" not in lines
        c.cmd(MAIL)
        c.cmd(RCPT)
        assert c.cmd("BDAT 2 LAST") == '500 Error: command "BDAT" not recognized'
        assert c.cmd("RSET") == "250 OK"
        assert c.cmd(f"{MAIL} BODY=BINARYMIME") == (
            "501 Error: BODY can only be one of 7BIT, 8BITMIME"
        )


def test_advertised(start: ServerFactory) -> None:
    with start(enable_CHUNKING=True).client() as c:
        lines = c.multi("EHLO c")
        assert "250-CHUNKING" in lines and "250-BINARYMIME" in lines
    with start(enable_CHUNKING=True, decode_data=True).client() as c:
        lines = c.multi("EHLO c")
        assert "250-CHUNKING" in lines and "250-BINARYMIME" not in lines


def test_chunks_make_the_message(start: ServerFactory) -> None:
    handler = Recorder()
    with start(handler, enable_CHUNKING=True).client() as c:
        transaction(c)
        # Pipelined: the commands and their chunks in one send.
        c.send(b"BDAT 6\r\nHello BDAT 7\r\nworld\r\nBDAT 0 LAST\r\n")
        assert c.text() == "250 2.0.0 6 octets received"
        assert c.text() == "250 2.0.0 7 octets received"
        assert c.text() == "250 OK"
        # A new transaction may follow.
        assert c.cmd(MAIL) == "250 OK"
    assert handler.envelopes[0].content == b"Hello world\r\n"


def test_binarymime_is_delivered_as_sent(start: ServerFactory) -> None:
    handler = Recorder()
    body = bytes(range(256)) + b"\r\n.\r\n.\nbare\rend"
    with start(handler, enable_CHUNKING=True, strict_line_endings=True).client() as c:
        transaction(c, f"{MAIL} BODY=BINARYMIME")
        c.send(b"BDAT %d LAST\r\n" % len(body) + body)
        assert c.text() == "250 OK"
    assert handler.envelopes[0].content == body


def test_bare_lf_refused_in_strict_mode_without_binarymime(start: ServerFactory) -> None:
    with start(enable_CHUNKING=True, strict_line_endings=True).client() as c:
        transaction(c)
        c.send(b"BDAT 5 LAST\r\na\nb\r\n")
        assert c.text() == "554 5.6.0 Error: bare CR or LF in message data"


@pytest.mark.parametrize(
    ("lines", "reply"),
    [
        (["EHLO c"], NEED_MAIL),
        (["EHLO c", MAIL], "503 Error: need RCPT command"),
        ([], "503 Error: send HELO first"),
    ],
)
def test_bdat_out_of_sequence_drops_its_chunk(
    start: ServerFactory, lines: list[str], reply: str
) -> None:
    with start(enable_CHUNKING=True).client() as c:
        for line in lines:
            c.multi(line) if line.startswith("EHLO") else c.cmd(line)
        # The chunk looks like a command: it must not run as one.
        c.send(b"BDAT 6 LAST\r\nQUIT\r\n")
        assert c.text() == reply
        assert c.cmd("NOOP") == "250 OK"


def test_data_after_bdat(start: ServerFactory) -> None:
    with start(enable_CHUNKING=True).client() as c:
        transaction(c)
        c.send(b"BDAT 3\r\nabc")
        assert c.text() == "250 2.0.0 3 octets received"
        assert c.cmd("DATA") == "503 5.5.1 Error: DATA after BDAT, send RSET"
        assert c.cmd("RSET") == "250 OK"
        transaction(c)
        assert c.cmd("DATA").startswith("354")


def test_binarymime_with_data(start: ServerFactory) -> None:
    with start(enable_CHUNKING=True).client() as c:
        transaction(c, f"{MAIL} BODY=BINARYMIME")
        assert c.cmd("DATA") == "503 5.5.1 Error: BODY=BINARYMIME needs BDAT"


def test_over_the_size_limit(start: ServerFactory) -> None:
    handler = Recorder()
    with start(handler, enable_CHUNKING=True, data_size_limit=10).client() as c:
        transaction(c)
        c.send(b"BDAT 8\r\n12345678BDAT 8\r\n12345678BDAT 1 LAST\r\nx")
        assert c.text() == "250 2.0.0 8 octets received"
        assert c.text() == "552 Error: Too much mail data"
        # RFC 3030: later chunks are read and dropped until RSET.
        assert c.text() == "503 5.5.1 Error: an earlier BDAT failed, send RSET"
        assert c.cmd("RSET") == "250 OK"
    assert handler.envelopes == []


@pytest.mark.parametrize("arg", ["BDAT", "BDAT x", "BDAT 1 FIRST", "BDAT -1", "BDAT 1 LAST x"])
def test_bad_syntax_closes(start: ServerFactory, arg: str) -> None:
    with start(enable_CHUNKING=True).client() as c:
        transaction(c)
        assert c.cmd(arg) == "501 Syntax: BDAT <size> [LAST]"
        assert c.is_closed()


def test_parse_bdat() -> None:
    assert parse_bdat("10") == (10, False)
    assert parse_bdat("0 last") == (0, True)
    for bad in (None, "", "1  LAST", "\N{ARABIC-INDIC DIGIT ONE}", "1 LAST x", "+1"):
        assert parse_bdat(bad) is None


# -- Any split into chunks delivers what DATA delivers (socket-free) ---------------------------

message = st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"\r\n"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=message, cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=5))
def test_any_split_is_data(content: bytes, cuts: list[int]) -> None:
    def delivered(*sends: bytes) -> Any:
        handler = Recorder()
        with Wire(handler, enable_CHUNKING=True) as wire:
            for data in (b"EHLO c\r\n", MAIL.encode() + b"\r\n", RCPT.encode() + b"\r\n",
                         *sends):
                wire.send(data)
        return handler.envelopes[0].content

    text = content if content.endswith(b"\r\n") or not content else content + b"\r\n"
    stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line
                          for line in text.split(b"\r\n"))
    by_data = delivered(b"DATA\r\n", stuffed + b".\r\n")
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]
    chunks = [b"BDAT %d\r\n" % len(p) + p for p in pieces[:-1]]
    chunks.append(b"BDAT %d LAST\r\n" % len(pieces[-1]) + pieces[-1])
    assert delivered(*chunks) == by_data == text


# -- A real MTA sends BDAT when offered --------------------------------------------------------


@pytest.mark.external
def test_exim_sends_bdat(start: ServerFactory, exim: Callable[..., Exim]) -> None:
    from tests.test_exim_relay import MESSAGE, SENDER, check_relayed

    handler = Recorder()
    server = start(handler, enable_CHUNKING=True, enable_PIPELINING=True)
    result = exim(server.port).send(MESSAGE, SENDER, ["bob@y.example"])
    assert any(command.startswith("BDAT ") and command.endswith(" LAST")
               for command in result.sent), result.sent
    assert "DATA" not in [c.split()[0] for c in result.sent]
    content = handler.envelopes[0].content
    assert isinstance(content, bytes)
    check_relayed(content, result.message_id)
