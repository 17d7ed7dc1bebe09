"""ENHANCEDSTATUSCODES (RFC 2034, codes from RFC 3463), without a socket.

``ROWS`` is the table of docs/extensions.rst, row by row: a conversation
that makes the server send the reply, and the reply it must send with
``enable_ENHANCEDSTATUSCODES=True``.  Each row also runs with the flag off,
where the reply must be 1.4.6's (the code removed).  Then every conversation
of tests/test_replies_wire.py without a handler runs with the flag on: every
2xx, 4xx and 5xx reply the server sends must carry a code, except the
greeting and the replies to HELO, EHLO and LHLO, which RFC 2034 exempts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP
from tests._wire import Wire
from tests.test_replies_wire import CASES, ENGINES, TLS_CONTEXT, Eof, as_lines, engine_class

ROOT = Path(__file__).resolve().parent.parent
FLAG = {"enable_ENHANCEDSTATUSCODES": True}
ENHANCED = re.compile(r"[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3} ")

HELO = "HELO c"
EHLO = "EHLO c"
MAIL = "MAIL FROM:<a@example.com>"
RCPT = "RCPT TO:<b@example.com>"


class Raises:
    async def handle_NOOP(self, *args: Any) -> str:
        raise ValueError("boom")


# (reply with the flag on, the lines that lead to it (the last one gets it),
#  options): the reply without the flag is this one without its code.
ROWS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    # The command gate
    ("500 5.5.2 Command line too long", ("NOOP " + "x" * 600,), {}),
    ("500 5.5.2 Error: bad syntax", ("",), {}),
    ("500 5.5.2 Error: strict ASCII mode", ("NOOP \N{LATIN SMALL LETTER E WITH ACUTE}",), {}),
    ('500 5.5.2 Error: command "FOO" not recognized', ("FOO",), {}),
    ("530 5.7.0 Must issue a STARTTLS command first", (EHLO, MAIL),
     {"tls_context": TLS_CONTEXT, "require_starttls": True}),
    ("554 5.7.0 Command refused due to lack of security", ("NOOP",), {"refused": True}),
    ("500 5.0.0 Error: (ValueError) boom", ("NOOP",), {"handler": Raises}),
    # Session commands
    ("501 5.5.4 Syntax: HELO hostname", ("HELO",), {}),
    ("501 5.5.4 Syntax: EHLO hostname", ("EHLO",), {}),
    ("250 2.0.0 OK", ("NOOP",), {}),
    ("501 5.5.4 Syntax: RSET", ("RSET x",), {}),
    ("250 2.0.0 OK", ("RSET",), {}),
    ("501 5.5.4 Syntax: QUIT", ("QUIT x",), {}),
    ("221 2.0.0 Bye", ("QUIT",), {}),
    ("501 5.5.4 Syntax: VRFY <address>", ("VRFY",), {}),
    ("502 5.1.3 Could not VRFY <", ("VRFY <",), {}),
    ("252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery",
     ("VRFY <a@example.com>",), {}),
    ("502 5.5.1 EXPN not implemented", ("EXPN a",), {}),
    ("250 2.0.0 Syntax: NOOP [ignored]", ("HELP NOOP",), {}),
    ("250 2.0.0 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY",
     ("HELP",), {}),
    ("501 5.5.4 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY",
     ("HELP FOO",), {}),
    # The transaction
    ("503 5.5.1 Error: send HELO first", (MAIL,), {}),
    ("501 5.5.4 Syntax: MAIL FROM: <address>", (HELO, "MAIL"), {}),
    ("501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]", (EHLO, "MAIL"), {}),
    ("250 2.1.0 OK", (HELO, MAIL), {}),
    ("503 5.5.1 Error: nested MAIL command", (HELO, MAIL, MAIL), {}),
    ("501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME", (EHLO, MAIL + " BODY=X"), {}),
    ("501 5.5.4 Error: SMTPUTF8 takes no arguments", (EHLO, MAIL + " SMTPUTF8=X"), {}),
    ("501 5.5.4 Error: SMTPUTF8 disabled", (EHLO, MAIL + " SMTPUTF8"), {}),
    ("552 5.3.4 Error: message size exceeds fixed maximum message size",
     (EHLO, MAIL + " SIZE=99999999999"), {}),
    ("555 5.5.4 MAIL FROM parameters not recognized or not implemented",
     (EHLO, MAIL + " X=Y"), {}),
    ("503 5.5.1 Error: need MAIL command", (HELO, RCPT), {}),
    ("501 5.5.4 Syntax: RCPT TO: <address>", (HELO, MAIL, "RCPT"), {}),
    ("555 5.5.4 RCPT TO parameters not recognized or not implemented",
     (EHLO, MAIL, RCPT + " X=Y"), {}),
    ("250 2.1.5 OK", (HELO, MAIL, RCPT), {}),
    ("503 5.5.1 Error: need RCPT command", (HELO, MAIL, "DATA"), {}),
    ("501 5.5.4 Syntax: DATA", (HELO, MAIL, RCPT, "DATA x"), {}),
    ("250 2.0.0 OK", (HELO, MAIL, RCPT, "DATA", b"hi\r\n.\r\n"), {}),
    ("552 5.3.4 Error: Too much mail data",
     (HELO, MAIL, RCPT, "DATA", b"x" * 200 + b"\r\n.\r\n"), {"data_size_limit": 100}),
    ("500 5.6.0 Line too long (see RFC5321 4.5.3.1.6)",
     (HELO, MAIL, RCPT, "DATA", b"x" * 2000 + b"\r\n.\r\n"), {}),
    ("500 5.6.0 Error: strict ASCII mode",
     (HELO, MAIL, RCPT, "DATA", b"\xe9\r\n.\r\n"), {"decode_data": True}),
    # STARTTLS and AUTH
    ("501 5.5.4 Syntax: STARTTLS", (EHLO, "STARTTLS x"), {"tls_context": TLS_CONTEXT}),
    ("220 2.0.0 Ready to start TLS", (EHLO, "STARTTLS"), {"tls_context": TLS_CONTEXT}),
    ("500 5.5.2 Error: command 'AUTH' not recognized", (HELO, "AUTH PLAIN"),
     {"auth_require_tls": False}),
    ("503 5.5.1 Error: send EHLO first", ("AUTH PLAIN",), {"auth_require_tls": False}),
    ("501 5.5.4 Not enough value", (EHLO, "AUTH"), {"auth_require_tls": False}),
    ("501 5.5.4 Too many values", (EHLO, "AUTH PLAIN a b"), {"auth_require_tls": False}),
    # LMTP
    ("501 5.5.4 Syntax: LHLO hostname", ("LHLO",), {"cls": LMTP}),
    ('500 5.5.2 Error: command "HELO" not recognized', ("HELO c",), {"cls": LMTP}),
    ("503 5.5.1 Error: send LHLO first", (MAIL,), {"cls": LMTP}),
    ("250 2.0.0 OK", ("LHLO c", MAIL, RCPT, "DATA", b"hi\r\n.\r\n"), {"cls": LMTP}),
]


def plain(reply: str) -> str:
    return re.sub(r"^(\d{3}) [245]\.\d{1,3}\.\d{1,3} ", r"\1 ", reply)


def converse(lines: tuple[Any, ...], options: dict[str, Any], engine: str,
             **flags: Any) -> list[str]:
    options = dict(options)
    cls = options.pop("cls", SMTP)
    handler = options.pop("handler", lambda: None)()
    refused = options.pop("refused", False)
    with Wire(handler, cls=engine_class(cls, engine), **options, **flags) as wire:
        if refused:
            wire.server._tls_handshake_okay = False
        got: list[str] = []
        for line in lines:
            got = wire.send(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        return got


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("reply", "lines", "options"), ROWS, ids=[r[0] for r in ROWS])
def test_row(reply: str, lines: tuple[Any, ...], options: dict[str, Any], engine: str) -> None:
    assert converse(lines, options, engine, **FLAG)[-1] == reply
    assert converse(lines, options, engine)[-1] == plain(reply)


def test_advertised_only_with_the_flag() -> None:
    with Wire(None) as wire:
        assert "250-ENHANCEDSTATUSCODES" not in wire.send(b"EHLO c\r\n")
    with Wire(None, **FLAG) as wire:
        assert "250-ENHANCEDSTATUSCODES" in wire.send(b"EHLO c\r\n")


def test_a_handler_reply_is_left_as_written() -> None:
    class Own:
        async def handle_RCPT(self, server: Any, session: Any, envelope: Any,
                              address: str, options: list[str]) -> str:
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, *args: Any) -> str:
            return "250 Queued as 123"

    with Wire(Own(), **FLAG) as wire:
        wire.send(b"HELO c\r\n")
        assert wire.send(b"MAIL FROM:<a@example.com>\r\n") == ["250 2.1.0 OK"]
        assert wire.send(b"RCPT TO:<b@example.com>\r\n") == ["250 OK"]
        wire.send(b"DATA\r\n")
        assert wire.send(b"hi\r\n.\r\n") == ["250 Queued as 123"]


def server_replies(c: Any, engine: str) -> list[tuple[str, str]]:
    """(the line sent, each reply line) of one wire conversation, flag on."""
    pairs: list[tuple[str, str]] = []
    with Wire(None, cls=engine_class(c.cls, engine), extra=c.extra, **c.server, **FLAG) as wire:
        if c.setup is not None:
            c.setup(wire.server)
        for sent, _ in c.steps:
            if isinstance(sent, Eof):
                got = wire.eof(sent.data)
            else:
                got = wire.send(sent.encode() + b"\r\n" if isinstance(sent, str) else sent)
            shown = sent if isinstance(sent, str) else repr(sent)
            pairs.extend((shown, line) for line in got)
    return pairs


SERVER_ONLY = [c for c in CASES if c.handler() is None and c.check is None and not c.bug]


@pytest.mark.filterwarnings("ignore:Use handler.handle_EHLO:DeprecationWarning")
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("c", SERVER_ONLY, ids=[c.name for c in SERVER_ONLY])
def test_every_server_reply_has_a_code(c: Any, engine: str) -> None:
    for sent, reply in server_replies(c, engine):
        verb = sent.split(" ", 1)[0].upper() if isinstance(sent, str) else ""
        if verb in ("HELO", "EHLO", "LHLO") and reply[:1] == "2":
            continue  # RFC 2034 section 4: exempt
        if reply[:1] in "245" and not reply.startswith("220 test.example"):
            assert ENHANCED.match(reply), f"{sent!r} -> {reply!r}"


def test_cases_were_found() -> None:
    assert len(SERVER_ONLY) > 60
    assert all(as_lines(step[1]) is not None for c in SERVER_ONLY for step in c.steps)


def test_docs_table_is_this_table() -> None:
    text = (ROOT / "docs" / "extensions.rst").read_text()
    # The section's own table only.
    text = text.split("\nENHANCEDSTATUSCODES\n===", 1)[1].split("\nDSN\n===", 1)[0]
    documented = set(re.findall(r"^     - ``(\d{3} [245]\.\d+\.\d+ [^`]*)``$", text, re.M))
    assert documented == {reply for reply, _, _ in ROWS}
