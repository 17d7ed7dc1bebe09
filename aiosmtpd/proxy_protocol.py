"""PROXY protocol (HAProxy) v1 and v2 header parsing.

A load balancer that speaks the PROXY protocol sends one header at the start of
every connection, before any SMTP traffic, telling the server who the real
client is.  This module turns such a header into a :class:`ProxyData`.

The parser is a pure function of the bytes received so far; nothing here does
I/O.  Two entry points sit on top of it:

``parse_proxy_header(buf, *, eof=False) -> tuple[int, ProxyData | None]``
    For code that keeps its own receive buffer (``buf``: ``bytes`` or
    ``bytearray`` holding everything received on the connection so far).
    The result is one of:

    * ``(0, None)`` - *need more data*: ``buf`` is a proper prefix of a header
      that may still turn out valid.  Append newly received bytes and call
      again with the whole buffer (earlier calls keep no state).  Never
      returned when ``eof=True``.
    * ``(n, data)`` with ``data.valid`` - a complete, valid header occupies
      exactly ``buf[:n]``; ``buf[n:]`` was not looked at and belongs to the
      SMTP session.
    * ``(n, data)`` with ``not data.valid`` - the header is invalid (or, with
      ``eof=True``, the stream ended inside it); ``data.error`` holds one of
      1.4.6's error texts (docs/proxyprotocol.rst lists them), and a WARNING
      was logged on ``mail.debug``.
      ``n`` is informational only (how many bytes were judged); the
      connection is to be closed without a reply.

    Pass ``eof=True`` once the peer has closed its side: an incomplete header
    then yields an invalid ``ProxyData(version=None)`` whose error is
    ``"PROXY exception: ..."``, as :func:`get_proxy` reports it.
    Invalid input is rejected as soon as the bytes seen prove it invalid; a
    v1 header gives up after 107 bytes without LF, a v2 header can never be
    longer than 16 + 65535 bytes.  The function never raises.

``scan_proxy_header(buf, *, eof=False) -> ProxyScan``
    The same, plus ``need``: when the result is *need more data*, the number
    of further bytes that any valid header must still contain.  Reading at
    most that many bytes can never swallow bytes that follow the header.

:func:`get_proxy` is the thin coroutine over an :class:`AsyncReader` (such
as ``asyncio.StreamReader``) that 1.4.6 offers: it reads at most ``need``
bytes at a time, so it never reads past the header.  When the stream ends
inside a v1 line it asks the reader's ``readuntil()``, whose answer (raise,
or return the cut line) decides the error, as in 1.4.6.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
from enum import IntEnum
from functools import partial
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, ClassVar, NamedTuple, Protocol, Union

import attrs

__all__ = [
    "struct",
    "partial",
    "IPv4Address",
    "IPv6Address",
    "V2_SIGNATURE",
    "V2_CMD",
    "V2_VALID_CMDS",
    "V2_VALID_FAMS",
    "V2_VALID_PROS",
    "V2_PARSE_ADDR_FAMPRO",
    "MalformedTLV",
    "UnknownTypeTLV",
    "AsyncReader",
    "ProxyTLV",
    "ProxyData",
    "get_proxy",
]

log = logging.getLogger("mail.debug")

EndpointAddress = Union[IPv4Address, IPv6Address, str, bytes, bytearray]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class V2_CMD(IntEnum):
    LOCAL = 0
    PROXY = 1


class AF(IntEnum):
    UNSPEC = 0
    INET = 1
    INET6 = 2
    UNIX = 3


class PROTO(IntEnum):
    UNSPEC = 0
    STREAM = 1
    DGRAM = 2


V2_VALID_CMDS = {int(m) for m in V2_CMD}
V2_VALID_FAMS = {int(m) for m in AF}
V2_VALID_PROS = {int(m) for m in PROTO}
V2_PARSE_ADDR_FAMPRO = {
    (fam << 4) | pro
    for fam in (AF.INET, AF.INET6, AF.UNIX)
    for pro in (PROTO.STREAM, PROTO.DGRAM)
}

PP2_TYPENAME: dict[int, str] = {
    0x01: "ALPN",
    0x02: "AUTHORITY",
    0x03: "CRC32C",
    0x04: "NOOP",
    0x05: "UNIQUE_ID",
    0x20: "SSL",
    0x21: "SSL_VERSION",
    0x22: "SSL_CN",
    0x23: "SSL_CIPHER",
    0x24: "SSL_SIG_ALG",
    0x25: "SSL_KEY_ALG",
    0x30: "NETNS",
}
_NAME_TO_TYPE = {name: num for num, name in PP2_TYPENAME.items()}
_TLV_SSL = 0x20
# PP2_TYPE_SSL value: client flags (1 byte) + verify result (4 bytes) + sub-TLVs.
_SSL_PREFIX = 5

_V1_MAGIC = b"PROXY"
_V1_MAX = 107  # longest legal v1 header, CRLF included (HAProxy spec)
_V1_MIN = len(b"PROXY UNKNOWN\r\n")
_V2_PREAMBLE = 16
_ADDR_CHARS = re.compile(rb"[0-9a-fA-F.:]+")
_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
# family -> (length of one address, whether ports follow the addresses)
_V2_ADDR_LAYOUT = {AF.INET: (4, True), AF.INET6: (16, True), AF.UNIX: (108, False)}


class MalformedTLV(RuntimeError):
    """A TLV vector's declared length does not fit the data."""


