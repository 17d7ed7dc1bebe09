"""Unit and property tests for aiosmtpd.proxy_protocol (docs/proxyprotocol.rst).

The parser is pure, so most cases feed it bytes directly; get_proxy() is also
driven through real loopback sockets and through a real asyncio.StreamReader.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import ipaddress
import logging
import pickle
import struct
from collections.abc import Awaitable, Iterable
from typing import Any, Callable, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiosmtpd import proxy_protocol as pp
from aiosmtpd.proxy_protocol import (
    AF,
    PROTO,
    V2_CMD,
    V2_SIGNATURE,
    AsyncReader,
    MalformedTLV,
    ProxyData,
    ProxyTLV,
    UnknownTypeTLV,
    get_proxy,
    parse_proxy_header,
    scan_proxy_header,
)

T = TypeVar("T")

# ---------------------------------------------------------------------------
# helpers


def v2(body: bytes = b"", *, cmd: int = 1, fam: int = 1, proto: int = 1,
       ver: int = 2, length: int | None = None) -> bytes:
    """A v2 header: preamble + body; ``length`` overrides the length field."""
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes([(ver << 4) | cmd, (fam << 4) | proto]) + \
        struct.pack("!H", size) + body


def inet(src: str = "198.51.100.7", dst: str = "203.0.113.25",
         sport: int = 40000, dport: int = 25) -> bytes:
    return ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + \
        struct.pack("!HH", sport, dport)


def tlv(type_num: int, value: bytes) -> bytes:
    return bytes([type_num]) + struct.pack("!H", len(value)) + value


def ssl_tlv(client: int, verify: int, subs: bytes) -> bytes:
    return tlv(0x20, bytes([client]) + struct.pack("!I", verify) + subs)


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes | bytearray) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc_ok(data: ProxyData) -> bool:
    """How a handle_PROXY hook verifies the CRC32C TLV (the library does not)."""
    assert data.tlv is not None and data.tlv_start is not None
    at = data.tlv_start + data.tlv.tlv_loc["CRC32C"] + 3
    raw = bytearray(data.whole_raw)
    raw[at:at + 4] = b"\0\0\0\0"
    return crc32c(raw) == int.from_bytes(data.tlv.CRC32C, "big")


def run(coro_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    async def guarded() -> T:
        # A hang guard only: every awaited thing here completes on its own.
        return await asyncio.wait_for(coro_fn(*args), 30)
    return asyncio.run(guarded())


class ReturnsWhatItHas:
    """An AsyncReader over a StreamReader, except that readuntil() returns the
    bytes it has when the stream ends before the separator (as readline()
    does) instead of raising IncompleteReadError."""

    def __init__(self, inner: asyncio.StreamReader) -> None:
        self.inner = inner

    async def read(self, n: int = -1) -> bytes:
        return await self.inner.read(n)

    async def readexactly(self, n: int) -> bytes:
        return await self.inner.readexactly(n)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        try:
            return await self.inner.readuntil(separator)
        except asyncio.IncompleteReadError as exc:
            return exc.partial


class BytesReader:
    """An AsyncReader over fixed bytes, no asyncio stream involved; readuntil()
    also returns what is left when the separator never comes."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)

    async def read(self, n: int = -1) -> bytes:
        taken = bytes(self.data if n < 0 else self.data[:n])
        del self.data[:len(taken)]
        return taken

    async def readexactly(self, n: int) -> bytes:
        taken = await self.read(n)
        if len(taken) < n:
            raise asyncio.IncompleteReadError(taken, n)
        return taken

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        at = self.data.find(separator)
        return await self.read(-1 if at < 0 else at + len(separator))


Wrap = Callable[[asyncio.StreamReader], AsyncReader]


def as_is(reader: asyncio.StreamReader) -> AsyncReader:
    return reader


async def via_reader(chunks: Iterable[bytes], eof: bool = True,
                     wrap: Wrap = as_is) -> tuple[ProxyData, bytes]:
    """get_proxy over a real StreamReader fed ``chunks`` (seen through
    ``wrap``); returns what it left."""
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    data = await get_proxy(wrap(reader))
    left = await reader.read() if eof else b""
    return data, left


async def via_socket(chunks: list[bytes], close: bool = True,
                     wrap: Wrap = as_is) -> tuple[ProxyData, bytes]:
    """get_proxy on the server side of a loopback TCP connection."""
    result: asyncio.Future[tuple[ProxyData, bytes]] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await get_proxy(wrap(reader))
        left = await reader.read() if close else b""
        result.set_result((data, left))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        if close:
            writer.write_eof()
        return await result
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


def final(buf: bytes) -> ProxyData:
    data = parse_proxy_header(buf, eof=True)[1]
    assert data is not None
    return data


# ---------------------------------------------------------------------------
# module surface


def test_all_exact_order() -> None:
    assert pp.__all__ == [
        "struct", "partial", "IPv4Address", "IPv6Address",
        "V2_SIGNATURE", "V2_CMD", "V2_VALID_CMDS", "V2_VALID_FAMS", "V2_VALID_PROS",
        "V2_PARSE_ADDR_FAMPRO",
        "MalformedTLV", "UnknownTypeTLV", "AsyncReader", "ProxyTLV", "ProxyData", "get_proxy",
    ]
    for name in pp.__all__:
        assert hasattr(pp, name)


def test_reexported_stdlib_names() -> None:
    assert pp.struct is struct
    assert pp.partial is functools.partial
    assert pp.IPv4Address is ipaddress.IPv4Address
    assert pp.IPv6Address is ipaddress.IPv6Address


def test_constants() -> None:
    assert V2_SIGNATURE == bytes.fromhex("0D0A0D0A000D0A515549540A")
    assert [(m.name, m.value) for m in V2_CMD] == [("LOCAL", 0), ("PROXY", 1)]
    assert [(m.name, m.value) for m in AF] == [
        ("UNSPEC", 0), ("INET", 1), ("INET6", 2), ("UNIX", 3)]
    assert [(m.name, m.value) for m in PROTO] == [("UNSPEC", 0), ("STREAM", 1), ("DGRAM", 2)]
    assert "AF" not in pp.__all__ and "PROTO" not in pp.__all__
    assert pp.V2_VALID_CMDS == {0, 1}
    assert pp.V2_VALID_FAMS == {0, 1, 2, 3}
    assert pp.V2_VALID_PROS == {0, 1, 2}
    assert pp.V2_PARSE_ADDR_FAMPRO == {0x11, 0x12, 0x21, 0x22, 0x31, 0x32}


