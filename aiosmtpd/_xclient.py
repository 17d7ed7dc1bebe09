"""XCLIENT, Postfix's SMTP extension, for trusted networks (docs/xclient.rst).

A trusted client (a content filter, a proxy, a test tool) tells the server
who the real client is: ``XCLIENT NAME=mail.example.org ADDR=192.0.2.1``.
The server answers with a fresh ``220`` greeting, as Postfix does, and from
then on the handler sees the client it was told about.

The grammar and the checks are pure and live here (:func:`parse_xclient`,
:func:`xtext_decode`, :func:`trusted_networks`, :func:`address_trusted`);
``smtp_XCLIENT`` and its helpers are methods of ``SMTP`` written here.  XCLIENT is
opt-in (``SMTP(xclient_trusted=[...])``): without it the verb stays an
unrecognised command, as in aiosmtpd 1.4.6.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Union

from aiosmtpd import _session_commands
from aiosmtpd._discovery import without_command
from aiosmtpd._hooks import syntax

if TYPE_CHECKING:  # pragma: no cover
    from aiosmtpd.smtp import SMTP, Session

__all__ = [
    "ATTRIBUTES",
    "TEMPUNAVAIL",
    "UNAVAILABLE",
    "XClient",
    "XClientError",
    "XtextError",
    "address_trusted",
    "parse_xclient",
    "trusted_networks",
    "xtext_decode",
    "xtext_encode",
]

log = logging.getLogger("mail.log")

#: The value a client sends for what it does not know (any case on the wire).
UNAVAILABLE = "[UNAVAILABLE]"
#: NAME only: the client's host name lookup failed temporarily.
TEMPUNAVAIL = "[TEMPUNAVAIL]"

#: The attributes this server understands, in the order EHLO lists them.
ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR", "DESTPORT")
EHLO_LINE = "250-XCLIENT " + " ".join(ATTRIBUTES)

# Postfix's replies (smtpd(8)); the 220 after success is the greeting.
SYNTAX = "501 5.5.4 Syntax: XCLIENT attribute=value..."
IN_TRANSACTION = "503 5.5.1 Error: MAIL transaction in progress"
NOT_AUTHORIZED = "550 5.7.0 Error: insufficient authorization"
_NO_VALUE = "501 5.5.4 Error: attribute=value expected"
_TOO_LONG = "501 5.5.4 Error: attribute value too long"

# The longest attribute value before decoding, as in Postfix.
_MAX_VALUE = 255

Network = Union[IPv4Network, IPv6Network]
#: What ``SMTP(xclient_trusted=...)`` takes (besides ``None``).
TrustedNetworks = Iterable[Union[str, IPv4Network, IPv6Network, IPv4Address, IPv6Address]]


class XClient(NamedTuple):
    """What trusted clients said with ``XCLIENT``: ``session.xclient``.

    Every field is ``None`` when no ``XCLIENT`` command has set it, else a
    checked, normalised :class:`str`, or :data:`UNAVAILABLE` (and, for
    ``name``, :data:`TEMPUNAVAIL`) when the client said it does not know.
    ``name``, ``addr``, ``port``, ``destaddr`` and ``destport`` accumulate
    over the ``XCLIENT`` commands of a connection; ``proto``, ``helo`` and
    ``login`` are those of the last one only (``None`` if it had none), as
    in Postfix.
    """

    #: The client's host name (a syntactically valid DNS name).
    name: Optional[str] = None
    #: The client's IP address: ``"192.0.2.1"`` or ``"2001:db8::1"`` (no ``IPV6:``).
    addr: Optional[str] = None
    #: The client's TCP port, in decimal: ``"40112"``.
    port: Optional[str] = None
    #: ``"SMTP"`` or ``"ESMTP"``.
    proto: Optional[str] = None
    #: The client's HELO/EHLO argument.
    helo: Optional[str] = None
    #: The SASL login name the client authenticated with elsewhere.
    login: Optional[str] = None
    #: The server address the client connected to.
    destaddr: Optional[str] = None
    #: The server port the client connected to, in decimal.
    destport: Optional[str] = None


_LAST_COMMAND_ONLY = {"proto": None, "helo": None, "login": None}


class XClientError(ValueError):
    """An ``XCLIENT`` argument that is refused; :attr:`reply` is the ``501``."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class XtextError(ValueError):
    """Text that is not RFC 3461 ``xtext``."""


