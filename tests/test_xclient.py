"""XCLIENT's pure parts (aiosmtpd._xclient): xtext, the attribute grammar,
the trusted networks.  The command on the wire: tests/test_smtp_xclient.py."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from aiosmtpd._xclient import (
    TEMPUNAVAIL,
    UNAVAILABLE,
    XClient,
    XClientError,
    XtextError,
    address_trusted,
    parse_xclient,
    trusted_networks,
    updated,
    updated_peer,
    xtext_decode,
    xtext_encode,
)

# RFC 3461's xtext, written out independently of the module's own pattern.
XCHAR = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "+=")
XTEXT = re.compile(r"(?:[" + re.escape(XCHAR) + r"]|\+[0-9A-F]{2})*")


# -- xtext ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ("", b""),
        ("abc", b"abc"),
        ("helo+20name", b"helo name"),
        ("a+2Bb+3Dc", b"a+b=c"),
        ("+00+0D+0A+FF", b"\x00\r\n\xff"),
        ("+c3+a9", "é".encode()),  # lower-case hex is accepted on input
        ("IPV6:2001:db8::1", b"IPV6:2001:db8::1"),
        ("[UNAVAILABLE]", b"[UNAVAILABLE]"),
    ],
)
def test_xtext_decode(text: str, data: bytes) -> None:
    assert xtext_decode(text) == data


@pytest.mark.parametrize(
    "text", ["a=b", "+", "+4", "+4G", "a+", "a b", "a\tb", "\x7f", "é", "+é9", "\x00", "++20"]
)
def test_xtext_decode_refuses(text: str) -> None:
    with pytest.raises(XtextError):
        xtext_decode(text)


def test_xtext_encode() -> None:
    assert xtext_encode(b"helo name") == "helo+20name"
    assert xtext_encode(b"a+b=c") == "a+2Bb+3Dc"
    assert xtext_encode(b"\x00\x7f\xff~!") == "+00+7F+FF~!"
    assert xtext_encode("é".encode()) == "+C3+A9"


@given(st.binary(max_size=64))
def test_xtext_round_trip(data: bytes) -> None:
    text = xtext_encode(data)
    assert XTEXT.fullmatch(text), text
    assert xtext_decode(text) == data


@given(st.text(alphabet=XCHAR + "+=0123456789ABCDEFabcdef \t\x00é\udc80", max_size=24))
@example("+")
@example("+zz")
def test_xtext_decode_any_text(text: str) -> None:
    """Arbitrary text decodes, or raises XtextError and nothing else."""
    try:
        data = xtext_decode(text)
    except XtextError:
        assert not re.fullmatch(r"(?:[" + re.escape(XCHAR) + r"]|\+[0-9A-Fa-f]{2})*", text)
        return
    assert xtext_decode(xtext_encode(data)) == data


# -- The attribute grammar -----------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "attributes"),
    [
        ("NAME=spike.porcupine.org ADDR=168.100.189.2",
         {"name": "spike.porcupine.org", "addr": "168.100.189.2"}),
        ("name=mx-1.example_x.org", {"name": "mx-1.example_x.org"}),
        ("NAME=[unavailable]", {"name": UNAVAILABLE}),
        ("NAME=[TempUnavail]", {"name": TEMPUNAVAIL}),
        ("ADDR=IPV6:2001:DB8:0::1", {"addr": "2001:db8::1"}),
        ("ADDR=ipv6:::1", {"addr": "::1"}),
        ("ADDR=[UNAVAILABLE]", {"addr": UNAVAILABLE}),
        ("PORT=0025", {"port": "25"}),
        ("PORT=65535", {"port": "65535"}),
        ("PORT=[UNAVAILABLE]", {"port": UNAVAILABLE}),
        ("PROTO=esmtp", {"proto": "ESMTP"}),
        ("PROTO=SMTP", {"proto": "SMTP"}),
        ("HELO=helo+20name", {"helo": "helo name"}),
        ("HELO=[UNAVAILABLE]", {"helo": UNAVAILABLE}),
        ("LOGIN=j+C3+BCrgen", {"login": "jürgen"}),
        ("DESTADDR=198.51.100.25 DESTPORT=587", {"destaddr": "198.51.100.25", "destport": "587"}),
        ("NAME=a.example NAME=b.example", {"name": "b.example"}),
        ("NAME=a.example   ADDR=192.0.2.1", {"name": "a.example", "addr": "192.0.2.1"}),
    ],
)  # fmt: skip
def test_parse(arg: str, attributes: dict[str, str]) -> None:
    assert parse_xclient(arg) == attributes


NO_VALUE = "501 5.5.4 Error: attribute=value expected"


@pytest.mark.parametrize(
    ("arg", "reply"),
    [
        (None, "501 5.5.4 Syntax: XCLIENT attribute=value..."),
        ("", "501 5.5.4 Syntax: XCLIENT attribute=value..."),
        ("NAME", NO_VALUE),
        ("NAME=", NO_VALUE),
        ("=x", "501 5.5.4 Bad XCLIENT attribute name: "),
        ("NAME=a.example ADDR", NO_VALUE),
        ("HELO=" + "h" * 256, "501 5.5.4 Error: attribute value too long"),
        ("FOO=bar", "501 5.5.4 Bad XCLIENT attribute name: FOO"),
        ("REVERSE_NAME=a.example", "501 5.5.4 Bad XCLIENT attribute name: REVERSE_NAME"),
        ("DEſTADDR=192.0.2.1", "501 5.5.4 Bad XCLIENT attribute name: DE?TADDR"),
        ("NAME=1.2.3.4", "501 5.5.4 Bad NAME syntax: 1.2.3.4"),
        ("NAME=-bad.example", "501 5.5.4 Bad NAME syntax: -bad.example"),
        ("NAME=a..example", "501 5.5.4 Bad NAME syntax: a..example"),
        ("NAME=a.example.", "501 5.5.4 Bad NAME syntax: a.example."),
        ("NAME=" + "a" * 64 + ".example", "501 5.5.4 Bad NAME syntax: " + "a" * 64 + ".example"),
        ("NAME=a+2Bb", "501 5.5.4 Bad NAME syntax: a+b"),
        ("ADDR=::1", "501 5.5.4 Bad ADDR syntax: ::1"),
        ("ADDR=256.1.1.1", "501 5.5.4 Bad ADDR syntax: 256.1.1.1"),
        ("ADDR=01.2.3.4", "501 5.5.4 Bad ADDR syntax: 01.2.3.4"),
        ("ADDR=[192.0.2.1]", "501 5.5.4 Bad ADDR syntax: [192.0.2.1]"),
        ("ADDR=IPV6:fe80::1%eth0", "501 5.5.4 Bad ADDR syntax: IPV6:fe80::1%eth0"),
        ("ADDR=IPV6:192.0.2.1", "501 5.5.4 Bad ADDR syntax: IPV6:192.0.2.1"),
        ("DESTADDR=example.org", "501 5.5.4 Bad DESTADDR syntax: example.org"),
        ("PORT=65536", "501 5.5.4 Bad PORT syntax: 65536"),
        ("PORT=-1", "501 5.5.4 Bad PORT syntax: -1"),
        ("PORT=123456", "501 5.5.4 Bad PORT syntax: 123456"),
        ("DESTPORT=x", "501 5.5.4 Bad DESTPORT syntax: x"),
        ("PROTO=LMTP", "501 5.5.4 Bad PROTO syntax: LMTP"),
        ("PROTO=[UNAVAILABLE]", "501 5.5.4 Bad PROTO syntax: [UNAVAILABLE]"),
        ("NAME=[TEMPUNAVAIL]x", "501 5.5.4 Bad NAME syntax: [TEMPUNAVAIL]x"),
        ("ADDR=[TEMPUNAVAIL]", "501 5.5.4 Bad ADDR syntax: [TEMPUNAVAIL]"),
        # Not xtext: shown as sent.
        ("HELO=a+zz", "501 5.5.4 Bad HELO syntax: a+zz"),
        ("HELO=a=b", "501 5.5.4 Bad HELO syntax: a=b"),
        ("HELO=a\tb", "501 5.5.4 Bad HELO syntax: a?b"),
        ("LOGIN=jürgen", "501 5.5.4 Bad LOGIN syntax: j?rgen"),
        # Control characters and bytes that are not UTF-8: never echoed.
        ("HELO=a+0D+0Ab", "501 5.5.4 Bad HELO syntax: a??b"),
        ("LOGIN=+00", "501 5.5.4 Bad LOGIN syntax: ?"),
        ("LOGIN=+FF", "501 5.5.4 Bad LOGIN syntax: +FF"),
        # One bad attribute refuses the whole command.
        ("NAME=good.example ADDR=bad", "501 5.5.4 Bad ADDR syntax: bad"),
    ],
)  # fmt: skip
def test_parse_refuses(arg: Any, reply: str) -> None:
    with pytest.raises(XClientError) as raised:
        parse_xclient(arg)
    assert raised.value.reply == reply
    assert isinstance(raised.value, ValueError)


FIELDS = set(XClient._fields)
NAMES = ["NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR", "DESTPORT", "name", "FOO"]
token = st.builds(
    lambda name, sep, value: name + sep + value,
    st.sampled_from(NAMES) | st.text(max_size=4),
    st.sampled_from(["=", "", "=="]),
    st.text(max_size=12)
    | st.binary(max_size=12).map(xtext_encode)
    | st.sampled_from(["[UNAVAILABLE]", "[tempunavail]", "IPV6:::1", "192.0.2.1", "25", "ESMTP"]),
)


@given(st.lists(token, max_size=4).map(" ".join) | st.text(max_size=40))
@example("NAME=\udc80")
@example("HELO=" + "+41" * 85)
def test_parse_any_input(arg: str) -> None:
    """Arbitrary input is accepted or refused with a 501, nothing else."""
    try:
        attributes = parse_xclient(arg)
    except XClientError as error:
        assert re.fullmatch(r"501 5\.5\.4 [ -~]*", error.reply), error.reply
        return
    assert attributes and set(attributes) <= FIELDS
    for value in attributes.values():
        assert value and value.isprintable() and len(value) <= 255


hostname = st.from_regex(
    r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?(?:\.[a-z]{1,8}){1,3}", fullmatch=True
)


@given(
    name=hostname,
    addr=st.ip_addresses(),
    port=st.integers(0, 65535),
    helo=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1,
                 max_size=20).filter(str.isprintable),
)  # fmt: skip
def test_parse_encoded_values(name: str, addr: Any, port: int, helo: str) -> None:
    """What a client xtext-encodes comes back as it was (addresses normalised)."""
    wire_addr = f"IPV6:{addr}" if addr.version == 6 else str(addr)
    arg = " ".join(
        f"{key}={xtext_encode(value.encode())}"
        for key, value in [("NAME", name), ("ADDR", wire_addr), ("PORT", str(port)),
                           ("HELO", helo), ("LOGIN", helo)]
    )  # fmt: skip
    if len(xtext_encode(helo.encode())) > 255:
        return
    assert parse_xclient(arg) == {
        "name": name, "addr": str(addr), "port": str(port), "helo": helo, "login": helo,
    }  # fmt: skip


# -- State after XCLIENT -------------------------------------------------------------


def test_updated_accumulates_but_forgets_last_command_attributes() -> None:
    first = updated(None, {"name": "a.example", "addr": "192.0.2.1", "helo": "h", "login": "u"})
    assert first == XClient(name="a.example", addr="192.0.2.1", helo="h", login="u")
    second = updated(first, {"port": "25", "proto": "ESMTP"})
    assert second == XClient(name="a.example", addr="192.0.2.1", port="25", proto="ESMTP")
    assert updated(second, {"name": "b.example"}) == XClient(
        name="b.example", addr="192.0.2.1", port="25"
    )


@pytest.mark.parametrize(
    ("peer", "attributes", "result"),
    [
        (("127.0.0.1", 5000), {"name": "a.example"}, ("127.0.0.1", 5000)),
        (("127.0.0.1", 5000), {"addr": "192.0.2.1"}, ("192.0.2.1", 5000)),
        (("127.0.0.1", 5000), {"port": "25"}, ("127.0.0.1", 25)),
        (("127.0.0.1", 5000), {"addr": "2001:db8::1", "port": "25"}, ("2001:db8::1", 25, 0, 0)),
        (("::1", 5000, 1, 2), {"port": "25"}, ("::1", 25, 1, 2)),
        (("::1", 5000, 1, 2), {"addr": "192.0.2.1"}, ("192.0.2.1", 5000)),
        (("127.0.0.1", 5000), {"addr": UNAVAILABLE, "port": UNAVAILABLE}, (UNAVAILABLE, 0)),
        ("", {"addr": "192.0.2.1"}, ("192.0.2.1", 0)),
        ("", {"name": "a.example"}, ""),
    ],
)  # fmt: skip
def test_updated_peer(peer: Any, attributes: dict[str, str], result: Any) -> None:
    assert updated_peer(peer, attributes) == result


# -- Trusted networks ----------------------------------------------------------------


def test_trusted_networks() -> None:
    assert trusted_networks(None) is None
    assert trusted_networks([]) == ()
    assert trusted_networks(["127.0.0.0/8", "::1", ip_network("10.0.0.0/8"),
                             IPv4Address("192.0.2.7"), IPv6Address("2001:db8::1")]) == (
        ip_network("127.0.0.0/8"), ip_network("::1/128"), ip_network("10.0.0.0/8"),
        ip_network("192.0.2.7/32"), ip_network("2001:db8::1/128"),
    )  # fmt: skip
    assert trusted_networks(n for n in ["192.0.2.0/24"]) == (ip_network("192.0.2.0/24"),)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("127.0.0.1", "must be None or a list of networks"),
        (b"127.0.0.1", "must be None or a list of networks"),
        (8, "must be None or a list of networks"),
        (["127.0.0.1/8"], "'127.0.0.1/8' is not a network: 127.0.0.1/8 has host bits set"),
        (["localhost"], "'localhost' is not a network"),
        ([""], "'' is not a network"),
        ([2130706433], "2130706433 is not a network"),
        ([None], "None is not a network"),
        ([b"127.0.0.1"], "b'127.0.0.1' is not a network"),
    ],
)
def test_trusted_networks_refuses(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        trusted_networks(value)


NETS = trusted_networks(["127.0.0.0/8", "2001:db8::/32"]) or ()


@pytest.mark.parametrize(
    ("address", "trusted"),
    [
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("128.0.0.1", False),
        ("::ffff:127.0.0.1", True),  # a dual-stack socket's IPv4 client
        ("::ffff:10.0.0.1", False),
        ("2001:db8::5", True),
        ("2001:db8::5%eth0", True),
        ("::1", False),
        (IPv4Address("127.0.0.2"), True),
        (IPv6Address("2001:db9::1"), False),
        ("", False),
        ("localhost", False),
        (None, False),
        (b"127.0.0.1", False),
        (("127.0.0.1", 25), False),
    ],
)
def test_address_trusted(address: Any, trusted: bool) -> None:
    assert address_trusted(address, NETS) is trusted


def test_nothing_trusted_by_an_empty_list() -> None:
    assert not address_trusted("127.0.0.1", ())
