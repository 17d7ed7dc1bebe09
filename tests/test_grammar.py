"""The SMTP argument grammar (aiosmtpd._grammar), pure and property-based.

``get_address`` has a fast path for the common ``<local@domain>`` shape; it
must accept exactly what the standard-library parser path accepts
(docs/decisions.rst, "Address syntax"), so the two are compared on generated
input.
"""

from __future__ import annotations

from typing import Optional, Union

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aiosmtpd import _grammar
from aiosmtpd._grammar import (
    control_chars_to_question_marks,
    get_address,
    get_params,
    strip_keyword,
)


def stdlib(arg: str, local_part_limit: int = 0) -> tuple[Optional[str], Optional[str]]:
    """The reference: the standard-library path alone, plus the limit rule."""
    if not arg:
        return "", ""
    address, rest = _grammar._parse_with_stdlib(arg)
    if address is None:
        return None, None
    if local_part_limit:
        local = address.rpartition("@")[0] if "@" in address else address
        if len(local) > local_part_limit:
            return None, None
    return address, rest or ""


# Characters that matter to RFC 5322 parsing, plus some that do not.
ATEXT = "aZ09_+=-!#$%&'*/?^`{|}~"
SPECIALS = '.()<>@,;:\\"[] \t'
ODD = "\x00\x0b\x0c\r\n\x1f\x7f\x85\xa0\u2003é字"
local_chars = st.text(alphabet=ATEXT + ".", min_size=1, max_size=8)
odd_text = st.text(alphabet=ATEXT + SPECIALS + ODD, max_size=10)
quoted = st.text(alphabet="ab .@<>()\\\t", max_size=6).map(lambda s: f'"{s}"')
comment = st.text(alphabet="ab ()\\", max_size=5).map(lambda s: f"({s})")
domain = st.one_of(
    st.lists(st.text(alphabet="aZ09-", min_size=1, max_size=5), min_size=1, max_size=3).map(
        ".".join
    ),
    st.sampled_from(["[127.0.0.1]", "[b", "[1.2", "b]", "[IPv6:::1]"]),
    odd_text,
)
local = st.one_of(local_chars, quoted, odd_text)
ws = st.sampled_from(["", " ", "  ", "\t", " \t ", "\x0b", " \x0b", "\xa0", " \n", "\r\n"])
rest = st.one_of(
    st.just(""),
    st.builds("".join, st.lists(st.one_of(ws, comment, odd_text, st.just("SIZE=10")),
                                max_size=4)),
)


@st.composite
def address_args(draw: st.DrawFn) -> str:
    lead = draw(st.sampled_from(["", "", " ", "  (c)"]))
    open_ = draw(st.sampled_from(["<", "<", "<", "", "<@route:"]))
    close = draw(st.sampled_from([">", ">", ">", "", ">>"]))
    at = draw(st.sampled_from(["@", "@", "", "@@"]))
    return (
        lead + open_ + draw(local) + at + draw(domain) + close + draw(ws) + draw(rest)
    )


# Strings in the fast path's own alphabet, so that it is exercised a lot.
simple_args = st.builds(
    lambda lp, dm, w, r: f"<{lp}@{dm}>{w}{r}",
    st.lists(st.text(alphabet="aZ09_+=-", min_size=1, max_size=4), min_size=1,
             max_size=3).map(".".join),
    st.lists(st.text(alphabet="aZ09-", min_size=1, max_size=4), min_size=1,
             max_size=3).map(".".join),
    ws,
    rest,
)


@settings(max_examples=400, deadline=None)
@given(arg=st.one_of(address_args(), simple_args), limit=st.sampled_from([0, 0, 1, 3, 64]))
@example(arg="<a@b> \x0bSIZE=1", limit=0)
@example(arg="<a@b> \xa0x", limit=0)
@example(arg="<a@b> \n", limit=0)
@example(arg="<a@b>  (c) x", limit=0)
@example(arg="<a@b>\n", limit=0)
@example(arg="<0@[ ", limit=0)  # the stdlib raised UnboundLocalError
def test_fast_path_accepts_exactly_what_stdlib_accepts(arg: str, limit: int) -> None:
    assert get_address(arg, limit) == stdlib(arg, limit)