class UnknownTypeTLV(KeyError):
    """A TLV type not in ``PP2_TYPENAME`` was met in strict mode."""


class AsyncReader(Protocol):
    """What :func:`get_proxy` needs from a reader; ``asyncio.StreamReader`` fits."""

    async def read(self, n: int = -1) -> bytes: ...

    async def readexactly(self, n: int) -> bytes: ...

    async def readuntil(self, separator: bytes = b"\n") -> bytes: ...


def _tlv_name(type_num: int) -> str:
    return PP2_TYPENAME.get(type_num) or f"x{type_num:02X}"


def _malformed(type_num: int) -> MalformedTLV:
    return MalformedTLV(f"TLV 0x{type_num:02X} is malformed!")


def _walk_tlvs(data: bytes | bytearray, base: int, values: dict[str, Any],
               loc: dict[str, int], *, strict: bool, in_ssl: bool) -> None:
    """Parse ``data`` as TLVs into ``values``/``loc``; ``base`` is the offset
    of ``data`` inside the TLV area, so every recorded offset is absolute."""
    pos, end = 0, len(data)
    while pos < end:
        type_num = data[pos]
        if end - pos < 3:
            raise _malformed(type_num)
        start = pos + 3
        stop = start + ((data[pos + 1] << 8) | data[pos + 2])
        if stop > end:
            raise _malformed(type_num)
        name = _tlv_name(type_num)
        if strict and type_num not in PP2_TYPENAME:
            raise UnknownTypeTLV(name)
        loc[name] = base + pos
        value = data[start:stop]
        # Sub-TLVs are parsed one level deep only: HAProxy's spec nests nothing
        # inside SSL, and unbounded recursion would let a header crash us.
        if type_num == _TLV_SSL and not in_ssl:
            _parse_ssl(value, base + start, values, loc, strict=strict)
        else:
            values[name] = value
        pos = stop


def _parse_ssl(value: bytes | bytearray, base: int, values: dict[str, Any],
               loc: dict[str, int], *, strict: bool) -> None:
    if len(value) < _SSL_PREFIX:
        values["SSL"] = False
        raise _malformed(_TLV_SSL)
    values["SSL_CLIENT"] = value[0]
    values["SSL_VERIFY"] = int.from_bytes(value[1:_SSL_PREFIX], "big")
    try:
        _walk_tlvs(value[_SSL_PREFIX:], base + _SSL_PREFIX, values, loc,
                   strict=strict, in_ssl=True)
    except MalformedTLV:
        values["SSL"] = False
        raise
    values["SSL"] = True