# -- xtext (RFC 3461 section 4; RFC 1891 before it) ----------------------------------
#
#   xtext = *( xchar / hexchar )
#   xchar = "!" .. "~" except "+" and "="
#   hexchar = "+" 2HEXDIG   (upper case; lower case accepted on input)

_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*")
_HEXCHAR = re.compile(r"\+([0-9A-Fa-f]{2})")


def xtext_encode(data: bytes) -> str:
    """``data`` as xtext: every byte outside ``!``..``~``, and ``+`` and
    ``=``, as ``+XX`` (upper-case hex)."""
    return "".join(
        chr(b) if 0x21 <= b <= 0x7E and b not in (0x2B, 0x3D) else f"+{b:02X}" for b in data
    )


def xtext_decode(text: str) -> bytes:
    """The bytes ``text`` encodes; :exc:`XtextError` if it is not xtext."""
    if _XTEXT.fullmatch(text) is None:
        raise XtextError(f"not xtext: {text!r}")
    # Only ASCII is left after the check; each +XX becomes the one byte XX.
    return _HEXCHAR.sub(lambda m: chr(int(m[1], 16)), text).encode("latin-1")


# -- Attribute values ----------------------------------------------------------------

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.ASCII)
_NUMERIC = re.compile(r"[0-9.]*", re.ASCII)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}", re.ASCII)
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)


def _shown(text: str) -> str:
    """``text`` safe to echo in a reply: printable ASCII, the rest as ``?``."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _bad(attribute: str, value: str) -> XClientError:
    return XClientError(f"501 5.5.4 Bad {attribute} syntax: {_shown(value)}")


def _hostname(value: str) -> Optional[str]:
    if len(value) > 255 or _NUMERIC.fullmatch(value) or not _HOSTNAME.fullmatch(value):
        return None
    return value


def _address(value: str) -> Optional[str]:
    if value[:5].upper() == "IPV6:":
        rest = value[5:]
        if not rest.isascii() or "%" in rest:
            return None  # no scope ids, no non-ASCII digits
        try:
            return str(IPv6Address(rest))
        except ValueError:
            return None
    return value if _IPV4.fullmatch(value) else None


def _port(value: str) -> Optional[str]:
    if not _PORT.fullmatch(value) or int(value) > 65535:
        return None
    return str(int(value))


def _proto(value: str) -> Optional[str]:
    upper = value.upper()
    return upper if upper in ("SMTP", "ESMTP") else None


def _text(value: str) -> Optional[str]:
    return value  # already printable and at most 255 characters


_CHECKS = {
    "NAME": _hostname,
    "ADDR": _address,
    "PORT": _port,
    "PROTO": _proto,
    "HELO": _text,
    "LOGIN": _text,
    "DESTADDR": _address,
    "DESTPORT": _port,
}


def _value(attribute: str, raw: str) -> str:
    """The checked value of one attribute (raw: xtext as sent)."""
    try:
        value = xtext_decode(raw).decode("utf-8")
    except XtextError:
        raise _bad(attribute, raw) from None
    except UnicodeDecodeError:
        raise _bad(attribute, raw) from None
    if not value.isprintable():
        raise _bad(attribute, value)
    special = value.upper()
    if special == UNAVAILABLE and attribute != "PROTO":
        return UNAVAILABLE
    if special == TEMPUNAVAIL and attribute == "NAME":
        return TEMPUNAVAIL
    checked = _CHECKS[attribute](value)
    if checked is None:
        raise _bad(attribute, value)
    return checked


def parse_xclient(arg: Optional[str]) -> dict[str, str]:
    """The attributes of ``XCLIENT <arg>``: ``{"name": ..., "addr": ...}``
    (the lower-case names of the :class:`XClient` fields), checked and
    normalised.  Anything wrong raises :exc:`XClientError` with Postfix's
    ``501`` reply; nothing else is raised, whatever ``arg`` holds.  An
    attribute given twice counts with its last value.
    """
    tokens = [token for token in (arg or "").split(" ") if token]
    if not tokens:
        raise XClientError(SYNTAX)
    attributes: dict[str, str] = {}
    for token in tokens:
        name, equals, raw = token.partition("=")
        if not equals or not raw:
            raise XClientError(_NO_VALUE)
        if len(raw) > _MAX_VALUE:
            raise XClientError(_TOO_LONG)
        # isascii(): "DEſTADDR".upper() == "DESTADDR".
        attribute = name.upper() if name.isascii() else ""
        if attribute not in _CHECKS:
            raise XClientError(f"501 5.5.4 Bad XCLIENT attribute name: {_shown(name)}")
        attributes[attribute.lower()] = _value(attribute, raw)
    return attributes


# -- Who may use it ------------------------------------------------------------------


def trusted_networks(value: Any) -> Optional[tuple[Network, ...]]:
    """``SMTP(xclient_trusted=...)`` checked: ``None`` (XCLIENT off) or the
    networks, from :mod:`ipaddress` networks or addresses, or strings such as
    ``"127.0.0.0/8"``, ``"::1"``.  Anything else raises :exc:`ValueError`.
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Iterable):
        raise ValueError(
            "xclient_trusted must be None or a list of networks, "
            f"such as ['127.0.0.0/8', '::1/128'], not {value!r}"
        )
    networks: list[Network] = []
    for item in value:
        if isinstance(item, (IPv4Network, IPv6Network)):
            networks.append(item)
        elif isinstance(item, (IPv4Address, IPv6Address)):
            networks.append(ip_network(item))
        elif isinstance(item, str):
            try:
                networks.append(ip_network(item))
            except ValueError as error:
                raise ValueError(f"xclient_trusted: {item!r} is not a network: {error}") from None
        else:
            raise ValueError(
                f"xclient_trusted: {item!r} is not a network "
                "(a str such as '192.0.2.0/24', or an ipaddress network or address)"
            )
    return tuple(networks)


