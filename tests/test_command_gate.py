"""The command gate, socket-free: every reply the server sends by itself
before a command runs (aiosmtpd/_command_gate.py; docs/internals.rst)."""

from __future__ import annotations

from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiosmtpd._command_gate import (
    BOGUS_LIMIT,
    Command,
    CommandGate,
    Refusal,
    Why,
    split_line,
)


def command(line: bytes, utf8: bool = False) -> Command:
    parsed = split_line(line, utf8)
    assert isinstance(parsed, Command), parsed
    return parsed


def refusal(line: Optional[bytes], utf8: bool = False) -> Refusal:
    parsed = split_line(line, utf8)
    assert isinstance(parsed, Refusal), parsed
    return parsed


# -- split_line: checks 1-3 ---------------------------------------------------------------


def test_line_dropped_as_too_long() -> None:
    assert refusal(None) == Refusal("500 Command line too long", Why.TOO_LONG)


@pytest.mark.parametrize("line", [b"\r\n", b"\n", b"", b"\xffOOP\r\n", b"N\xc3\xa9OP x\r\n"])
def test_bad_syntax(line: bytes) -> None:
    assert refusal(line) == Refusal("500 Error: bad syntax", Why.BAD_SYNTAX)
    assert refusal(line, utf8=True).why is Why.BAD_SYNTAX


def test_argument_must_be_ascii_without_smtputf8() -> None:
    line = "MAIL FROM:<jö@example.com>\r\n".encode()
    assert refusal(line) == Refusal("500 Error: strict ASCII mode", Why.NOT_ASCII)
    assert command(line, utf8=True).arg == "FROM:<jö@example.com>"


def test_argument_undecodable_utf8_is_kept_escaped() -> None:
    assert command(b"VRFY \xff\r\n", utf8=True).arg == "\udcff"


def test_split() -> None:
    assert command(b"mail FROM:<a@b>  \r\n") == Command("MAIL", "FROM:<a@b>", b"mail FROM:<a@b>  ")
    assert command(b"NOOP\n") == Command("NOOP", None, b"NOOP")
    assert command(b"NOOP \r\n") == Command("NOOP", None, b"NOOP ")
    # The verb ends at the first space; the argument is stripped.
    assert command(b"HELO   host \r\n").arg == "host"


# -- CommandGate.admit: checks 4-8 ------------------------------------------------------------


def test_size_limit_counts_the_line_without_its_ending() -> None:
    gate = CommandGate()
    line = b"NOOP " + b"x" * 507  # 512 bytes
    assert gate.admit(command(line + b"\r\n"), size_limit=512) is None
    assert gate.admit(command(line + b"x\r\n"), size_limit=512) == Refusal(
        "500 Command line too long", Why.TOO_LONG
    )


def test_refused_tls_allows_only_quit() -> None:
    gate = CommandGate()
    assert gate.admit(command(b"EHLO x"), size_limit=512, tls_refused=True) == Refusal(
        "554 Command refused due to lack of security", Why.TLS_REFUSED
    )
    assert gate.admit(command(b"QUIT"), size_limit=512, tls_refused=True) is None


def test_starttls_first() -> None:
    gate = CommandGate()
    allowed = frozenset({"NOOP", "EHLO", "STARTTLS", "QUIT"})
    for verb in (b"HELO x", b"MAIL FROM:<a@b>", b"AUTH PLAIN", b"XYZZY"):
        assert gate.admit(
            command(verb), size_limit=512, starttls_missing=True,
            allowed_before_starttls=allowed, known=verb != b"XYZZY",
        ) == Refusal("530 Must issue a STARTTLS command first", Why.STARTTLS_FIRST)
    for verb in (b"NOOP", b"EHLO x", b"STARTTLS", b"QUIT"):
        assert gate.admit(
            command(verb), size_limit=512, starttls_missing=True,
            allowed_before_starttls=allowed,
        ) is None


def test_checks_come_in_upstreams_order() -> None:
    gate = CommandGate({}, 0, bogus_limit=1)
    long_unknown = command(b"XYZZY " + b"x" * 600)
    # Every check would refuse it; the size check speaks first.
    assert gate.admit(
        long_unknown, size_limit=512, tls_refused=True, starttls_missing=True, known=False
    ).why is Why.TOO_LONG  # type: ignore[union-attr]
    short_unknown = command(b"XYZZY")
    assert gate.admit(
        short_unknown, size_limit=512, tls_refused=True, starttls_missing=True, known=False
    ).why is Why.TLS_REFUSED  # type: ignore[union-attr]
    assert gate.admit(
        short_unknown, size_limit=512, starttls_missing=True, known=False
    ).why is Why.STARTTLS_FIRST  # type: ignore[union-attr]
    # Call limits come before the unknown-command budget.
    assert gate.admit(short_unknown, size_limit=512, known=False).why is Why.OVER_LIMIT  # type: ignore[union-attr]