def test_fast_path_is_taken_for_common_addresses() -> None:
    for arg in ("<a@b>", "<first.last+tag@mail.example.com> SIZE=10", "<x@y>\t"):
        assert _grammar._SIMPLE_ANGLE_ADDR.match(arg) is not None


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("", ("", "")),
        ("<>", ("<>", "")),
        ("<a@b>", ("a@b", "")),
        ("<a@b> SIZE=10 BODY=8BITMIME", ("a@b", "SIZE=10 BODY=8BITMIME")),
        ("a@b", ("a@b", "")),
        ("z", ("z", "")),
        ("<user>", ("user", "")),
        ("<postmaster>", ("postmaster", "")),
        ("<@route:a@b>", ("a@b", "")),
        ('<"quoted local"@b>', ('"quoted local"@b', "")),
        ("foo bar", ('"foo bar"', "")),
        # Deviation (CHANGES.rst): an angle-addr must have its '>'.
        ("<a@b", (None, None)),
        ("<0@[ ", (None, None)),  # the stdlib raises UnboundLocalError
        ("<a@b SIZE=1", (None, None)),
        ("<", (None, None)),
        ("@", (None, None)),
        # The stdlib parser raises IndexError on these truncated inputs.
        ("<@", (None, None)),
        ("<@a:", (None, None)),
        ('"', (None, None)),
        # The stdlib's all_defects walk crashes on this one.
        ("<a@[b>", (None, None)),
        ("<a@b>>", ("a@b", ">")),
        ("a@[b", (None, None)),
    ],
)
def test_get_address_examples(arg: str, expected: tuple[Optional[str], Optional[str]]) -> None:
    assert get_address(arg) == expected


@pytest.mark.parametrize(
    ("arg", "limit", "ok"),
    [
        ("<abc@d>", 3, True),
        ("<abcd@d>", 3, False),
        ("abcd@d", 3, False),
        ("<abcd>", 3, False),
        ("<abc>", 3, True),
        ('<"a@b"@c>', 5, True),
        ("<abcd@d>", 0, True),
    ],
)
def test_local_part_limit(arg: str, limit: int, ok: bool) -> None:
    address, _ = get_address(arg, limit)
    assert (address is not None) is ok


def ref_params(params: list[str]) -> Optional[dict[str, Union[str, bool]]]:
    result: dict[str, Union[str, bool]] = {}
    for param in params:
        if "=" in param:
            key, value = param.split("=", 1)
            if not key or not key.isalnum() or value == "":
                return None
            result[key] = value
        else:
            if not param or not param.isalnum():
                return None
            result[param] = True
    return result


param_words = st.lists(
    st.text(alphabet="AZ09=-_.é ", max_size=6).map(str.upper), max_size=5
)


@settings(deadline=None)  # no timing: a loaded machine must not fail it
@given(params=param_words)
def test_get_params_matches_reference(params: list[str]) -> None:
    assert get_params(params) == ref_params(params)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([], {}),
        (["SIZE=10", "BODY=8BITMIME"], {"SIZE": "10", "BODY": "8BITMIME"}),
        (["SMTPUTF8"], {"SMTPUTF8": True}),
        (["SIZE=1", "SIZE=2"], {"SIZE": "2"}),
        (["X=A=B"], {"X": "A=B"}),
        (["X-FOO=1"], None),
        (["KEY="], None),
        (["=1"], None),
        ([""], None),
    ],
)
def test_get_params_examples(
    params: list[str], expected: Optional[dict[str, Union[str, bool]]]
) -> None:
    assert get_params(params) == expected


@settings(deadline=None)  # no timing: a loaded machine must not fail it
@given(
    keyword=st.sampled_from(["FROM:", "TO:"]),
    flips=st.lists(st.booleans(), min_size=5, max_size=5),
    tail=st.text(alphabet="ab <>@ \t", max_size=8),
)
def test_strip_keyword_any_case(keyword: str, flips: list[bool], tail: str) -> None:
    spelled = "".join(c.lower() if f else c for c, f in zip(keyword, flips))
    assert strip_keyword(keyword, spelled + tail) == tail.strip()


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("FROM:<a@b>", "<a@b>"),
        ("from: <a@b> ", "<a@b>"),
        ("FROM :<a@b>", None),
        ("FRO", None),
        ("", None),
        ("TO:<a@b>", None),
    ],
)
def test_strip_keyword_examples(arg: str, expected: Optional[str]) -> None:
    assert strip_keyword("FROM:", arg) == expected


@settings(deadline=None)  # no timing: a loaded machine must not fail it
@given(text=st.text(max_size=20))
def test_control_chars_to_question_marks(text: str) -> None:
    shown = control_chars_to_question_marks(text)
    expected = "".join("?" if ord(c) < 0x20 or c == "\x7f" else c for c in text)
    assert shown == expected


def test_control_chars_example() -> None:
    assert control_chars_to_question_marks("NOOP\rJUNK\x00\x7f") == "NOOP?JUNK??"