def _same_attribs(getter: Any, raises: bool, expected: dict[str, Any]) -> bool:
    missing = object()
    for name, want in expected.items():
        have = getter(name, missing)
        if have is missing:
            if raises:
                raise KeyError(f"notfound:{name}")
            return False
        if have != want:
            if raises:
                raise ValueError(f"mismatch:{name} actual={have!r} expect={want!r}")
            return False
    return True


class ProxyTLV(dict[str, Any]):
    """The TLV vectors of a v2 header, by type name; also readable as attributes
    (``tlv.AUTHORITY``; unknown names read as ``None``).

    ``tlv_loc`` maps each name to the offset of its vector from the start of the
    TLV area (``ProxyData.tlv_start`` inside ``ProxyData.whole_raw``).
    """

    __slots__ = ("tlv_loc",)
    PP2_TYPENAME: ClassVar[dict[int, str]] = PP2_TYPENAME

    def __init__(self, *args: Any, _tlv_loc: dict[str, int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tlv_loc = _tlv_loc

    def __getattr__(self, item: str) -> Any:
        if item.startswith("__") and item.endswith("__"):
            # copy/pickle probe for optional dunders; None would break them.
            raise AttributeError(item)
        return self.get(item)

    def same_attribs(self, _raises: bool = False, **kwargs: Any) -> bool:
        return _same_attribs(self.get, _raises, kwargs)

    @classmethod
    def parse(cls, data: bytes | bytearray, partial_ok: bool = True,
              strict: bool = False) -> tuple[dict[str, Any], dict[str, int]]:
        """Return ``(values, tlv_loc)``.  A malformed vector ends parsing: with
        ``partial_ok`` what was parsed before it is returned, otherwise
        :class:`MalformedTLV` is raised.  ``strict`` raises
        :class:`UnknownTypeTLV` for types outside ``PP2_TYPENAME``."""
        values: dict[str, Any] = {}
        loc: dict[str, int] = {}
        try:
            _walk_tlvs(data, 0, values, loc, strict=strict, in_ssl=False)
        except MalformedTLV:
            if not partial_ok:
                raise
        return values, loc

    @classmethod
    def from_raw(cls, raw: bytes | bytearray, strict: bool = False) -> ProxyTLV | None:
        if not raw:
            return None
        values, loc = cls.parse(raw, partial_ok=False, strict=strict)
        return cls(values, _tlv_loc=loc)

    @classmethod
    def name_to_num(cls, name: str) -> int | None:
        return _NAME_TO_TYPE.get(name)


@attrs.define(slots=True, eq=True)
class ProxyData:
    """The outcome of reading one PROXY header.  Truthy iff it is valid."""

    version: int | None = attrs.field(kw_only=True)
    command: int | None = attrs.field(init=False, default=None)
    family: int | None = attrs.field(init=False, default=None)
    protocol: int | None = attrs.field(init=False, default=None)
    src_addr: EndpointAddress | None = attrs.field(init=False, default=None)
    dst_addr: EndpointAddress | None = attrs.field(init=False, default=None)
    src_port: int | None = attrs.field(init=False, default=None)
    dst_port: int | None = attrs.field(init=False, default=None)
    rest: bytes | bytearray = attrs.field(init=False, default=b"")
    whole_raw: bytearray = attrs.field(init=False, factory=bytearray)
    tlv_start: int | None = attrs.field(init=False, default=None)
    error: str = attrs.field(init=False, default="")
    _tlv: ProxyTLV | None = attrs.field(init=False, default=None)

    @property
    def valid(self) -> bool:
        return not self.error and self.version is not None and self.protocol is not None

    def __bool__(self) -> bool:
        return self.valid

    @property
    def tlv(self) -> ProxyTLV | None:
        if self._tlv is None:
            try:
                self._tlv = ProxyTLV.from_raw(self.rest)
            except Exception:
                pass  # None for anything that is not TLV data (CHANGES.rst: never raises)
        return self._tlv

    def with_error(self, error_msg: str, log_prefix: bool = True) -> ProxyData:
        if log_prefix:
            log.warning("PROXY error: %s", error_msg)
        else:
            log.warning("%s", error_msg)
        self.error = error_msg
        return self

    def same_attribs(self, _raises: bool = False, **kwargs: Any) -> bool:
        return _same_attribs(lambda name, default: getattr(self, name, default),
                             _raises, kwargs)


# ---------------------------------------------------------------------------
# The pure parser


class ProxyScan(NamedTuple):
    """Result of :func:`scan_proxy_header`.

    ``data is None`` means "need more data": read at most ``need`` (>= 1) bytes
    and scan again.  Otherwise ``need == 0`` and ``consumed`` is the header
    length (valid result) or the number of bytes judged (invalid result).
    """

    consumed: int
    data: ProxyData | None
    need: int


def _exception(text: str) -> ProxyData:
    return ProxyData(version=None).with_error(f"PROXY exception: {text}", log_prefix=False)


def _more(need: int, eof: bool, eof_text: str) -> ProxyScan:
    if eof:
        return ProxyScan(0, _exception(eof_text), 0)
    return ProxyScan(0, None, need)


def _reject(consumed: int, data: ProxyData, error: str) -> ProxyScan:
    return ProxyScan(consumed, data.with_error(error), 0)


def _ok(consumed: int, data: ProxyData) -> ProxyScan:
    return ProxyScan(consumed, data, 0)


def scan_proxy_header(buf: bytes | bytearray, *, eof: bool = False) -> ProxyScan:
    """Judge the bytes received so far; see the module docstring.  Never raises."""
    try:
        return _scan(buf, eof)
    except Exception as exc:  # a parser bug must not take the server down
        log.exception("PROXY parser failure")
        return ProxyScan(len(buf), _exception(str(exc)), 0)


def parse_proxy_header(buf: bytes | bytearray, *,
                       eof: bool = False) -> tuple[int, ProxyData | None]:
    """``(0, None)``: need more data; ``(n, data)``: header judged, valid or
    not (see the module docstring for the exact contract).  Never raises."""
    consumed, data, _ = scan_proxy_header(buf, eof=eof)
    return consumed, data


def _scan(buf: bytes | bytearray, eof: bool) -> ProxyScan:
    have = len(buf)
    head = bytes(buf[:5])
    if head == _V1_MAGIC[:have]:
        if have < 5:
            return _more(_V1_MIN - have, eof,
                         f"{have} bytes read on a total of 5 expected bytes")
        return _scan_v1(buf, eof)
    if head == V2_SIGNATURE[:min(have, 5)]:
        if have < 5:
            return _more(_V1_MIN - have, eof,
                         f"{have} bytes read on a total of 5 expected bytes")
        return _scan_v2(buf, eof)
    return _reject(_mismatch_at(buf, _V1_MAGIC if head[:1] == b"P" else V2_SIGNATURE) + 1,
                   ProxyData(version=None), "PROXY unrecognized signature")


def _mismatch_at(buf: bytes | bytearray, expected: bytes) -> int:
    """Index of the first byte of ``buf`` that differs from ``expected``."""
    return next(i for i, (a, b) in enumerate(zip(buf, expected)) if a != b)


def _scan_v1(buf: bytes | bytearray, eof: bool) -> ProxyScan:
    lf = buf.find(b"\n", len(_V1_MAGIC), _V1_MAX)
    if lf >= 0:
        log.debug("PROXY version 1")
        data = _parse_v1(bytes(buf[:lf + 1]))
        if data.valid:
            log.debug("Got PROXYv1 handshake")
        return ProxyScan(lf + 1, data, 0)
    have = len(buf)
    if have >= _V1_MAX:
        data = ProxyData(version=1)
        data.whole_raw = bytearray(buf[:_V1_MAX])
        return _reject(_V1_MAX, data, "PROXYv1 header too long")
    # A valid header is >= _V1_MIN bytes and ends in CRLF; asking for no more
    # than that minimum guarantees a reader never takes bytes past the LF.
    need = max(_V1_MIN - have, 1 if buf.endswith(b"\r") else 2)
    return _more(min(need, _V1_MAX - have), eof,
                 f"{have - len(_V1_MAGIC)} bytes read on a total of undefined expected bytes")


def _parse_v1(raw: bytes) -> ProxyData:
    """Checks in 1.4.6's order (docs/decisions.rst, "PROXY header checks")."""
    data = ProxyData(version=1)
    data.whole_raw = bytearray(raw)
    line = raw[len(_V1_MAGIC):]
    if not line.endswith(b"\r\n"):
        return data.with_error("PROXYv1 malformed")
    fields = line[:-2].split(b" ")
    if fields[0]:
        return data.with_error("PROXYv1 wrong signature")
    fields.pop(0)
    token: bytes = fields[0] if fields else b""
    if token == b"UNKNOWN":
        data.family = AF.UNSPEC
        data.protocol = PROTO.UNSPEC
        data.rest = line[len(b" UNKNOWN"):-2]
        return data
    if token[-1:] == b"4":
        data.family = AF.INET
    elif token[-1:] == b"6":
        data.family = AF.INET6
    else:
        return data.with_error("PROXYv1 unrecognized family")
    if token[:-1] != b"TCP":
        return data.with_error("PROXYv1 unrecognized protocol")
    data.protocol = PROTO.STREAM

    addrs: list[IPv4Address | IPv6Address] = []
    for field in fields[1:3]:
        if not _ADDR_CHARS.fullmatch(field):
            return data.with_error("PROXYv1 address malformed")
        try:
            addrs.append(ip_address(field.decode("latin-1")))
        except ValueError:
            return data.with_error("PROXYv1 address malformed")
    if len(addrs) < 2:
        return data.with_error("PROXYv1 address malformed")
    if data.family == AF.INET and not all(isinstance(a, IPv4Address) for a in addrs):
        return data.with_error("PROXYv1 address not IPv4")
    if data.family == AF.INET6 and not all(isinstance(a, IPv6Address) for a in addrs):
        return data.with_error("PROXYv1 address not IPv6")
    data.src_addr, data.dst_addr = addrs

    ports = fields[3:5]
    if len(ports) < 1 or not _PORT.fullmatch(ports[0]):
        return data.with_error("PROXYv1 port malformed")
    data.src_port = int(ports[0])
    if len(ports) < 2 or not _PORT.fullmatch(ports[1]):
        return data.with_error("PROXYv1 port malformed")
    data.dst_port = int(ports[1])
    if data.src_port > 0xFFFF:
        return data.with_error("PROXYv1 src port out of bounds")
    if data.dst_port > 0xFFFF:
        return data.with_error("PROXYv1 dst port out of bounds")
    if len(fields) > 5:
        return data.with_error("PROXYv1 unrecognized extraneous data")
    return data


def _scan_v2(buf: bytes | bytearray, eof: bool) -> ProxyScan:
    have = len(buf)
    sig_have = min(have, len(V2_SIGNATURE))
    data = ProxyData(version=2)
    # Each check runs as soon as its byte is there, so garbage is rejected
    # without waiting for a full preamble; the order is 1.4.6's
    # (docs/decisions.rst, "PROXY header checks").
    if buf[:sig_have] != V2_SIGNATURE[:sig_have]:
        return _reject(_mismatch_at(buf, V2_SIGNATURE) + 1, data, "PROXYv2 wrong signature")
    if have < len(V2_SIGNATURE):
        return _more(_V2_PREAMBLE - have, eof, "Connection lost while waiting for signature")
    if have > 12:
        ver_cmd = buf[12]
        if ver_cmd >> 4 != 2:
            return _reject(13, data, "PROXYv2 illegal version")
        data.command = ver_cmd & 0x0F
        if data.command not in V2_VALID_CMDS:
            return _reject(13, data, "PROXYv2 unsupported command")
    if have > 13:
        fam_proto = buf[13]
        data.family = fam_proto >> 4
        if data.family not in V2_VALID_FAMS:
            return _reject(14, data, "PROXYv2 unsupported family")
        data.protocol = fam_proto & 0x0F
        if data.protocol not in V2_VALID_PROS:
            return _reject(14, data, "PROXYv2 unsupported protocol")
    if have < _V2_PREAMBLE:
        return _more(_V2_PREAMBLE - have, eof, "Connection lost while waiting for header")
    total = _V2_PREAMBLE + ((buf[14] << 8) | buf[15])
    if have < total:
        return _more(total - have, eof, "Connection lost while waiting for tail part")
    log.debug("PROXY version 2")
    return _ok(total, _parse_v2_tail(data, bytearray(buf[:total]), buf[13]))


def _parse_v2_tail(data: ProxyData, whole: bytearray, fam_proto: int) -> ProxyData:
    data.whole_raw = whole
    tail = whole[_V2_PREAMBLE:]
    if fam_proto not in V2_PARSE_ADDR_FAMPRO:
        data.rest = tail
        return data
    addr_len, has_ports = _V2_ADDR_LAYOUT[AF(fam_proto >> 4)]
    block = 2 * addr_len + (4 if has_ports else 0)
    if len(tail) < block:
        return data.with_error("PROXYv2 truncated address")
    src, dst = tail[:addr_len], tail[addr_len:2 * addr_len]
    if addr_len == 4:
        data.src_addr, data.dst_addr = IPv4Address(bytes(src)), IPv4Address(bytes(dst))
    elif addr_len == 16:
        data.src_addr, data.dst_addr = IPv6Address(bytes(src)), IPv6Address(bytes(dst))
    else:
        data.src_addr, data.dst_addr = src, dst
    if has_ports:
        data.src_port, data.dst_port = struct.unpack_from("!HH", tail, 2 * addr_len)
    data.rest = tail[block:]
    if data.rest:
        data.tlv_start = _V2_PREAMBLE + block
    return data


# ---------------------------------------------------------------------------
# The asyncio face


async def get_proxy(reader: AsyncReader) -> ProxyData:
    """Read one PROXY header from ``reader`` and return what it says.

    Never reads a byte past the header, and never raises for bad input or a
    lost connection: those give an invalid :class:`ProxyData` (cancellation
    still propagates).
    """
    log.debug("Waiting for PROXY signature")
    buf = bytearray()
    try:
        while True:
            scan = scan_proxy_header(buf)
            if scan.data is not None:
                return scan.data
            chunk = await reader.read(scan.need)
            if not chunk:
                return await _ended(reader, buf)
            buf += chunk
    except Exception as exc:  # reader failures are invalid results too
        return _exception(str(exc))


async def _ended(reader: AsyncReader, buf: bytearray) -> ProxyData:
    """The stream ended inside the header (``read()`` returned nothing).

    Inside a v1 line, the reader's own ``readuntil()`` decides what a line
    cut by the end of the stream is, as it did in 1.4.6 (CHANGES.rst, PROXY
    protocol): a reader that raises (``asyncio.StreamReader`` raises
    ``IncompleteReadError``) gives the ``PROXY exception: ...`` result; a
    reader that returns what it has gives the verdict on those bytes, which
    lack the final CRLF: ``PROXYv1 malformed``.
    """
    if buf.startswith(_V1_MAGIC):
        try:
            buf += await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            buf += exc.partial
        else:
            scan = scan_proxy_header(buf)
            if scan.data is not None:
                return scan.data
            return _parse_v1(bytes(buf))  # no LF: the CRLF check rejects it
    final = scan_proxy_header(buf, eof=True).data
    assert final is not None
    return final