def test_no_call_limits_by_default() -> None:
    gate = CommandGate()
    noop = command(b"NOOP")
    for _ in range(10_000):
        assert gate.admit(noop, size_limit=512) is None


def test_call_limits_per_command_and_default() -> None:
    gate = CommandGate({"NOOP": 2}, 3)
    noop, rset = command(b"NOOP"), command(b"RSET")
    assert [gate.admit(noop, size_limit=512) for _ in range(2)] == [None, None]
    assert gate.admit(noop, size_limit=512) == Refusal(
        "421 4.7.0 NOOP sent too many times", Why.OVER_LIMIT, close=True
    )
    assert [gate.admit(rset, size_limit=512) for _ in range(3)] == [None] * 3
    assert gate.admit(rset, size_limit=512).close  # type: ignore[union-attr]


def test_call_limit_reply_masks_control_characters() -> None:
    gate = CommandGate({}, 0)
    assert gate.admit(command(b"NO\rOP"), size_limit=512, known=False) == Refusal(
        "421 4.7.0 NO?OP sent too many times", Why.OVER_LIMIT, close=True
    )


def test_gates_do_not_share_budgets() -> None:
    base = {"NOOP": 1}
    first, second = CommandGate(base, 5), CommandGate(base, 5)
    assert first.admit(command(b"NOOP"), size_limit=512) is None
    assert second.admit(command(b"NOOP"), size_limit=512) is None
    assert base == {"NOOP": 1}


def test_unrecognised_commands_budget() -> None:
    gate = CommandGate()
    unknown = command(b"XY\x01ZZY now")
    for _ in range(BOGUS_LIMIT - 1):
        assert gate.admit(unknown, size_limit=512, known=False) == Refusal(
            '500 Error: command "XY?ZZY" not recognized', Why.UNRECOGNISED
        )
        # Known commands in between do not refill or spend it.
        assert gate.admit(command(b"NOOP"), size_limit=512) is None
    assert gate.admit(unknown, size_limit=512, known=False) == Refusal(
        "502 5.5.1 Too many unrecognized commands, goodbye.", Why.TOO_MANY_BOGUS, close=True
    )


# -- Properties over whole conversations ----------------------------------------------------

VERBS = ["NOOP", "HELO", "MAIL", "QUIT", "XYZZY", "RSET"]
KNOWN = {"NOOP", "HELO", "MAIL", "QUIT", "RSET"}

lines = st.one_of(
    st.none(),
    st.sampled_from(VERBS).map(lambda v: v.encode() + b"\r\n"),
    st.tuples(st.sampled_from(VERBS), st.binary(max_size=40)).map(
        lambda t: t[0].encode() + b" " + t[1] + b"\r\n"
    ),
    st.binary(max_size=60),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(lines, max_size=80),
    st.one_of(st.none(), st.dictionaries(st.sampled_from(VERBS), st.integers(0, 6))),
    st.integers(0, 6),
    st.booleans(),
)
def test_conversation_properties(
    conversation: list[Optional[bytes]],
    limits: Optional[dict[str, int]],
    default: int,
    utf8: bool,
) -> None:
    gate = CommandGate(limits, default)
    admitted: dict[str, int] = {}
    unknown = 0
    for line in conversation:
        parsed = split_line(line, utf8)
        if isinstance(parsed, Refusal):
            decision: Optional[Refusal] = parsed
        else:
            known = parsed.verb in KNOWN
            decision = gate.admit(parsed, size_limit=64, known=known)
            if decision is None:
                admitted[parsed.verb] = admitted.get(parsed.verb, 0) + 1
                assert known and len(parsed.line) <= 64
            elif decision.why in (Why.UNRECOGNISED, Why.TOO_MANY_BOGUS):
                unknown += 1
                assert (decision.why is Why.TOO_MANY_BOGUS) == (unknown >= BOGUS_LIMIT)
        if decision is not None:
            # Every refusal is one well-formed reply line.
            reply = decision.reply
            assert reply[:3].isdigit() and reply[3] == " "
            assert reply.isprintable() and reply.isascii()
            assert decision.close == (reply[:3] in ("421", "502"))
            if decision.close:
                break
    if limits is not None:
        for verb, count in admitted.items():
            assert count <= limits.get(verb, default)


def test_call_limits_from_the_constructor_argument() -> None:
    from aiosmtpd._command_gate import CALL_LIMIT_DEFAULT, call_limits

    assert call_limits(None) == (None, CALL_LIMIT_DEFAULT)
    assert call_limits(7) == ({}, 7)
    assert call_limits({"NOOP": 3}) == ({"NOOP": 3}, CALL_LIMIT_DEFAULT)
    assert call_limits({"NOOP": 3, "*": 9}) == ({"NOOP": 3, "*": 9}, 9)
    with pytest.raises(TypeError, match="All command_call_limit values must be int"):
        call_limits({"NOOP": "3"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"command_call_limit must be int or Dict\[str, int\]"):
        call_limits("3")  # type: ignore[arg-type]
