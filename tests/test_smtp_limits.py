"""Limits, counters and timers (docs/smtp.rst, Limits and Timeouts) over loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import pytest

from aiosmtpd import __version__
from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import SMTP
from tests._server import HOSTNAME, Recorder, ServerFactory

pytestmark = pytest.mark.timeout(30)

TOO_LONG = "500 Command line too long"


def noop_of(length: int) -> str:
    """A NOOP line of exactly ``length`` bytes (without CRLF)."""
    return "NOOP " + "x" * (length - 5)


def mail_of(length: int) -> str:
    head = "MAIL FROM:<"
    tail = "@example.com>"
    return head + "a" * (length - len(head) - len(tail)) + tail


# -- Command size limits ------------------------------------------------------------


def test_command_size_limit_512(server: Any) -> None:
    with server.client() as c:
        assert c.cmd(noop_of(512)) == "250 OK"
        assert c.cmd(noop_of(513)) == TOO_LONG
        c.cmd("HELO x")
        assert c.cmd(noop_of(513)) == TOO_LONG
        assert c.cmd(mail_of(513)) == TOO_LONG
        assert c.cmd(mail_of(512)) == "250 OK"


def test_mail_limit_after_ehlo(server: Any) -> None:
    with server.client() as c:
        c.multi("EHLO x")
        assert c.cmd(noop_of(512)) == "250 OK"
        assert c.cmd(noop_of(513)) == TOO_LONG
        assert c.cmd(mail_of(539)) == TOO_LONG
        assert c.cmd(mail_of(538)) == "250 OK"


def test_mail_limit_with_smtputf8_and_without_size(start: ServerFactory) -> None:
    with start(enable_SMTPUTF8=True).client() as c:
        c.multi("EHLO x")
        assert c.cmd(mail_of(549)) == TOO_LONG
        assert c.cmd(mail_of(548)) == "250 OK"
    with start(data_size_limit=None).client() as c:
        c.multi("EHLO x")
        assert c.cmd(mail_of(513)) == TOO_LONG
        assert c.cmd(mail_of(512)) == "250 OK"


def test_repeated_ehlo_does_not_grow_mail_limit(server: Any) -> None:
    # Deviation (CHANGES.rst): recomputed at each EHLO, not accumulated.
    with server.client() as c:
        for _ in range(5):
            c.multi("EHLO x")
        assert c.cmd(mail_of(539)) == TOO_LONG
        assert c.cmd(mail_of(600)) == TOO_LONG
        assert c.cmd(mail_of(538)) == "250 OK"


def test_command_size_limits_per_instance(server: Any) -> None:
    before = dict(SMTP.command_size_limits)
    with server.client() as a, server.client() as b:
        a.multi("EHLO x")
        assert a.cmd(mail_of(538)) == "250 OK"
        # b has not said EHLO: its limit is still 512, whatever a did.
        b.cmd("HELO y")
        assert b.cmd(mail_of(513)) == TOO_LONG
        pa, pb = server.protocols
        assert pa.command_size_limits is not pb.command_size_limits
        assert pa.command_size_limits["MAIL"] == 538
        assert "MAIL" not in pb.command_size_limits
        # Looking up an unknown command does not insert it.
        assert pa.command_size_limits["FOO"] == 512
        assert "FOO" not in pa.command_size_limits
        assert pa.max_command_size_limit == 538
        assert pb.max_command_size_limit == 512
    assert dict(SMTP.command_size_limits) == before


def test_subclass_command_size_limit_honoured_after_ehlo(start: ServerFactory) -> None:
    class Big(SMTP):
        command_size_limit = 1000

    with start(cls=Big).client() as c:
        assert c.cmd(noop_of(705)) == "250 OK"
        c.multi("EHLO x")
        assert c.cmd(noop_of(705)) == "250 OK"
        assert c.cmd(noop_of(1000)) == "250 OK"
        assert c.cmd(mail_of(999)) == "250 OK"
        assert c.cmd(noop_of(1001)) == TOO_LONG


def test_subclass_command_size_limits_mapping(start: ServerFactory) -> None:
    class PerCommand(SMTP):
        command_size_limits = {"NOOP": 20}

    srv = start(cls=PerCommand)
    with srv.client() as c:
        assert c.cmd(noop_of(100)) == "250 OK"  # non-ESMTP: command_size_limit
        c.multi("EHLO x")
        assert c.cmd(noop_of(20)) == "250 OK"
        assert c.cmd(noop_of(21)) == TOO_LONG
        # Commands without an entry fall back to command_size_limit.
        assert c.cmd("HELP " + "x" * 300).startswith("501 Supported commands:")


# -- Stream (line length) limit ------------------------------------------------------


def test_line_over_stream_limit(server: Any) -> None:
    with server.client() as c:
        c.send(b"NOOP " + b"x" * 996 + b"\r\nNOOP\r\n")
        assert c.text() == TOO_LONG
        assert c.text() == "250 OK"


def test_huge_line_then_pipelined_command(server: Any) -> None:
    with server.client() as c:
        c.send(b"NOOP " + b"x" * 200_000 + b"\r\nNOOP\r\nQUIT\r\n")
        assert c.text() == TOO_LONG
        assert c.text() == "250 OK"
        assert c.text() == "221 Bye"


def test_line_without_lf_over_limit_is_dropped_until_lf(server: Any) -> None:
    with server.client() as c:
        c.send(b"x" * 1500)
        c.send(b"y" * 1500)
        c.send(b"\nNOOP\n")
        assert c.text() == TOO_LONG
        assert c.text() == "250 OK"


def test_line_length_limit_subclass(start: ServerFactory) -> None:
    class Short(SMTP):
        line_length_limit = 50

    with start(cls=Short).client() as c:
        assert c.cmd(noop_of(48)) == "250 OK"
        assert c.cmd(noop_of(60)) == TOO_LONG


def test_too_long_lines_are_not_bogus(server: Any) -> None:
    with server.client() as c:
        for _ in range(6):
            assert c.cmd(noop_of(2000)) == TOO_LONG
            assert c.cmd(noop_of(600)) == TOO_LONG
        assert c.cmd("FOO") == '500 Error: command "FOO" not recognized'


# -- Unrecognised commands ------------------------------------------------------------


def test_bogus_command_limit(server: Any, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="mail.log")
    with server.client() as c:
        for word in ("A", "B", "C"):
            assert c.cmd(word) == f'500 Error: command "{word}" not recognized'
        # Valid commands do not restore the budget.
        assert c.cmd("NOOP") == "250 OK"
        assert c.cmd("D") == '500 Error: command "D" not recognized'
        assert c.cmd("E") == "502 5.5.1 Too many unrecognized commands, goodbye."
        assert c.is_closed()
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("unrecognised: " in m for m in msgs) == 5
    assert any(m.endswith(" unrecognised: A") for m in msgs)
    assert any(m.endswith(" too many bogus commands") for m in msgs)
    assert all(r.levelno == logging.WARNING for r in caplog.records)


# -- Command call limit ----------------------------------------------------------------


def test_call_limit_int(start: ServerFactory, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="mail.log")
    with start(command_call_limit=2).client() as c:
        assert c.cmd("NOOP") == "250 OK"
        assert c.cmd("RSET") == "250 OK"
        assert c.cmd("noop") == "250 OK"
        assert c.cmd("NOOP") == "421 4.7.0 NOOP sent too many times"
        assert c.is_closed()
    assert any(m.getMessage().endswith(" over limit for NOOP") for m in caplog.records)


def test_call_limit_zero_refuses_first_use(start: ServerFactory) -> None:
    with start(command_call_limit={"HELO": 0}).client() as c:
        assert c.cmd("NOOP") == "250 OK"
        assert c.cmd("HELO x") == "421 4.7.0 HELO sent too many times"
        assert c.is_closed()


def test_call_limit_dict_with_star(start: ServerFactory) -> None:
    srv = start(command_call_limit={"NOOP": 1, "*": 3})
    with srv.client() as c:
        assert c.cmd("NOOP") == "250 OK"
        for _ in range(3):
            assert c.cmd("RSET") == "250 OK"
        assert c.cmd("RSET") == "421 4.7.0 RSET sent too many times"
    with srv.client() as c:
        # Budgets are per connection.
        assert c.cmd("NOOP") == "250 OK"
        assert c.cmd("NOOP") == "421 4.7.0 NOOP sent too many times"


def test_call_limit_dict_default_is_20(start: ServerFactory) -> None:
    with start(command_call_limit={"NOOP": 5}).client() as c:
        c.send(b"RSET\r\n" * 21)
        assert [c.text() for _ in range(21)] == ["250 OK"] * 20 + [
            "421 4.7.0 RSET sent too many times"
        ]


def test_call_limit_lowercase_keys_have_no_effect(start: ServerFactory) -> None:
    with start(command_call_limit={"noop": 1, "*": 2}).client() as c:
        assert c.cmd("NOOP") == "250 OK"
        assert c.cmd("NOOP") == "250 OK"
        assert c.cmd("NOOP") == "421 4.7.0 NOOP sent too many times"


def test_call_limit_counts_unknown_commands(start: ServerFactory) -> None:
    with start(command_call_limit=1).client() as c:
        assert c.cmd("FOO") == '500 Error: command "FOO" not recognized'
        assert c.cmd("BAR") == '500 Error: command "BAR" not recognized'
        assert c.cmd("FOO") == "421 4.7.0 FOO sent too many times"


def test_call_limit_not_reset_by_rset_or_ehlo(start: ServerFactory) -> None:
    with start(command_call_limit={"MAIL": 1}).client() as c:
        c.multi("EHLO x")
        assert c.cmd("MAIL FROM:<a@b>") == "250 OK"
        c.cmd("RSET")
        c.multi("EHLO x")
        assert c.cmd("MAIL FROM:<a@b>") == "421 4.7.0 MAIL sent too many times"


def test_call_limit_checked_after_length(start: ServerFactory) -> None:
    with start(command_call_limit=1).client() as c:
        assert c.cmd(noop_of(600)) == TOO_LONG
        assert c.cmd("NOOP") == "250 OK"


# -- Inactivity timeout ------------------------------------------------------------------


def test_timeout_closes_silently(start: ServerFactory, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="mail.log")
    with start(timeout=0.3).client() as c:
        assert c.cmd("NOOP") == "250 OK"
        assert c.is_closed()  # no 421, just EOF
    assert any(r.getMessage().endswith(" connection timeout") for r in caplog.records)


def test_rejected_commands_do_not_keep_connection_alive(start: ServerFactory) -> None:
    with start(timeout=0.3).client() as c:
        c.sock.settimeout(0.1)
        deadline = time.monotonic() + 10
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                c.send(b"\r\n")  # "500 Error: bad syntax" each time
                while True:
                    line = c.line()
                    if line == b"":
                        closed = True
                        break
                    assert line == b"500 Error: bad syntax"
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        assert closed


def test_recognised_commands_keep_connection_alive(start: ServerFactory) -> None:
    # 1.6 s of activity against a 1 s timeout, with 0.8 s to spare per gap.
    with start(timeout=1.0).client() as c:
        for _ in range(8):
            time.sleep(0.2)  # the scenario: a slow but active client
            assert c.cmd("NOOP") == "250 OK"


def start_data(c: Any) -> None:
    c.cmd("HELO x")
    c.cmd("MAIL FROM:<a@b>")
    c.cmd("RCPT TO:<c@d>")
    assert c.cmd("DATA") == "354 End data with <CR><LF>.<CR><LF>"


def test_slow_data_lines_keep_connection_alive(start: ServerFactory) -> None:
    # Deviation (CHANGES.rst): each complete DATA line restarts the timer.
    srv = start(timeout=1.0)
    with srv.client() as c:
        start_data(c)
        for i in range(10):
            time.sleep(0.2)  # the scenario: 2 s of DATA, timeout 1 s
            c.send(b"line %d\r\n" % i)
        assert c.cmd(".") == "250 OK"
    assert srv.last.event_handler.envelopes[0].content.count(b"\r\n") == 10


@pytest.mark.parametrize("handler", [Recorder(), Sink()], ids=["kept", "not-kept"])
def test_slow_long_data_lines_keep_connection_alive(start: ServerFactory, handler: Any) -> None:
    # Each line arrives in two parts; only its end restarts the timer, whether
    # the server keeps the message (Recorder) or drops checked lines (Sink).
    srv = start(handler, timeout=1.0)
    with srv.client() as c:
        start_data(c)
        for i in range(5):
            time.sleep(0.2)  # the scenario: 2 s of DATA, timeout 1 s
            c.send(b"%d" % i + b"x" * 600)
            time.sleep(0.2)
            c.send(b"y" * 300 + b"\r\n")
        assert c.cmd(".") == "250 OK"


def test_timeout_during_data_without_lines(start: ServerFactory) -> None:
    with start(timeout=0.3).client() as c:
        c.cmd("HELO x")
        c.cmd("MAIL FROM:<a@b>")
        c.cmd("RCPT TO:<c@d>")
        c.cmd("DATA")
        c.send(b"partial line without end")
        assert c.is_closed()


def test_hostname_default(start: ServerFactory) -> None:
    srv = start(hostname=None)
    with srv.client() as c:
        assert c.greeting[0] == f"220 {socket.getfqdn()} Python SMTP {__version__}".encode()
    assert HOSTNAME != srv.last.hostname


def test_max_recipients_is_off_by_default(start: Any) -> None:
    server = start()
    with server.client() as c:
        assert c.cmd("HELO c").startswith("250")
        assert c.cmd("MAIL FROM:<a@example.com>") == "250 OK"
        for i in range(150):
            assert c.cmd(f"RCPT TO:<r{i}@example.com>") == "250 OK"


def test_max_recipients(start: Any) -> None:
    server = start(max_recipients=2)
    with server.client() as c:
        assert c.cmd("HELO c").startswith("250")
        assert c.cmd("MAIL FROM:<a@example.com>") == "250 OK"
        assert c.cmd("RCPT TO:<r1@example.com>") == "250 OK"
        assert c.cmd("RCPT TO:<r2@example.com>") == "250 OK"
        assert c.cmd("RCPT TO:<r3@example.com>") == "452 4.5.3 Error: too many recipients"
        # The transaction goes on with the recipients accepted.
        assert c.cmd("DATA").startswith("354")
        assert c.cmd("Subject: x\r\n\r\nhi\r\n.") == "250 OK"
        # A new transaction has a new allowance.
        assert c.cmd("MAIL FROM:<a@example.com>") == "250 OK"
        assert c.cmd("RCPT TO:<r4@example.com>") == "250 OK"
    envelope = server.last.event_handler.envelopes[0]
    assert envelope.rcpt_tos == ["r1@example.com", "r2@example.com"]


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3"])
def test_max_recipients_must_be_positive(bad: Any) -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="max_recipients must be None or a positive int"):
            SMTP(None, hostname="h", max_recipients=bad, loop=loop)
    finally:
        loop.close()