def address_trusted(address: object, networks: Iterable[Network]) -> bool:
    """Whether ``address`` (an :mod:`ipaddress` address, or a string as in a
    socket's peer name) is in one of ``networks``.  An IPv4-mapped IPv6
    address (``::ffff:127.0.0.1``, from a dual-stack socket) counts as its
    IPv4 address too.  Anything that is no IP address is not trusted."""
    ip: Union[IPv4Address, IPv6Address]
    if isinstance(address, (IPv4Address, IPv6Address)):
        ip = address
    elif isinstance(address, str):
        try:
            ip = ip_address(address.partition("%")[0])  # drop a scope id
        except ValueError:
            return False
    else:
        return False
    candidates: list[Union[IPv4Address, IPv6Address]] = [ip]
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    return any(candidate in network for network in networks for candidate in candidates)


# -- What a successful XCLIENT changes -----------------------------------------------


def updated(old: Optional[XClient], attributes: dict[str, str]) -> XClient:
    """``session.xclient`` after an XCLIENT with ``attributes``."""
    base = (old or XClient())._replace(**_LAST_COMMAND_ONLY)
    return base._replace(**attributes)


def updated_peer(peer: Any, attributes: dict[str, str]) -> Any:
    """``session.peer`` after an XCLIENT with ``attributes``: a tuple like a
    socket's peer name, ``(ADDR, PORT)`` or, for IPv6, ``(ADDR, PORT, 0, 0)``;
    what the command leaves out is kept.  An unavailable address is
    ``"[UNAVAILABLE]"``, an unavailable port ``0``."""
    addr, port = attributes.get("addr"), attributes.get("port")
    if addr is None and port is None:
        return peer
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, number, tail = peer[0], peer[1], peer[2:]
    else:  # a Unix socket's peer name, say
        host, number, tail = UNAVAILABLE, 0, ()
    if port is not None:
        number = 0 if port == UNAVAILABLE else int(port)
    if addr is not None:
        host = addr
        tail = (0, 0) if ":" in addr else ()
    return (host, number, *tail)


