"""ESMTP parameters of DSN (RFC 3461) and of AUTH on MAIL (RFC 4954), pure.

Each parser takes the parameter's value as the client sent it (case kept)
and returns the decoded value, or raises ``ValueError`` with the reply the
server sends (docs/extensions.rst).
"""

from __future__ import annotations

import re
from typing import Callable, Optional, TypeVar, Union

import attr

__all__ = ["RecipientDSN", "xtext_decode", "xtext_encode"]

# RFC 3461 section 4: xtext is "!".."~" except "+" and "=", and "+" HEXCHAR
# HEXCHAR (upper-case hex digits) for anything else.
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
_HEXPAIR = re.compile(r"\+([0-9A-F]{2})")
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")

BAD_RET = "501 5.5.4 Bad RET parameter syntax"
BAD_ENVID = "501 5.5.4 Bad ENVID parameter syntax"
BAD_NOTIFY = "501 5.5.4 Bad NOTIFY parameter syntax"
BAD_ORCPT = "501 5.5.4 Bad ORCPT parameter syntax"
BAD_AUTH = "501 5.5.4 Bad AUTH parameter syntax"

_T = TypeVar("_T")
_NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})


@attr.s(frozen=True, auto_attribs=True)
class RecipientDSN:
    """What a ``RCPT`` asked of delivery status notifications (RFC 3461)."""

    #: ``None`` when not given; else ``frozenset({"NEVER"})`` or a non-empty
    #: subset of ``{"SUCCESS", "FAILURE", "DELAY"}``.
    notify: Optional[frozenset[str]] = None
    #: ``None`` when not given; else ``(address type, address)``, e.g.
    #: ``("rfc822", "bob@example.com")``, the address decoded from xtext.
    orcpt: Optional[tuple[str, str]] = None


def xtext_decode(text: str) -> str:
    """Decode xtext; ``ValueError`` when ``text`` is not xtext."""
    if not text.isascii() or _XTEXT.fullmatch(text) is None:
        raise ValueError(text)
    return _HEXPAIR.sub(lambda m: chr(int(m.group(1), 16)), text)


def xtext_encode(text: str) -> str:
    """Encode ASCII ``text`` as xtext (for tests and for relaying clients)."""
    return "".join(
        c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}" for c in text
    )


def parse_ret(value: str) -> str:
    """RET=FULL or RET=HDRS, in any case: ``"FULL"`` or ``"HDRS"``."""
    upper = value.upper()
    if upper not in ("FULL", "HDRS"):
        raise ValueError(BAD_RET)
    return upper


def _nonempty_xtext(text: str, refusal: str) -> str:
    """``text`` decoded from xtext; ``ValueError(refusal)`` if that fails
    or leaves nothing."""
    try:
        decoded = xtext_decode(text)
    except ValueError:
        raise ValueError(refusal) from None
    if not decoded:
        raise ValueError(refusal)
    return decoded


def parse_envid(value: str) -> str:
    """ENVID=xtext, at most 100 characters once decoded."""
    decoded = _nonempty_xtext(value, BAD_ENVID)
    if len(decoded) > 100:
        raise ValueError(BAD_ENVID)
    return decoded


def parse_notify(value: str) -> frozenset[str]:
    """NOTIFY=NEVER, or a comma list of SUCCESS, FAILURE and DELAY."""
    words = value.upper().split(",")
    if words == ["NEVER"]:
        return frozenset(words)
    chosen = frozenset(words)
    if len(chosen) != len(words) or not chosen <= _NOTIFY_WORDS:
        raise ValueError(BAD_NOTIFY)
    return chosen


def parse_orcpt(value: str) -> tuple[str, str]:
    """ORCPT=addr-type;xtext (at most 500 characters)."""
    kind, semicolon, address = value.partition(";")
    if not semicolon or len(value) > 500 or _ATOM.fullmatch(kind) is None:
        raise ValueError(BAD_ORCPT)
    return kind.lower(), _nonempty_xtext(address, BAD_ORCPT)


def parse_auth(value: str) -> str:
    """AUTH=<> or AUTH=xtext-encoded mailbox (RFC 4954 section 5)."""
    if value == "<>":
        return value
    return _nonempty_xtext(value, BAD_AUTH)


def split_params(text: str) -> list[tuple[str, str]]:
    """``KEY=value`` words as (upper-cased key, value as sent); a word
    without ``=`` has the value ``""``."""
    pairs = []
    for word in text.split():
        key, _, value = word.partition("=")
        pairs.append((key.upper(), value))
    return pairs


@attr.s(frozen=True, auto_attribs=True)
class MailParameters:
    """The DSN and AUTH parameters of one ``MAIL``."""

    ret: Optional[str] = None
    envid: Optional[str] = None
    auth: Optional[str] = None


def take_mail_parameters(
    params: dict[str, Union[str, bool]], text: str, *, dsn: bool, auth: bool
) -> MailParameters:
    """Decode RET and ENVID (``dsn``) and AUTH (``auth``) from the parsed
    ``params`` of a MAIL line, taking them out of ``params``; ``text`` is
    the parameter text as sent (values keep their case).  ``ValueError``
    carries the reply for a bad value."""
    sent = dict(split_params(text))
    return MailParameters(
        _take(params, sent, "RET", parse_ret) if dsn else None,
        _take(params, sent, "ENVID", parse_envid) if dsn else None,
        _take(params, sent, "AUTH", parse_auth) if auth else None,
    )


def take_rcpt_parameters(params: dict[str, Union[str, bool]], text: str) -> Optional[RecipientDSN]:
    """Decode NOTIFY and ORCPT of a RCPT line, as take_mail_parameters()."""
    if "NOTIFY" not in params and "ORCPT" not in params:
        return None
    sent = dict(split_params(text))
    return RecipientDSN(
        _take(params, sent, "NOTIFY", parse_notify), _take(params, sent, "ORCPT", parse_orcpt)
    )


def _take(
    params: dict[str, Union[str, bool]], sent: dict[str, str], key: str,
    parse: Callable[[str], _T],
) -> Optional[_T]:
    """Parse ``key``'s value as sent, and take the key out of ``params``."""
    if key not in params:
        return None
    del params[key]
    return parse(sent[key])
