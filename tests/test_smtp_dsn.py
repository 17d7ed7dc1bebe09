"""DSN (RFC 3461) and AUTH on MAIL (RFC 4954 section 5), docs/extensions.rst:
loopback conversations on both engines, and the pure parameter parsers."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiosmtpd import _dsn
from aiosmtpd._dsn import RecipientDSN, xtext_decode, xtext_encode
from aiosmtpd.smtp import AuthResult, Envelope
from tests._server import HOST, IO_TIMEOUT, Recorder

pytestmark = pytest.mark.timeout(30)

MAIL = "MAIL FROM:<a@example.com>"
RCPT = "RCPT TO:<b@example.com>"


def deliver(c: Any, mail: str, *rcpts: str) -> None:
    c.multi("EHLO c")
    assert c.cmd(mail) == "250 OK"
    for rcpt in rcpts:
        assert c.cmd(rcpt) == "250 OK"
    assert c.cmd("DATA").startswith("354")
    c.send(b"hi\r\n.\r\n")
    assert c.text() == "250 OK"


def test_advertised_only_with_the_flag(start: Any) -> None:
    with start().client() as c:
        assert "250-DSN" not in c.multi("EHLO c")
    with start(enable_DSN=True).client() as c:
        assert "250-DSN" in c.multi("EHLO c")


@pytest.mark.parametrize("param", ["RET=HDRS", "ENVID=x"])
def test_off_by_default(start: Any, param: str) -> None:
    with start().client() as c:
        c.multi("EHLO c")
        assert c.cmd(f"{MAIL} {param}") == (
            "555 MAIL FROM parameters not recognized or not implemented"
        )
        assert c.cmd(MAIL) == "250 OK"
        assert c.cmd(f"{RCPT} NOTIFY=NEVER") == (
            "555 RCPT TO parameters not recognized or not implemented"
        )


def test_the_rfc_example(start: Any) -> None:
    # RFC 3461 section 4: ENVID and ORCPT are xtext ("+2B" is "+").
    handler = Recorder()
    with start(handler, enable_DSN=True).client() as c:
        deliver(
            c,
            f"{MAIL} RET=hdrs ENVID=QQ314159+2Bx",
            "RCPT TO:<Bob@Example.COM> NOTIFY=SUCCESS,failure ORCPT=rfc822;Bob+2BX@Example.COM",
            "RCPT TO:<c@example.com> NOTIFY=NEVER",
            "RCPT TO:<d@example.com>",
        )
    envelope: Envelope = handler.envelopes[0]
    assert envelope.dsn_ret == "HDRS"
    assert envelope.dsn_envid == "QQ314159+x"
    assert envelope.dsn_recipients == {
        "Bob@Example.COM": RecipientDSN(frozenset({"SUCCESS", "FAILURE"}),
                                        ("rfc822", "Bob+X@Example.COM")),
        "c@example.com": RecipientDSN(frozenset({"NEVER"}), None),
    }
    # The options stay as 1.4.6 gave them, upper-cased.
    assert "RET=HDRS" in envelope.mail_options


def test_a_new_transaction_starts_clean(start: Any) -> None:
    handler = Recorder()
    with start(handler, enable_DSN=True).client() as c:
        deliver(c, f"{MAIL} RET=FULL", f"{RCPT} NOTIFY=DELAY")
        assert c.cmd(MAIL) == "250 OK"
        assert c.cmd(RCPT) == "250 OK"
        c.cmd("DATA")
        c.send(b"hi\r\n.\r\n")
        assert c.text() == "250 OK"
    second = handler.envelopes[1]
    assert (second.dsn_ret, second.dsn_envid, dict(second.dsn_recipients)) == (None, None, {})


def test_a_refused_recipient_keeps_no_dsn(start: Any) -> None:
    class Refuses(Recorder):
        async def handle_RCPT(self, server: Any, session: Any, envelope: Any,
                              address: str, options: list[str]) -> str:
            if address.startswith("no"):
                return "550 no"
            envelope.rcpt_tos.append(address)
            return "250 OK"

    handler = Refuses()
    with start(handler, enable_DSN=True).client() as c:
        c.multi("EHLO c")
        c.cmd(MAIL)
        assert c.cmd("RCPT TO:<no@example.com> NOTIFY=NEVER") == "550 no"
        assert c.cmd(f"{RCPT} NOTIFY=NEVER") == "250 OK"
        c.cmd("DATA")
        c.send(b"hi\r\n.\r\n")
        assert c.text() == "250 OK"
    assert list(handler.envelopes[0].dsn_recipients) == ["b@example.com"]


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (f"{MAIL} RET=ALL", _dsn.BAD_RET),
        (f"{MAIL} RET", _dsn.BAD_RET),
        (f"{MAIL} ENVID=a+zz", _dsn.BAD_ENVID),
        (f"{MAIL} ENVID=a+2b", _dsn.BAD_ENVID),  # hex digits are upper-case
        (f"{MAIL} ENVID=" + "x" * 101, _dsn.BAD_ENVID),
        (f"{MAIL} ENVID=a\N{LATIN SMALL LETTER E WITH ACUTE}", _dsn.BAD_ENVID),
    ],
)
def test_bad_mail_parameters(start: Any, line: str, reply: str) -> None:
    with start(enable_DSN=True, enable_SMTPUTF8=True).client() as c:
        c.multi("EHLO c")
        assert c.cmd(line) == reply
        assert c.cmd(MAIL) == "250 OK"  # no transaction was begun


@pytest.mark.parametrize(
    ("params", "reply"),
    [
        ("NOTIFY=NEVER,SUCCESS", _dsn.BAD_NOTIFY),
        ("NOTIFY=SUCCESS,SUCCESS", _dsn.BAD_NOTIFY),
        ("NOTIFY=SOMETIMES", _dsn.BAD_NOTIFY),
        ("NOTIFY=SUCCESS,", _dsn.BAD_NOTIFY),
        ("ORCPT=b@example.com", _dsn.BAD_ORCPT),
        ("ORCPT=rfc822;", _dsn.BAD_ORCPT),
        ("ORCPT=r(fc;b", _dsn.BAD_ORCPT),
        ("ORCPT=rfc822;a+5", _dsn.BAD_ORCPT),
        ("ORCPT=rfc822;" + "x" * 494, _dsn.BAD_ORCPT),  # 501 characters
    ],
)
def test_bad_rcpt_parameters(start: Any, params: str, reply: str) -> None:
    with start(enable_DSN=True).client() as c:
        c.multi("EHLO c")
        c.cmd(MAIL)
        assert c.cmd(f"{RCPT} {params}") == reply
        assert c.cmd(RCPT) == "250 OK"


def test_longest_orcpt(start: Any) -> None:
    # RFC 3461 section 5: up to 500 characters, and a RCPT line 500 longer.
    with start(enable_DSN=True).client() as c:
        c.multi("EHLO c")
        c.cmd(MAIL)
        assert c.cmd(f"{RCPT} NOTIFY=NEVER ORCPT=rfc822;" + "x" * 493) == "250 OK"


def test_smtplib_sends_dsn(start: Any) -> None:
    handler = Recorder()
    server = start(handler, enable_DSN=True)
    with smtplib.SMTP(HOST, server.port, timeout=IO_TIMEOUT) as client:
        client.sendmail(
            "a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nhi\r\n",
            mail_options=["RET=FULL", "ENVID=" + xtext_encode("id=1 2")],
            rcpt_options=["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;" + xtext_encode("b@example.com")],
        )
    envelope = handler.envelopes[0]
    assert (envelope.dsn_ret, envelope.dsn_envid) == ("FULL", "id=1 2")
    assert envelope.dsn_recipients["b@example.com"] == RecipientDSN(
        frozenset({"SUCCESS", "DELAY"}), ("rfc822", "b@example.com")
    )


# -- AUTH= on MAIL (RFC 4954 section 5) ------------------------------------------------------


class Accepts:
    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str,
                 data: Any) -> AuthResult:
        return AuthResult(success=True)


def test_auth_parameter_not_offered_without_auth(start: Any) -> None:
    with start().client() as c:
        c.multi("EHLO c")
        assert c.cmd(f"{MAIL} AUTH=<>") == (
            "555 MAIL FROM parameters not recognized or not implemented"
        )


def test_auth_parameter_is_not_trusted_before_auth(start: Any) -> None:
    handler = Recorder()
    with start(handler, authenticator=Accepts(), auth_require_tls=False).client() as c:
        deliver(c, f"{MAIL} AUTH=a+2Bb@example.com", RCPT)
        deliver(c, f"{MAIL} AUTH=<>", RCPT)
    assert [e.mail_auth for e in handler.envelopes] == ["<>", "<>"]


def test_auth_parameter_after_auth(start: Any) -> None:
    handler = Recorder()
    with start(handler, authenticator=Accepts(), auth_require_tls=False).client() as c:
        c.multi("EHLO c")
        assert c.cmd("AUTH PLAIN AHVzZXIAcGFzcw==").startswith("235")
        deliver(c, f"{MAIL} AUTH=a+2Bb@example.com", RCPT)
        deliver(c, MAIL, RCPT)
        assert c.cmd(f"{MAIL} AUTH=a+zz") == _dsn.BAD_AUTH
    assert [e.mail_auth for e in handler.envelopes] == ["a+b@example.com", None]


# -- The parsers, without a socket -----------------------------------------------------------

ASCII = st.text(st.characters(min_codepoint=0, max_codepoint=127))
REPLIES = {_dsn.BAD_RET, _dsn.BAD_ENVID, _dsn.BAD_NOTIFY, _dsn.BAD_ORCPT, _dsn.BAD_AUTH}


@given(ASCII)
def test_xtext_round_trip(text: str) -> None:
    encoded = xtext_encode(text)
    assert all("!" <= c <= "~" and c != "=" for c in encoded)
    assert xtext_decode(encoded) == text


@given(st.text())
def test_parsers_raise_only_their_replies(text: str) -> None:
    for parse in (_dsn.parse_ret, _dsn.parse_envid, _dsn.parse_notify, _dsn.parse_orcpt,
                  _dsn.parse_auth):
        try:
            parse(text)
        except ValueError as error:
            assert error.args[0] in REPLIES


def test_notify_never_is_exclusive() -> None:
    assert _dsn.parse_notify("never") == frozenset({"NEVER"})
    with pytest.raises(ValueError):
        _dsn.parse_notify("NEVER,DELAY")