def test_exceptions_and_reader_protocol() -> None:
    assert issubclass(MalformedTLV, RuntimeError)
    assert issubclass(UnknownTypeTLV, KeyError)
    with pytest.raises(TypeError):  # a typing.Protocol that is not runtime-checkable
        isinstance(asyncio.StreamReader, AsyncReader)  # type: ignore[misc]  # noqa: B015


def test_logger_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="mail.debug"):
        parse_proxy_header(b"HELO")
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("mail.debug", "WARNING", "PROXY error: PROXY unrecognized signature")]


# ---------------------------------------------------------------------------
# ProxyData

EMPTY_REPR = ("ProxyData(version=1, command=None, family=None, protocol=None, src_addr=None, "
              "dst_addr=None, src_port=None, dst_port=None, rest=b'', "
              "whole_raw=bytearray(b''), tlv_start=None, error='', _tlv=None)")


def test_proxydata_shape() -> None:
    data = ProxyData(version=1)
    assert repr(data) == EMPTY_REPR
    assert data == ProxyData(version=1)
    assert data != ProxyData(version=2)
    assert ProxyData.__hash__ is None
    with pytest.raises(TypeError):
        hash(data)
    with pytest.raises(AttributeError):
        data.nonexistent = 1  # type: ignore[attr-defined]
    assert not hasattr(data, "__dict__")
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'version'"):
        ProxyData()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ProxyData(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ProxyData(version=1, family=1)  # type: ignore[call-arg]
    assert ProxyData(version=1).whole_raw is not data.whole_raw


def test_proxydata_valid_rules() -> None:
    data = ProxyData(version=1)
    assert not data.valid and not data
    data.protocol = PROTO.UNSPEC  # falsy value, but not None
    assert data.valid and data
    data.error = "x"
    assert not data.valid
    none = ProxyData(version=None)
    none.protocol = 1
    assert not none.valid


def test_with_error(caplog: pytest.LogCaptureFixture) -> None:
    data = ProxyData(version=2)
    with caplog.at_level(logging.WARNING, logger="mail.debug"):
        assert data.with_error("boom") is data
        data.with_error("plain", log_prefix=False)
    assert data.error == "plain"
    assert [r.getMessage() for r in caplog.records] == ["PROXY error: boom", "plain"]
    assert all(r.levelno == logging.WARNING and r.name == "mail.debug" for r in caplog.records)


def test_proxydata_same_attribs() -> None:
    data = final(v2(inet()))
    assert data.same_attribs(version=2, family=AF.INET, src_port=40000, valid=True)
    assert data.same_attribs(tlv=None)
    assert not data.same_attribs(family=AF.INET6)
    assert not data.same_attribs(nope=1)
    with pytest.raises(ValueError) as exc:
        data.same_attribs(_raises=True, family=AF.INET6)
    assert str(exc.value) == "mismatch:family actual=1 expect=<AF.INET6: 2>"
    with pytest.raises(KeyError) as kexc:
        data.same_attribs(_raises=True, nope=1)
    assert kexc.value.args == ("notfound:nope",)


def test_tlv_property_caches_and_never_raises() -> None:
    good = final(v2(inet() + tlv(0x02, b"mx.example")))
    first = good.tlv
    assert first == {"AUTHORITY": b"mx.example"}
    assert good.tlv is first
    assert good._tlv is first
    bad = final(v2(inet() + tlv(0x20, b"")))  # empty SSL TLV: IndexError upstream
    assert bad.valid and bad.tlv is None
    data = ProxyData(version=2)
    assert data.tlv is None
    data.rest = tlv(0x04, b"")  # retried while the cache is None
    assert data.tlv == {"NOOP": b""}
    data.rest = "not bytes"  # type: ignore[assignment]
    data._tlv = None
    assert data.tlv is None


# ---------------------------------------------------------------------------
# ProxyTLV


def test_tlv_class_shape() -> None:
    assert ProxyTLV.__slots__ == ("tlv_loc",)
    assert issubclass(ProxyTLV, dict)
    t = ProxyTLV({"ALPN": b"smtp"}, _tlv_loc={"ALPN": 0})
    assert t.ALPN == b"smtp" and t.tlv_loc == {"ALPN": 0}
    assert t.NOPE is None and hasattr(t, "anything")
    assert t == {"ALPN": b"smtp"} == ProxyTLV(ALPN=b"smtp", _tlv_loc={})
    with pytest.raises(TypeError):
        ProxyTLV({"ALPN": b"x"})  # type: ignore[call-arg]
    with pytest.raises(AttributeError):
        t.other = 1  # type: ignore[attr-defined]


def test_tlv_and_data_copy_and_pickle() -> None:
    data = final(v2(inet() + tlv(0x02, b"mx") + ssl_tlv(1, 0, tlv(0x21, b"TLSv1.3"))))
    t = data.tlv
    assert t is not None
    for clone in (copy.copy(t), copy.deepcopy(t), pickle.loads(pickle.dumps(t))):
        assert type(clone) is ProxyTLV and clone == t and clone.tlv_loc == t.tlv_loc
    for dclone in (copy.deepcopy(data), pickle.loads(pickle.dumps(data))):
        assert dclone == data and dclone.valid


def test_typename_table() -> None:
    assert ProxyTLV.PP2_TYPENAME == {
        0x01: "ALPN", 0x02: "AUTHORITY", 0x03: "CRC32C", 0x04: "NOOP", 0x05: "UNIQUE_ID",
        0x20: "SSL", 0x21: "SSL_VERSION", 0x22: "SSL_CN", 0x23: "SSL_CIPHER",
        0x24: "SSL_SIG_ALG", 0x25: "SSL_KEY_ALG", 0x30: "NETNS"}
    assert ProxyTLV.name_to_num("SSL") == 32
    assert ProxyTLV.name_to_num("CRC32C") == 3
    assert ProxyTLV.name_to_num("x01") is None
    assert ProxyTLV.name_to_num("nope") is None


def test_tlv_parse_basic_and_offsets() -> None:
    raw = tlv(0x01, b"h2") + tlv(0xE0, b"z") + tlv(0x01, b"smtp") + tlv(0x04, b"")
    values, loc = ProxyTLV.parse(raw)
    assert values == {"ALPN": b"smtp", "xE0": b"z", "NOOP": b""}
    assert loc == {"ALPN": 9, "xE0": 5, "NOOP": 16}
    assert type(ProxyTLV.parse(bytearray(raw))[0]["ALPN"]) is bytearray
    assert ProxyTLV.parse(b"") == ({}, {})
    with pytest.raises(UnknownTypeTLV) as exc:
        ProxyTLV.parse(raw, strict=True)
    assert exc.value.args == ("xE0",)


def test_tlv_ssl_flattened_with_true_offsets() -> None:
    subs = tlv(0x21, b"TLSv1.3") + tlv(0x22, b"client.example")
    raw = tlv(0x02, b"mx.e") + ssl_tlv(7, 0x01020304, subs) + tlv(0x05, b"id")
    values, loc = ProxyTLV.parse(raw)
    assert values == {"AUTHORITY": b"mx.e", "SSL_CLIENT": 7, "SSL_VERIFY": 0x01020304,
                      "SSL_VERSION": b"TLSv1.3", "SSL_CN": b"client.example", "SSL": True,
                      "UNIQUE_ID": b"id"}
    # SSL at 7; its first sub-TLV after 3 header + 5 client/verify bytes.
    assert loc == {"AUTHORITY": 0, "SSL": 7, "SSL_VERSION": 15, "SSL_CN": 25, "UNIQUE_ID": 42}
    for name, at in loc.items():
        assert raw[at] == ProxyTLV.name_to_num(name)


@pytest.mark.parametrize("raw, error", [
    (b"\x01", "TLV 0x01 is malformed!"),           # shorter than a TLV header
    (b"\x02\x00", "TLV 0x02 is malformed!"),
    (b"\x02\x00\x05abc", "TLV 0x02 is malformed!"),  # value shorter than its length
    (tlv(0x04, b"") + b"\xe1\x00\x01", "TLV 0xE1 is malformed!"),
])
def test_tlv_malformed(raw: bytes, error: str) -> None:
    with pytest.raises(MalformedTLV) as exc:
        ProxyTLV.parse(raw, partial_ok=False)
    assert str(exc.value) == error
    with pytest.raises(MalformedTLV):
        ProxyTLV.from_raw(raw)
    values, _ = ProxyTLV.parse(raw)  # partial_ok keeps what came before
    assert values == ({"NOOP": b""} if raw.startswith(b"\x04") else {})


@pytest.mark.parametrize("ssl", [
    tlv(0x20, b""),                                # IndexError upstream
    tlv(0x20, b"\x01\x00\x00\x00"),                # no room for the verify field
    ssl_tlv(1, 0, tlv(0x21, b"TLSv1.3") + b"\x22\x00\x09short"),  # bad sub-TLV
])
def test_tlv_broken_ssl_stops_parsing(ssl: bytes) -> None:
    raw = tlv(0x02, b"a") + ssl + tlv(0x05, b"dropped")
    values, loc = ProxyTLV.parse(raw)
    assert values["AUTHORITY"] == b"a" and values["SSL"] is False
    assert "UNIQUE_ID" not in values and loc["SSL"] == 4
    with pytest.raises(MalformedTLV, match="is malformed!"):
        ProxyTLV.parse(raw, partial_ok=False)


def test_tlv_ssl_nesting_is_one_level() -> None:
    inner = ssl_tlv(2, 0, tlv(0x21, b"x"))
    values, _ = ProxyTLV.parse(ssl_tlv(1, 0, inner))
    assert values["SSL_CLIENT"] == 1 and "SSL_VERSION" not in values
    deep = b""
    for _ in range(5000):  # would blow the recursion limit if parsed recursively
        deep = ssl_tlv(1, 0, deep)
    assert ProxyTLV.from_raw(deep) is not None


def test_tlv_from_raw_and_same_attribs() -> None:
    assert ProxyTLV.from_raw(b"") is None
    t = ProxyTLV.from_raw(tlv(0x03, b"\0\0\0\0") + tlv(0xEE, b"?"))
    assert isinstance(t, ProxyTLV)
    assert t.tlv_loc == {"CRC32C": 0, "xEE": 7}
    with pytest.raises(UnknownTypeTLV):
        ProxyTLV.from_raw(tlv(0xEE, b"?"), strict=True)
    assert t.same_attribs(CRC32C=b"\0\0\0\0", xEE=b"?")
    assert not t.same_attribs(CRC32C=b"")
    assert not t.same_attribs(tlv_loc={})  # keys, not attributes
    with pytest.raises(KeyError) as kexc:
        t.same_attribs(_raises=True, ALPN=b"")
    assert kexc.value.args == ("notfound:ALPN",)
    with pytest.raises(ValueError) as vexc:
        t.same_attribs(_raises=True, xEE=b"!")
    assert str(vexc.value) == "mismatch:xEE actual=b'?' expect=b'!'"


# ---------------------------------------------------------------------------
# version 1 (checks in 1.4.6's order: docs/decisions.rst, "PROXY header checks")

V1_VALID = [
    (b"PROXY TCP4 198.51.100.7 203.0.113.25 40000 25\r\n",
     AF.INET, "198.51.100.7", "203.0.113.25", 40000, 25),
    (b"PROXY TCP6 2001:db8::7 2001:db8::25 40000 25\r\n",
     AF.INET6, "2001:db8::7", "2001:db8::25", 40000, 25),
    (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
     AF.INET, "255.255.255.255", "255.255.255.255", 65535, 65535),
    (b"PROXY TCP4 10.0.0.1 10.0.0.2 0 65535\r\n", AF.INET, "10.0.0.1", "10.0.0.2", 0, 65535),
    (b"PROXY TCP6 2001:db8::0007 ::ffff:192.0.2.1 1 2\r\n",
     AF.INET6, "2001:db8::7", "::ffff:192.0.2.1", 1, 2),
    (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
     b" 65535 65535\r\n", AF.INET6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
     "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535, 65535),
]


@pytest.mark.parametrize("raw, family, src, dst, sport, dport", V1_VALID)
def test_v1_valid(raw: bytes, family: AF, src: str, dst: str, sport: int, dport: int) -> None:
    consumed, data = parse_proxy_header(raw + b"NOOP\r\n")
    assert consumed == len(raw)
    assert data is not None and data.valid and data.error == ""
    assert data.family is family and data.protocol is PROTO.STREAM
    assert data.src_addr == ipaddress.ip_address(src)
    assert data.dst_addr == ipaddress.ip_address(dst)
    assert type(data.src_addr) is type(ipaddress.ip_address(dst))
    assert (data.src_port, data.dst_port) == (sport, dport)
    assert data.version == 1 and data.command is None
    assert data.whole_raw == raw and type(data.whole_raw) is bytearray
    assert data.rest == b"" and data.tlv_start is None and data.tlv is None


@pytest.mark.parametrize("raw, rest", [
    (b"PROXY UNKNOWN\r\n", b""),
    (b"PROXY UNKNOWN \r\n", b" "),
    (b"PROXY UNKNOWN foo bar\r\n", b" foo bar"),
    (b"PROXY UNKNOWN 1.2.3.4 not-checked x y z\r\n", b" 1.2.3.4 not-checked x y z"),
])
def test_v1_unknown(raw: bytes, rest: bytes) -> None:
    data = final(raw)
    assert data.valid
    assert data.family is AF.UNSPEC and data.protocol is PROTO.UNSPEC
    assert data.rest == rest and data.src_addr is None and data.src_port is None


def test_v1_length_limit_is_inclusive() -> None:
    base = b"PROXY UNKNOWN "
    ok = base + b"x" * (107 - len(base) - 2) + b"\r\n"
    assert len(ok) == 107
    assert parse_proxy_header(ok)[1] == final(ok) and final(ok).valid
    too_long = base + b"x" * (108 - len(base) - 2) + b"\r\n"
    assert final(too_long).error == "PROXYv1 header too long"
    # Rejected after 107 bytes without LF, without waiting for the rest.
    consumed, data = parse_proxy_header(b"PROXY " + b"1" * 101)
    assert consumed == 107 and data is not None
    assert data.error == "PROXYv1 header too long" and data.version == 1
    assert parse_proxy_header(b"PROXY " + b"1" * 100) == (0, None)


A4 = b"1.2.3.4 5.6.7.8"
A6 = b"::1 ::2"

V1_ERRORS = [
    (b"PROXY TCP4 " + A4 + b" 1 2\n", "PROXYv1 malformed"),
    (b"PROXY TCP4 " + A4 + b" 1 2\r\r\n", "PROXYv1 port malformed"),
    (b"PROXYTCP4 " + A4 + b" 1 2\r\n", "PROXYv1 wrong signature"),
    (b"PROXY\tTCP4 " + A4 + b" 1 2\r\n", "PROXYv1 wrong signature"),
    (b"PROXY\r\n", "PROXYv1 unrecognized family"),
    (b"PROXY \r\n", "PROXYv1 unrecognized family"),
    (b"PROXY  TCP4 " + A4 + b" 1 2\r\n", "PROXYv1 unrecognized family"),
    (b"PROXY TCP " + A4 + b" 1 2\r\n", "PROXYv1 unrecognized family"),
    (b"PROXY TCP5 " + A4 + b" 1 2\r\n", "PROXYv1 unrecognized family"),
    (b"PROXY unknown\r\n", "PROXYv1 unrecognized family"),
    (b"PROXY UDP4 " + A4 + b" 1 2\r\n", "PROXYv1 unrecognized protocol"),
    (b"PROXY TCPX4 " + A4 + b" 1 2\r\n", "PROXYv1 unrecognized protocol"),
    (b"PROXY TCP_ANYTHING_6 " + A6 + b" 1 2\r\n", "PROXYv1 unrecognized protocol"),
    (b"PROXY tcp4 " + A4 + b" 1 2\r\n", "PROXYv1 unrecognized protocol"),
    (b"PROXY 4 " + A4 + b" 1 2\r\n", "PROXYv1 unrecognized protocol"),
    (b"PROXY TCP4\r\n", "PROXYv1 address malformed"),
    (b"PROXY TCP4 1.2.3.4\r\n", "PROXYv1 address malformed"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "PROXYv1 address malformed"),
    (b"PROXY TCP4 192.168.01.1 5.6.7.8 1 2\r\n", "PROXYv1 address malformed"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.256 1 2\r\n", "PROXYv1 address malformed"),
    (b"PROXY TCP6 fe80::1%eth0 ::2 1 2\r\n", "PROXYv1 address malformed"),
    (b"PROXY TCP4 1.2.3.4 localhost 1 2\r\n", "PROXYv1 address malformed"),
    (b"PROXY TCP4 ::1 bad 1 2\r\n", "PROXYv1 address malformed"),  # step 7 before 8
    (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", "PROXYv1 address not IPv4"),
    (b"PROXY TCP4 ::ffff:1.2.3.4 5.6.7.8 1 2\r\n", "PROXYv1 address not IPv4"),
    (b"PROXY TCP6 ::1 1.2.3.4 1 2\r\n", "PROXYv1 address not IPv6"),
    (b"PROXY TCP4 " + A4 + b"\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 " + A4 + b" 1\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 " + A4 + b" 0443 25\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 " + A4 + b" 00 25\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 " + A4 + b"  1 2\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 " + A4 + b" 2_5 25\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 " + A4 + b" 25 2\t\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 " + A4 + b" +25 25\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 " + A4 + b" 25 -1\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 " + A4 + b" 123456 25\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 " + A4 + b" \xd9\xa1 25\r\n", "PROXYv1 port malformed"),  # Arabic-Indic 1
    (b"PROXY TCP4 " + A4 + b" 65536 25\r\n", "PROXYv1 src port out of bounds"),
    (b"PROXY TCP4 " + A4 + b" 99999 99999\r\n", "PROXYv1 src port out of bounds"),
    (b"PROXY TCP4 " + A4 + b" 25 65536\r\n", "PROXYv1 dst port out of bounds"),
    (b"PROXY TCP4 " + A4 + b" 1 2 \r\n", "PROXYv1 unrecognized extraneous data"),
    (b"PROXY TCP4 " + A4 + b" 1 2 3\r\n", "PROXYv1 unrecognized extraneous data"),
]


@pytest.mark.parametrize("raw, error", V1_ERRORS)
def test_v1_errors(raw: bytes, error: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mail.debug"):
        consumed, data = parse_proxy_header(raw + b"more")
    assert data is not None and not data.valid and not data
    assert data.error == error and data.version == 1
    assert consumed == len(raw) and data.whole_raw == raw
    assert [r.getMessage() for r in caplog.records] == [f"PROXY error: {error}"]


def test_v1_partial_fields_are_kept() -> None:
    data = final(b"PROXY TCP4 " + A4 + b" 25 x\r\n")
    assert (data.family, data.protocol, data.src_port, data.dst_port) == (
        AF.INET, PROTO.STREAM, 25, None)
    assert data.src_addr == ipaddress.IPv4Address("1.2.3.4")
    data = final(b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n")
    assert (data.family, data.protocol, data.src_addr) == (AF.INET6, PROTO.STREAM, None)


# ---------------------------------------------------------------------------
# version 2 (checks in 1.4.6's order too)


@pytest.mark.parametrize("cmd", [0, 1])
@pytest.mark.parametrize("proto", [1, 2])
def test_v2_inet(cmd: int, proto: int) -> None:
    raw = v2(inet(), cmd=cmd, proto=proto)
    consumed, data = parse_proxy_header(raw + b"EHLO x\r\n")
    assert consumed == len(raw) == 28
    assert data is not None and data.valid
    assert data.same_attribs(_raises=True, version=2, command=cmd, family=AF.INET,
                             protocol=proto, src_port=40000, dst_port=25,
                             src_addr=ipaddress.IPv4Address("198.51.100.7"),
                             dst_addr=ipaddress.IPv4Address("203.0.113.25"),
                             rest=b"", tlv_start=None, error="")
    for value in (data.command, data.family, data.protocol):
        assert type(value) is int  # plain ints for v2 (QUIRK kept)
    assert data.whole_raw == raw and type(data.rest) is bytearray


def test_v2_inet6_with_tlvs() -> None:
    tlvs = tlv(0x01, b"smtp") + tlv(0x02, b"mx.example")
    raw = v2(inet("2001:db8::7", "2001:db8::25", 1, 587) + tlvs, fam=2)
    data = final(raw)
    assert data.valid and data.tlv_start == 52
    assert data.src_addr == ipaddress.IPv6Address("2001:db8::7")
    assert (data.src_port, data.dst_port) == (1, 587)
    assert data.rest == tlvs
    assert data.tlv == {"ALPN": b"smtp", "AUTHORITY": b"mx.example"}
    assert data.tlv is not None and data.tlv.AUTHORITY == b"mx.example"
    at = data.tlv_start + data.tlv.tlv_loc["AUTHORITY"]
    assert data.whole_raw[at:at + 13] == tlv(0x02, b"mx.example")


def test_v2_unix() -> None:
    src = b"/run/client.sock".ljust(108, b"\0")
    dst = b"/run/smtp.sock".ljust(108, b"\0")
    data = final(v2(src + dst + tlv(0x04, b""), fam=3, proto=1))
    assert data.valid and data.family == AF.UNIX
    assert data.src_addr == src and data.dst_addr == dst
    assert isinstance(data.src_addr, bytearray) and len(data.src_addr) == 108
    assert data.src_port is None and data.dst_port is None
    assert data.tlv_start == 232 and data.tlv == {"NOOP": b""}
    assert final(v2(src + dst, fam=3, proto=2)).valid


@pytest.mark.parametrize("fam, proto", [(0, 0), (0, 1), (1, 0), (2, 0), (3, 0), (0, 2)])
def test_v2_unspec_keeps_whole_tail(fam: int, proto: int) -> None:
    tail = tlv(0x03, b"\0\0\0\0") + b"\x00\x00\x00\x00"  # not even addresses
    data = final(v2(tail, cmd=0, fam=fam, proto=proto))
    assert data.valid and data.rest == tail and data.tlv_start is None
    assert data.src_addr is None and data.src_port is None
    assert data.same_attribs(command=V2_CMD.LOCAL, family=fam, protocol=proto)
    assert final(v2(cmd=0, fam=0, proto=0)).valid  # LOCAL without anything


def test_v2_local_still_parses_addresses() -> None:
    data = final(v2(inet(), cmd=V2_CMD.LOCAL))
    assert data.valid and data.command == 0 and data.src_port == 40000


def test_v2_largest_header() -> None:
    body = inet() + tlv(0x04, b"\0" * (65535 - 12 - 3))
    raw = v2(body)
    assert len(raw) == 16 + 65535
    consumed, data = parse_proxy_header(raw + b"x")
    assert consumed == len(raw) and data is not None and data.valid
    assert data.tlv is not None and len(data.tlv.NOOP) == 65520


@pytest.mark.parametrize("raw, error, consumed", [
    (v2(inet(), ver=1), "PROXYv2 illegal version", 13),
    (v2(inet(), ver=3), "PROXYv2 illegal version", 13),
    (v2(inet(), cmd=2), "PROXYv2 unsupported command", 13),
    (v2(inet(), cmd=15), "PROXYv2 unsupported command", 13),
    (v2(inet(), fam=4), "PROXYv2 unsupported family", 14),
    (v2(inet(), proto=3), "PROXYv2 unsupported protocol", 14),
    (b"\r\n\r\n\x00\r\nQUiT\n" + b"\x21\x11\x00\x00", "PROXYv2 wrong signature", 10),
    (v2(inet()[:11]), "PROXYv2 truncated address", 27),
    (v2(inet("::1", "::2")[:35], fam=2), "PROXYv2 truncated address", 51),
    (v2(b"\0" * 215, fam=3), "PROXYv2 truncated address", 231),
])
def test_v2_errors(raw: bytes, error: str, consumed: int,
                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mail.debug"):
        result = parse_proxy_header(raw)
    assert result[0] == consumed
    data = result[1]
    assert data is not None and not data.valid
    assert data.error == error and data.version == 2
    assert [r.getMessage() for r in caplog.records] == [f"PROXY error: {error}"]
    # whole_raw is only filled once the tail was read.
    assert data.whole_raw == (raw if error.endswith("address") else b"")


def test_v2_rejected_before_the_preamble_is_complete() -> None:
    assert parse_proxy_header(V2_SIGNATURE + b"\x11")[1] is not None
    assert parse_proxy_header(V2_SIGNATURE + b"\x21\x41")[1] is not None
    _, data = parse_proxy_header(V2_SIGNATURE[:7] + b"X")
    assert data is not None and data.error == "PROXYv2 wrong signature"


@pytest.mark.parametrize("buf", [
    b"E", b"EHLO x\r\n", b"\r\n\r\n\x01", b"PROXz", b"\x00", b"QUIT\n"])
def test_unrecognized_signature(buf: bytes) -> None:
    _, data = parse_proxy_header(buf)
    assert data is not None and data.version is None and not data.valid
    assert data.error == "PROXY unrecognized signature" and data.whole_raw == b""


# ---------------------------------------------------------------------------
# incomplete input and end of stream


@pytest.mark.parametrize("buf, need, eof_error", [
    (b"", 15, "0 bytes read on a total of 5 expected bytes"),
    (b"PRO", 12, "3 bytes read on a total of 5 expected bytes"),
    (b"\r\n", 13, "2 bytes read on a total of 5 expected bytes"),
    (b"PROXY", 10, "0 bytes read on a total of undefined expected bytes"),
    (b"PROXY TCP4 1.2.3.4", 2, "13 bytes read on a total of undefined expected bytes"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", 1,
     "26 bytes read on a total of undefined expected bytes"),
    (b"PROXY " + b"x" * 100, 1, "101 bytes read on a total of undefined expected bytes"),
    (V2_SIGNATURE[:5], 11, "Connection lost while waiting for signature"),
    (V2_SIGNATURE, 4, "Connection lost while waiting for header"),
    (V2_SIGNATURE + b"\x21\x11\x00", 1, "Connection lost while waiting for header"),
    (v2(length=12), 12, "Connection lost while waiting for tail part"),
    (v2(length=65535) + b"x" * 65534, 1, "Connection lost while waiting for tail part"),
])
def test_incomplete(buf: bytes, need: int, eof_error: str,
                    caplog: pytest.LogCaptureFixture) -> None:
    assert parse_proxy_header(buf) == (0, None)
    assert scan_proxy_header(buf) == (0, None, need)
    with caplog.at_level(logging.WARNING, logger="mail.debug"):
        consumed, data = parse_proxy_header(buf, eof=True)
    assert data is not None and not data.valid and data.version is None
    assert data.error == f"PROXY exception: {eof_error}"
    assert [r.getMessage() for r in caplog.records] == [data.error]  # no "PROXY error:"
    assert consumed == 0


def test_parse_accepts_bytearray_and_never_copies_state() -> None:
    raw = bytearray(v2(inet()) + b"rest")
    assert parse_proxy_header(raw) == parse_proxy_header(bytes(raw))
    assert parse_proxy_header(raw)[0] == 28


# ---------------------------------------------------------------------------
# CRC32C (never checked by the library, verifiable by a hook)


def test_crc32c_helper_and_verification() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    body = inet() + tlv(0x03, b"\0\0\0\0") + tlv(0x02, b"mx")
    raw = bytearray(v2(body))
    raw[31:35] = crc32c(raw).to_bytes(4, "big")
    data = final(bytes(raw))
    assert crc_ok(data)
    raw[-1] ^= 1
    tampered = final(bytes(raw))
    assert tampered.valid and not crc_ok(tampered)  # the library does not check it


# ---------------------------------------------------------------------------
# get_proxy over a StreamReader and over real sockets


@pytest.mark.parametrize("raw", [v[0] for v in V1_VALID] + [
    b"PROXY UNKNOWN x\r\n", v2(inet() + tlv(0x02, b"mx")), v2(cmd=0, fam=0, proto=0)])
def test_get_proxy_leaves_the_rest(raw: bytes) -> None:
    data, left = run(via_reader, [raw + b"NOOP\r\nQUIT\r\n"])
    assert data.valid and data == final(raw)
    assert left == b"NOOP\r\nQUIT\r\n"


@pytest.mark.parametrize("raw", [r for r, _ in V1_ERRORS[:8]] + [
    b"", b"PRO", b"PROXY TCP4", b"EHLO x\r\n", v2(inet(), ver=1), v2(length=40), V2_SIGNATURE])
def test_get_proxy_matches_pure_parser(raw: bytes) -> None:
    data, _ = run(via_reader, [raw])
    assert not data.valid and data == final(raw)


def test_get_proxy_byte_by_byte() -> None:
    raw = v2(inet() + tlv(0x05, b"abc"))
    data, left = run(via_reader, [bytes([b]) for b in raw + b"X"])
    assert data == final(raw) and data.valid and left == b"X"


def test_get_proxy_reader_failure_is_a_result(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        async def read(self, n: int = -1) -> bytes:
            raise ConnectionResetError("reset by peer")

        async def readexactly(self, n: int) -> bytes:
            raise AssertionError("not used")

        async def readuntil(self, separator: bytes = b"\n") -> bytes:
            raise AssertionError("not used")

    with caplog.at_level(logging.WARNING, logger="mail.debug"):
        data = run(get_proxy, Broken())
    assert data.version is None and data.error == "PROXY exception: reset by peer"
    assert caplog.records[-1].getMessage() == "PROXY exception: reset by peer"


def test_get_proxy_cancellation_propagates() -> None:
    async def scenario() -> bool:
        reader = asyncio.StreamReader()
        reader.feed_data(b"PROXY TCP4")
        task = asyncio.ensure_future(get_proxy(reader))
        await asyncio.sleep(0)  # let it block on the reader
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    assert run(scenario)


def test_socket_header_and_command_in_one_packet() -> None:
    raw = b"PROXY TCP4 198.51.100.7 203.0.113.25 40000 25\r\n"
    data, left = run(via_socket, [raw + b"NOOP\r\n"])
    assert data.valid and data.src_port == 40000 and left == b"NOOP\r\n"


def test_socket_trickled_v2() -> None:
    raw = v2(inet("2001:db8::1", "2001:db8::2") + tlv(0x01, b"smtp"), fam=2)
    data, left = run(via_socket, [raw[:3], raw[3:14], raw[14:17], raw[17:], b"DATA"])
    assert data == final(raw) and data.tlv == {"ALPN": b"smtp"} and left == b"DATA"


@pytest.mark.parametrize("chunks, error", [
    ([b"PROXY " + b"9" * 101], "PROXYv1 header too long"),
    ([b"PROXY " + b"9" * 60, b"9" * 60], "PROXYv1 header too long"),
    ([V2_SIGNATURE + b"\x13"], "PROXYv2 illegal version"),
    ([b"GET / HTTP/1.1"], "PROXY unrecognized signature"),
    ([b"\r\n\r\n\x00\r\nQUIT\r"], "PROXYv2 wrong signature"),
])
def test_socket_rejects_without_waiting_for_more(chunks: list[bytes], error: str) -> None:
    # The client keeps the connection open: get_proxy must decide on what it has.
    data, _ = run(via_socket, chunks, False)
    assert data.error == error


def test_socket_peer_closes_early() -> None:
    data, left = run(via_socket, [b"PROXY TCP4 1.2"])
    assert data.error == "PROXY exception: 9 bytes read on a total of undefined expected bytes"
    data, _ = run(via_socket, [])
    assert data.error == "PROXY exception: 0 bytes read on a total of 5 expected bytes"


# A v1 line cut by the end of the stream: get_proxy reads the line with the
# reader's readuntil(), so that method decides (CHANGES.rst, PROXY protocol).
# StreamReader raises IncompleteReadError: "PROXY exception: ..." as with
# 1.4.6; a reader that returns what it has hands over a line without CRLF,
# which the v1 rules call "PROXYv1 malformed".

CUT_V1 = [
    b"PROXY",
    b"PROXY ",
    b"PROXY UNKNOWN",
    b"PROXY TCP4 198.51.100.7",
    b"PROXY TCP4 198.51.100.7 203.0.113.25 40000 25",
    b"PROXY TCP4 198.51.100.7 203.0.113.25 40000 25\r",
    b"PROXY " + b"1" * 100,  # one byte short of "too long"
]


@pytest.mark.parametrize("raw", CUT_V1)
def test_cut_v1_line_when_readuntil_returns_what_it_has(
        raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mail.debug"):
        for data in (run(get_proxy, BytesReader(raw)),
                     run(via_reader, [raw], True, ReturnsWhatItHas)[0]):
            assert not data.valid and data.error == "PROXYv1 malformed"
            assert data.version == 1 and data.whole_raw == raw
    assert [r.getMessage() for r in caplog.records] == ["PROXY error: PROXYv1 malformed"] * 2


@pytest.mark.parametrize("raw", CUT_V1)
def test_cut_v1_line_when_readuntil_raises(raw: bytes) -> None:
    data, _ = run(via_reader, [raw])
    assert data.version is None and data.error == (
        f"PROXY exception: {len(raw) - 5} bytes read on a total of undefined expected bytes")


def test_socket_peer_cuts_v1_line_reader_returns_what_it_has() -> None:
    raw = b"PROXY TCP4 198.51.100.7 203.0.113.25 40000"
    data, left = run(via_socket, [raw], True, ReturnsWhatItHas)
    assert data.error == "PROXYv1 malformed" and data.whole_raw == raw and left == b""


@pytest.mark.parametrize("raw", [
    b"", b"PRO", b"\r\n\r", V2_SIGNATURE, v2(inet())[:20], v2(length=40)])
def test_other_cuts_do_not_depend_on_readuntil(raw: bytes) -> None:
    # Only the v1 line is read with readuntil(); the rest reads with read().
    expected, _ = run(via_reader, [raw])
    assert expected.error.startswith("PROXY exception: ")
    assert run(via_reader, [raw], True, ReturnsWhatItHas)[0] == expected
    assert run(get_proxy, BytesReader(raw)) == expected


@pytest.mark.parametrize("raw", [v[0] for v in V1_VALID[:3]] + [r for r, _ in V1_ERRORS[:4]])
def test_complete_v1_line_does_not_depend_on_readuntil(raw: bytes) -> None:
    data, left = run(via_reader, [raw + b"NOOP\r\n"], True, ReturnsWhatItHas)
    assert data == final(raw) and left == b"NOOP\r\n"
    assert run(get_proxy, BytesReader(raw + b"NOOP\r\n")) == final(raw)


# ---------------------------------------------------------------------------
# property tests: arbitrary, truncated and chunked input

PROPS = settings(max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


def _check_result(buf: bytes, consumed: int, data: ProxyData | None, eof: bool) -> None:
    if data is None:
        assert not eof and consumed == 0
        assert len(buf) < 16 + 65535
        return
    assert isinstance(data, ProxyData) and 0 <= consumed <= len(buf)
    assert isinstance(data.error, str)
    if data.valid:
        assert data.version in (1, 2) and bytes(data.whole_raw) == buf[:consumed]
        assert consumed <= (107 if data.version == 1 else 16 + 65535)
    else:
        assert data.error
    data.tlv  # noqa: B018 - must never raise


near_v1 = st.lists(st.sampled_from([
    b"PROXY", b" ", b"TCP4", b"TCP6", b"UNKNOWN", b"1.2.3.4", b"::1", b"0", b"65535",
    b"25", b"\r\n", b"\r", b"\n", b"0443", b"x", b"255.255.255.255", b"2001:db8::1"]),
    max_size=14).map(b"".join)
near_v2 = st.builds(
    lambda ver_cmd, fam_proto, body, length, cut: (
        V2_SIGNATURE + bytes([ver_cmd, fam_proto])
        + struct.pack("!H", length if length is not None else len(body)) + body)[:cut],
    st.sampled_from([0x20, 0x21, 0x22, 0x11]), st.sampled_from(
        [0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32, 0x13, 0x41]),
    st.binary(max_size=300), st.none() | st.integers(0, 400), st.integers(0, 400))
any_header = st.one_of(st.binary(max_size=200), near_v1, near_v2,
                       st.builds(bytes.__add__, near_v1, st.binary(max_size=20)))


@PROPS
@given(any_header)
def test_prop_parser_always_clean(buf: bytes) -> None:
    for eof in (False, True):
        consumed, data = parse_proxy_header(buf, eof=eof)
        _check_result(buf, consumed, data, eof)
    scan = scan_proxy_header(buf)
    assert (scan.need >= 1) if scan.data is None else (scan.need == 0)


@PROPS
@given(any_header, st.data())
def test_prop_decisions_are_stable(buf: bytes, draw: st.DataObject) -> None:
    """Once a prefix is judged, more bytes never change the verdict."""
    cut = draw.draw(st.integers(0, len(buf)))
    consumed, data = parse_proxy_header(buf[:cut])
    if data is not None:
        assert parse_proxy_header(buf) == (consumed, data)


@PROPS
@given(any_header, st.lists(st.integers(1, 40), max_size=30))
def test_prop_get_proxy_equals_parser(buf: bytes, sizes: list[int]) -> None:
    chunks, pos = [], 0
    for size in sizes:
        chunks.append(buf[pos:pos + size])
        pos += size
    chunks.append(buf[pos:])
    data, left = run(via_reader, chunks)
    consumed, expected = parse_proxy_header(buf, eof=True)
    assert data == expected
    if data.valid:
        assert left == buf[consumed:]  # nothing past the header was taken


@PROPS
@given(any_header)
def test_prop_reader_returning_what_it_has(buf: bytes) -> None:
    """Such a reader changes one verdict only: a v1 line cut by the end of the
    stream is "PROXYv1 malformed" rather than the IncompleteReadError text."""
    strict, _ = run(via_reader, [buf])
    for lenient in (run(via_reader, [buf], True, ReturnsWhatItHas)[0],
                    run(get_proxy, BytesReader(buf))):
        if strict.error.endswith(" bytes read on a total of undefined expected bytes"):
            assert lenient.error == "PROXYv1 malformed"
            assert lenient.version == 1 and lenient.whole_raw == buf
        else:
            assert lenient == strict


def exploded6(address: Any) -> bytes:
    """Eight 4-digit groups, whatever the address: since Python 3.13,
    ``IPv6Address.exploded`` writes an IPv4-mapped address in dotted form,
    which can make a valid-looking v1 line longer than the 107-byte limit."""
    packed = address.packed
    return b":".join(packed[i:i + 2].hex().encode() for i in range(0, 16, 2))


v1_valid = st.builds(
    lambda six, a, b, p, q: (b"PROXY TCP%d %s %s %d %d\r\n" % (
        6 if six else 4, str(a).encode(), str(b).encode(), p, q), a, b, p, q),
    st.just(False), st.ip_addresses(v=4), st.ip_addresses(v=4),
    st.integers(0, 65535), st.integers(0, 65535)) | st.builds(
    lambda six, a, b, p, q: (b"PROXY TCP%d %s %s %d %d\r\n" % (
        6 if six else 4, exploded6(a) if p % 2 else str(a).encode(),
        str(b).encode(), p, q), a, b, p, q),
    st.just(True), st.ip_addresses(v=6), st.ip_addresses(v=6),
    st.integers(0, 65535), st.integers(0, 65535))

tlv_items = st.lists(st.tuples(
    st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x05, 0x30, 0xE0, 0xEE]), st.binary(max_size=40)),
    max_size=6)


@st.composite
def v2_valid(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[int, bytes]]]:
    fam = draw(st.sampled_from([1, 2, 3]))
    if fam == 3:
        block = draw(st.binary(min_size=216, max_size=216))
    else:
        addrs = st.ip_addresses(v=4) if fam == 1 else st.ip_addresses(v=6)
        block = inet(str(draw(addrs)), str(draw(addrs)),
                     draw(st.integers(0, 65535)), draw(st.integers(0, 65535)))
    items = draw(tlv_items)
    body = block + b"".join(tlv(t, v) for t, v in items)
    return v2(body, cmd=draw(st.sampled_from([0, 1])), fam=fam,
              proto=draw(st.sampled_from([1, 2]))), len(block), items


def _never_over_reads(raw: bytes) -> None:
    for cut in range(len(raw)):
        scan = scan_proxy_header(raw[:cut])
        assert scan.data is None and 1 <= scan.need <= len(raw) - cut


@PROPS
@given(v1_valid, st.binary(max_size=10))
def test_prop_v1_roundtrip(case: tuple[bytes, Any, Any, int, int], extra: bytes) -> None:
    raw, src, dst, sport, dport = case
    consumed, data = parse_proxy_header(raw + extra)
    assert consumed == len(raw) and data is not None and data.valid
    assert (data.src_addr, data.dst_addr, data.src_port, data.dst_port) == (
        src, dst, sport, dport)
    _never_over_reads(raw)


@PROPS
@given(v2_valid(), st.binary(max_size=10))
def test_prop_v2_roundtrip(case: tuple[bytes, int, list[tuple[int, bytes]]],
                           extra: bytes) -> None:
    raw, block, items = case
    consumed, data = parse_proxy_header(raw + extra)
    assert consumed == len(raw) and data is not None and data.valid
    if items:
        assert data.tlv_start == 16 + block and data.tlv is not None
        names = {ProxyTLV.PP2_TYPENAME.get(t, f"x{t:02X}") for t, _ in items}
        assert set(data.tlv) == names
        for name, at in data.tlv.tlv_loc.items():
            start = data.tlv_start + at
            length = int.from_bytes(data.whole_raw[start + 1:start + 3], "big")
            assert data.tlv[name] == data.whole_raw[start + 3:start + 3 + length]
    else:
        assert data.tlv_start is None and data.tlv is None
    _never_over_reads(raw)


@PROPS
@given(st.binary(max_size=120) | tlv_items.map(lambda i: b"".join(tlv(t, v) for t, v in i)),
       st.booleans())
def test_prop_tlv_parse_only_raises_documented(raw: bytes, strict: bool) -> None:
    try:
        values, loc = ProxyTLV.parse(raw, partial_ok=True, strict=strict)
    except UnknownTypeTLV:
        assert strict
    else:
        assert set(loc) <= set(values) | {"SSL"}
    try:
        ProxyTLV.from_raw(raw, strict=strict)
    except (MalformedTLV, UnknownTypeTLV):
        pass
    data = ProxyData(version=2)
    data.rest = raw
    assert data.tlv is None or isinstance(data.tlv, ProxyTLV)
