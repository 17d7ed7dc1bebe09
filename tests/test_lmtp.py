"""LMTP over loopback: ``smtplib.LMTP`` and raw multi-recipient exchanges."""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

import pytest

from aiosmtpd import __version__, lmtp
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session

HOSTNAME = "lmtp.example"


class LMTPController(Controller):
    def factory(self) -> LMTP:
        return LMTP(self.handler, **self.SMTP_kwargs)


@contextmanager
def lmtp_server(handler: Any = None, **kwargs: Any) -> Iterator[int]:
    kwargs.setdefault("enable_SMTPUTF8", False)
    controller = LMTPController(
        Sink() if handler is None else handler,
        hostname="127.0.0.1",
        port=0,
        server_hostname=HOSTNAME,
        **kwargs,
    )
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


class RawClient:
    """A line-oriented client that reads complete (multi-line) replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def reply(self) -> list[str]:
        lines = []
        while True:
            line = self.file.readline()
            assert line.endswith(b"\r\n"), f"connection closed after {lines!r}"
            text = line[:-2].decode()
            lines.append(text)
            if text[3:4] != "-":
                return lines

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: str) -> list[str]:
        self.send(line.encode() + b"\r\n")
        return self.reply()


@contextmanager
def raw(port: int) -> Iterator[RawClient]:
    client = RawClient(port)
    try:
        assert client.reply() == [f"220 {HOSTNAME} Python SMTP {__version__}"]
        yield client
    finally:
        client.close()


class PickyHandler:
    """Refuses recipients starting with ``bad``; DATA result configurable."""

    def __init__(self, data_result: Any = MISSING) -> None:
        self.data_result = data_result
        self.envelopes: list[Envelope] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("bad"):
            return "550 5.1.1 unknown user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
        self.envelopes.append(envelope)
        return self.data_result


# ---------------------------------------------------------------- surface


def test_module_surface() -> None:
    assert lmtp.__all__ == ["LMTP"]
    assert issubclass(LMTP, SMTP)
    assert LMTP.show_smtp_greeting is False
    assert lmtp.SMTP is SMTP
    assert callable(lmtp.syntax)


# ---------------------------------------------------------------- smtplib.LMTP


def test_smtplib_lmtp_delivery() -> None:
    handler = PickyHandler()
    with lmtp_server(handler) as port, closing(smtplib.LMTP("127.0.0.1", port)) as client:
        assert client.ehlo("me") == (250, f"{HOSTNAME}\nSIZE 33554432\n8BITMIME\nHELP".encode())
        refused = client.sendmail("a@x", ["b@x", "bad@x", "c@x"], b"Subject: s\r\n\r\nbody\r\n")
        assert refused == {"bad@x": (550, b"5.1.1 unknown user")}
        # Default mode: one reply after DATA, which smtplib.LMTP expects; the
        # session is in step for the next command.
        assert client.noop() == (250, b"OK")
    [envelope] = handler.envelopes
    assert envelope.rcpt_tos == ["b@x", "c@x"]
    assert envelope.content == b"Subject: s\r\n\r\nbody\r\n"


def test_lhlo_runs_the_ehlo_hook() -> None:
    class Hooked:
        async def handle_EHLO(
            self,
            server: SMTP,
            session: Session,
            envelope: Envelope,
            hostname: str,
            responses: list[str],
        ) -> list[str]:
            session.host_name = hostname
            return [*responses[:-1], "250-X-LMTP-HOOK", responses[-1]]

    with lmtp_server(Hooked()) as port, raw(port) as client:
        assert client.cmd("LHLO me") == [
            f"250-{HOSTNAME}",
            "250-SIZE 33554432",
            "250-8BITMIME",
            "250-X-LMTP-HOOK",
            "250 HELP",
        ]
        assert client.cmd("MAIL FROM:<a@x>") == ["250 OK"]


# ---------------------------------------------------------------- commands


def test_helo_and_ehlo_refused_without_counting_as_bogus() -> None:
    with lmtp_server() as port, raw(port) as client:
        assert client.cmd("LHLO me")[-1] == "250 HELP"
        assert client.cmd("MAIL FROM:<a@x>") == ["250 OK"]
        for _ in range(6):
            assert client.cmd("HELO me") == ['500 Error: command "HELO" not recognized']
            assert client.cmd("EHLO me") == ['500 Error: command "EHLO" not recognized']
        # Still connected, and the transaction was not reset.
        assert client.cmd("MAIL FROM:<a@x>") == ["503 Error: nested MAIL command"]
        assert client.cmd("RCPT TO:<b@x>") == ["250 OK"]


def test_lhlo_syntax() -> None:
    with lmtp_server() as port, raw(port) as client:
        assert client.cmd("LHLO") == ["501 Syntax: LHLO hostname"]
        assert client.cmd("LHLO  ") == ["501 Syntax: LHLO hostname"]


@pytest.mark.parametrize("command", ["MAIL FROM:<a@x>", "RCPT TO:<b@x>", "DATA", "AUTH PLAIN"])
def test_commands_before_lhlo(command: str) -> None:
    with lmtp_server() as port, raw(port) as client:
        assert client.cmd(command) == ["503 Error: send LHLO first"]


def test_help() -> None:
    listing = "Supported commands: AUTH DATA HELP LHLO MAIL NOOP QUIT RCPT RSET VRFY"
    with lmtp_server() as port, raw(port) as client:
        assert client.cmd("HELP") == [f"250 {listing}"]
        assert client.cmd("HELP LHLO") == ["250 Syntax: LHLO hostname"]
        assert client.cmd("HELP HELO") == [f"501 {listing}"]
        assert client.cmd("HELP EHLO") == [f"501 {listing}"]


def test_lhlo_allowed_before_required_starttls(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls_contexts
    with lmtp_server(tls_context=server_context, require_starttls=True) as port:
        with raw(port) as client:
            assert client.cmd("LHLO me") == [
                f"250-{HOSTNAME}",
                "250-SIZE 33554432",
                "250-8BITMIME",
                "250-STARTTLS",
                "250 HELP",
            ]
            assert client.cmd("EHLO me") == ['500 Error: command "EHLO" not recognized']
            assert client.cmd("MAIL FROM:<a@x>") == ["530 Must issue a STARTTLS command first"]
        with closing(smtplib.LMTP("127.0.0.1", port)) as lmtp_client:
            lmtp_client.starttls(context=client_context)
            # smtplib sends EHLO after STARTTLS; LMTP needs LHLO again.
            lmtp_client.ehlo_resp = None
            assert lmtp_client.ehlo("me")[0] == 250
            assert lmtp_client.sendmail("a@x", ["b@x"], b"S: x\r\n\r\nb\r\n") == {}


# ---------------------------------------------------------------- replies after DATA

MARKER = "250 Syntax: LHLO hostname"


def data_replies(port: int, rcpts: list[str], body: bytes = b"S: x\r\n\r\nbody\r\n") -> list[str]:
    """One transaction over a raw socket; every reply line after the final dot.

    ``HELP LHLO`` pipelined after the terminator marks the end of the DATA
    replies, whatever their number.
    """
    with raw(port) as client:
        assert client.cmd("LHLO me")[-1] == "250 HELP"
        assert client.cmd("MAIL FROM:<a@x>") == ["250 OK"]
        for rcpt in rcpts:
            client.cmd(f"RCPT TO:<{rcpt}>")
        assert client.cmd("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
        client.send(body + b".\r\nHELP LHLO\r\n")
        lines: list[str] = []
        while (reply := client.reply()) != [MARKER]:
            lines.extend(reply)
        # The envelope was reset: a new transaction can start.
        assert client.cmd("MAIL FROM:<z@x>") == ["250 OK"]
    return lines


@pytest.mark.parametrize(("flag", "expected"), [(False, ["250 OK"]), (True, ["250 OK"] * 2)])
def test_default_reply(flag: bool, expected: list[str]) -> None:
    # Two of three recipients accepted.
    with lmtp_server(PickyHandler(), per_recipient_replies=flag) as port:
        assert data_replies(port, ["b@x", "bad@x", "c@x"]) == expected


@pytest.mark.parametrize("flag", [False, True])
def test_string_result_sent_once(flag: bool) -> None:
    with lmtp_server(PickyHandler("250 2.0.0 stored"), per_recipient_replies=flag) as port:
        assert data_replies(port, ["b@x", "c@x"]) == ["250 2.0.0 stored"]


@pytest.mark.parametrize("flag", [False, True])
def test_multiline_string_result_workaround(flag: bool) -> None:
    # The upstream-era workaround: CRLF-joined replies in one string.
    handler = PickyHandler("250 2.1.5 OK b@x\r\n452 4.2.2 over quota c@x")
    with lmtp_server(handler, per_recipient_replies=flag) as port:
        assert data_replies(port, ["b@x", "c@x"]) == [
            "250 2.1.5 OK b@x",
            "452 4.2.2 over quota c@x",
        ]


@pytest.mark.parametrize("flag", [False, True])
@pytest.mark.parametrize("container", [list, tuple])
def test_sequence_result_one_reply_per_element(flag: bool, container: type) -> None:
    handler = PickyHandler(container(["250 2.1.5 b@x delivered", b"550 5.2.1 c@x disabled"]))
    with lmtp_server(handler, per_recipient_replies=flag) as port:
        assert data_replies(port, ["b@x", "c@x"]) == [
            "250 2.1.5 b@x delivered",
            "550 5.2.1 c@x disabled",
        ]


def test_sequence_result_not_matched_to_recipients() -> None:
    # The elements are sent as they are: the server neither pads nor trims
    # the list to the number of recipients (CHANGES.rst, docs/lmtp.rst).
    with lmtp_server(PickyHandler(["250 2.1.5 b@x delivered"]), per_recipient_replies=True) as port:
        assert data_replies(port, ["b@x", "c@x"]) == ["250 2.1.5 b@x delivered"]


@pytest.mark.parametrize("flag", [False, True])
def test_hook_error_replied_once(flag: bool) -> None:
    class Failing(PickyHandler):
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
            raise ValueError("disk full")

        async def handle_exception(self, error: Exception) -> str:
            return "451 4.3.0 try again later"

    with lmtp_server(Failing(), per_recipient_replies=flag) as port, raw(port) as client:
        client.cmd("LHLO me")
        client.cmd("MAIL FROM:<a@x>")
        client.cmd("RCPT TO:<b@x>")
        client.cmd("RCPT TO:<c@x>")
        assert client.cmd("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
        client.send(b"S: x\r\n\r\nbody\r\n.\r\nHELP LHLO\r\n")
        assert client.reply() == ["451 4.3.0 try again later"]
        assert client.reply() == [MARKER]


def test_hook_pushing_intermediate_replies() -> None:
    class Pusher(PickyHandler):
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
            for rcpt in envelope.rcpt_tos[:-1]:
                await server.push(f"250 2.1.5 {rcpt} OK")
            return f"250 2.1.5 {envelope.rcpt_tos[-1]} OK"

    with lmtp_server(Pusher(), per_recipient_replies=True) as port:
        assert data_replies(port, ["b@x", "c@x", "d@x"]) == [
            "250 2.1.5 b@x OK",
            "250 2.1.5 c@x OK",
            "250 2.1.5 d@x OK",
        ]


def test_no_handle_data_hook() -> None:
    with lmtp_server(Sink(), per_recipient_replies=True) as port:
        assert data_replies(port, ["b@x", "c@x", "d@x"]) == ["250 OK"] * 3


def test_legacy_process_message() -> None:
    class Legacy:
        def __init__(self) -> None:
            self.seen: list[Any] = []

        def process_message(
            self, peer: Any, mail_from: str, rcpt_tos: list[str], data: Any
        ) -> None:
            self.seen.append((mail_from, list(rcpt_tos), data))

    handler = Legacy()
    with lmtp_server(handler, per_recipient_replies=True) as port:
        with pytest.warns(DeprecationWarning, match="process_message"):
            assert data_replies(port, ["b@x", "c@x"]) == ["250 OK"] * 2
    assert handler.seen == [("a@x", ["b@x", "c@x"], b"S: x\r\n\r\nbody\r\n")]


@pytest.mark.parametrize(("flag", "count"), [(False, 1), (True, 2)])
def test_too_much_data(flag: bool, count: int) -> None:
    with lmtp_server(PickyHandler(), data_size_limit=100, per_recipient_replies=flag) as port:
        assert (
            data_replies(port, ["b@x", "c@x"], b"x" * 200 + b"\r\n")
            == ["552 Error: Too much mail data"] * count
        )


@pytest.mark.parametrize(("flag", "count"), [(False, 1), (True, 3)])
def test_line_too_long(flag: bool, count: int) -> None:
    with lmtp_server(PickyHandler(), per_recipient_replies=flag) as port:
        assert (
            data_replies(port, ["b@x", "c@x", "d@x"], b"x" * 2000 + b"\r\n")
            == ["500 Line too long (see RFC5321 4.5.3.1.6)"] * count
        )


@pytest.mark.parametrize(("flag", "count"), [(False, 1), (True, 2)])
def test_strict_ascii(flag: bool, count: int) -> None:
    with lmtp_server(PickyHandler(), decode_data=True, per_recipient_replies=flag) as port:
        assert (
            data_replies(port, ["b@x", "c@x"], b"caf\xc3\xa9\r\n")
            == ["500 Error: strict ASCII mode"] * count
        )


@pytest.mark.parametrize(("flag", "count"), [(False, 1), (True, 2)])
def test_bare_line_feed_rejected(flag: bool, count: int) -> None:
    kwargs = {"strict_line_endings": True, "per_recipient_replies": flag}
    with lmtp_server(PickyHandler(), **kwargs) as port:
        assert (
            data_replies(port, ["b@x", "c@x"], b"a\nb\r\n")
            == ["554 5.6.0 Error: bare CR or LF in message data"] * count
        )


def test_other_replies_not_repeated() -> None:
    # Only replies that close a DATA transaction are multiplied.
    with lmtp_server(PickyHandler(), per_recipient_replies=True) as port, raw(port) as client:
        client.cmd("LHLO me")
        client.cmd("MAIL FROM:<a@x>")
        assert client.cmd("RCPT TO:<b@x>") == ["250 OK"]
        assert client.cmd("RCPT TO:<c@x>") == ["250 OK"]
        assert client.cmd("DATA x") == ["501 Syntax: DATA"]
        assert client.cmd("NOOP") == ["250 OK"]
        assert client.cmd("RSET") == ["250 OK"]
        assert client.cmd("DATA") == ["503 Error: need RCPT command"]


def test_smtplib_lmtp_with_per_recipient_replies_desyncs() -> None:
    """Documents why the flag is off by default: smtplib.LMTP reads one reply."""
    with lmtp_server(PickyHandler(), per_recipient_replies=True) as port:
        with closing(smtplib.LMTP("127.0.0.1", port)) as client:
            client.sendmail("a@x", ["b@x", "c@x"], b"S: x\r\n\r\nb\r\n")
            # The second "250 OK" is still queued and answers the next command.
            assert client.docmd("HELP", "LHLO") == (250, b"OK")