def after_starttls(old: Session, new: Session) -> None:
    """Carry the XCLIENT state over the RFC 3207 reset: the client is still
    who it was said to be, but HELO, PROTO and LOGIN are forgotten as a
    HELO and an AUTH would be."""
    if old.xclient is not None:
        new.xclient = old.xclient._replace(**_LAST_COMMAND_ONLY)
        new.peer = old.peer


def _describe(attributes: dict[str, str]) -> str:
    return " ".join(f"{name.upper()}={value}" for name, value in attributes.items())


# The command names of a class with XCLIENT off, shared by its connections.


# The ``XCLIENT`` command and its EHLO keyword.


def _init_xclient(self: SMTP, trusted: Any) -> None:
    """Set up ``xclient_trusted``; off, XCLIENT is no command at all."""
    if trusted is None:  # the default: this runs for every connection
        self._xclient_trusted = None
        self._smtp_commands = without_command(type(self), self._smtp_commands, "XCLIENT")
    else:
        self._xclient_trusted = trusted_networks(trusted)


def _xclient_client(self: SMTP) -> object:
    """The address that must be trusted: the connection's own peer or,
    with the PROXY protocol, the client the PROXY header names (the
    proxy itself is trusted by ``handle_PROXY``; trusting it here would
    trust everybody behind it)."""
    if self._proxy_timeout is not None:
        proxy_data = self.session.proxy_data if self.session is not None else None
        return getattr(proxy_data, "src_addr", None)
    transport = self._original_transport or self.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return peer[0] if isinstance(peer, tuple) and peer else None


def _xclient_advertised(self: SMTP) -> bool:
    """Whether this client may use XCLIENT (EHLO lists it, HELP too);
    SMTP._xclient_advertised, a property."""
    trusted = self._xclient_trusted
    return trusted is not None and address_trusted(self._xclient_client(), trusted)


def _ehlo_lines(self: SMTP) -> list[str]:
    lines = _session_commands._ehlo_lines(self)
    if self._xclient_trusted is not None and self._xclient_advertised:
        lines.append(EHLO_LINE)
    return lines


@syntax("XCLIENT attribute=value ...", when="_xclient_advertised")
async def smtp_XCLIENT(self: SMTP, arg: Optional[str]) -> None:
    assert self.session is not None
    peer = self.session.peer
    if self._in_transaction():
        log.info("%r XCLIENT refused: MAIL transaction in progress", peer)
        await self.push(IN_TRANSACTION)
        return
    if not arg:
        log.info("%r XCLIENT refused: %s", peer, SYNTAX)
        await self.push(SYNTAX)
        return
    if not self._xclient_advertised:
        log.warning(
            "%r XCLIENT refused: client %s is not in xclient_trusted",
            peer,
            self._xclient_client(),
        )
        await self.push(NOT_AUTHORIZED)
        return
    try:
        attributes = parse_xclient(arg)
    except XClientError as error:
        log.info("%r XCLIENT refused: %s", peer, error.reply)
        await self.push(error.reply)
        return
    self._xclient_reset(attributes)
    log.info(
        "%r XCLIENT accepted: %s; peer now %r", peer, _describe(attributes), self.session.peer
    )
    await self.push(f"220 {self.hostname} {self.__ident__}")


def _xclient_reset(self: SMTP, attributes: dict[str, str]) -> None:
    """Back to the greeting stage with what the client said: a new
    envelope and a new session, as after STARTTLS."""
    old = self.session
    assert old is not None
    xclient = updated(old.xclient, attributes)
    self._set_rset_state()
    session = self._create_session()
    session.peer = updated_peer(old.peer, attributes)
    session.ssl = old.ssl
    session.proxy_data = old.proxy_data
    session.xclient = xclient
    if xclient.helo is not None and xclient.helo != UNAVAILABLE:
        session.host_name = xclient.helo
    if xclient.proto is not None:
        session.extended_smtp = xclient.proto == "ESMTP"
    if xclient.login is not None and xclient.login != UNAVAILABLE:
        session.authenticated = True
        session.auth_data = xclient.login
    self.session = session
