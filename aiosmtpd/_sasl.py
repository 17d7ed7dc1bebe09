"""The optional SASL mechanisms' messages: CRAM-MD5, XOAUTH2, OAUTHBEARER.

Pure code, no I/O: the credential classes the ``authenticator`` receives,
the parsers of the client's (already base64-decoded) responses, and the
server's challenges.  The exchanges themselves live in ``_auth.py``
(docs/auth.rst, "Optional mechanisms").

Every parser takes arbitrary ``bytes`` and either returns a credential
object or raises :class:`MalformedResponse`; nothing else.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import time
from typing import Optional, Union

import attr

__all__ = [
    "CramMD5Response",
    "MalformedResponse",
    "OAuthBearerCredentials",
    "XOAuth2Credentials",
    "cram_md5_challenge",
    "error_status",
    "parse_cram_md5",
    "parse_oauthbearer",
    "parse_xoauth2",
]


class MalformedResponse(ValueError):
    """A decoded SASL response that does not follow its mechanism's format."""


def _shown(data: Optional[bytes]) -> str:
    # Like LoginPassword: never raises, whatever the bytes.
    if data is None:
        return "None"
    return "'" + data.decode("utf-8", errors="backslashreplace") + "'"


# -- CRAM-MD5 (RFC 2195) ----------------------------------------------------------------


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True, repr=False)
class CramMD5Response:
    """What a ``CRAM-MD5`` client answered to the server's challenge.

    The server cannot check it alone: only the user's plaintext secret
    reproduces the digest, so the authenticator looks the secret up and calls
    :meth:`verify`.
    """

    #: The user name the client sent.
    login: bytes
    #: The challenge the server sent (not base64-encoded), ``<...@host>``.
    challenge: bytes
    #: The client's HMAC-MD5 of the challenge: 32 lowercase hex digits.
    digest: bytes

    def verify(self, secret: Union[str, bytes]) -> bool:
        """Whether the digest is the HMAC-MD5 of the challenge keyed with
        *secret* (a ``str`` is encoded as UTF-8); compared in constant time."""
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        expected = hmac.new(secret, self.challenge, "md5").hexdigest().encode("ascii")
        return hmac.compare_digest(expected, self.digest)

    def __repr__(self) -> str:
        return (
            f"CramMD5Response(login={_shown(self.login)}, "
            f"challenge={_shown(self.challenge)}, digest=...)"
        )

    __str__ = __repr__


def cram_md5_challenge(hostname: str) -> bytes:
    """A fresh challenge ``<random.timestamp@hostname>`` (RFC 2195 section 2).

    The random part makes challenges unique even within one microsecond.
    """
    host = hostname.encode("utf-8", errors="replace")
    return b"<%d.%d@%s>" % (secrets.randbits(64), time.time_ns() // 1000, host)


_HEX_DIGEST = re.compile(rb"[0-9a-fA-F]{32}\Z")


def parse_cram_md5(response: bytes, challenge: bytes) -> CramMD5Response:
    """``user SP digest``: the user name may hold spaces, the digest is the
    32 hex digits after the last one (either case; kept in lowercase)."""
    login, space, digest = response.rpartition(b" ")
    if not space or not login or not _HEX_DIGEST.match(digest):
        raise MalformedResponse("CRAM-MD5 response is not 'user SP digest'")
    return CramMD5Response(login=login, challenge=challenge, digest=digest.lower())


# -- XOAUTH2 and OAUTHBEARER --------------------------------------------------------------


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True, repr=False)
class XOAuth2Credentials:
    """What an ``XOAUTH2`` client sent: ``user=...^Aauth=Bearer ...^A^A``."""

    #: The ``user`` value (may be empty).
    login: bytes
    #: The bearer token, for the authenticator to validate.
    token: bytes

    def __repr__(self) -> str:
        return f"XOAuth2Credentials(login={_shown(self.login)}, token=...)"

    __str__ = __repr__


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True, repr=False)
class OAuthBearerCredentials:
    """What an ``OAUTHBEARER`` client sent (RFC 7628 section 3.1)."""

    #: The authorization identity of the GS2 header (``a=``), ``None`` if absent.
    login: Optional[bytes]
    #: The bearer token, for the authenticator to validate.
    token: bytes
    #: The ``host`` the client connected to, if it said.
    host: Optional[bytes] = None
    #: The ``port`` the client connected to, if it said.
    port: Optional[int] = None

    def __repr__(self) -> str:
        return (
            f"OAuthBearerCredentials(login={_shown(self.login)}, token=..., "
            f"host={_shown(self.host)}, port={self.port!r})"
        )

    __str__ = __repr__


_KEY = re.compile(rb"[A-Za-z]+\Z")
_PORT = re.compile(rb"[0-9]{1,5}\Z")


def _kvpairs(fields: list[bytes]) -> dict[bytes, bytes]:
    """``key=value`` fields; a key only once."""
    pairs: dict[bytes, bytes] = {}
    for item in fields:
        key, equals, value = item.partition(b"=")
        if not equals or not _KEY.match(key) or key in pairs:
            raise MalformedResponse("bad key=value pair")
        pairs[key] = value
    return pairs


def _bearer_token(pairs: dict[bytes, bytes]) -> bytes:
    """The token of ``auth=Bearer <token>`` (the scheme in any case)."""
    value = pairs.get(b"auth")
    if value is None:
        raise MalformedResponse("no auth=")
    scheme, space, token = value.partition(b" ")
    token = token.lstrip(b" ")
    if scheme.lower() != b"bearer" or not space or not token:
        raise MalformedResponse("auth= is not 'Bearer <token>'")
    return token


def _fields(response: bytes) -> list[bytes]:
    """The fields of ``field ^A field ^A ... ^A ^A``, without the two ends."""
    parts = response.split(b"\x01")
    if len(parts) < 3 or parts[-1] or parts[-2] or not all(parts[:-2]):
        raise MalformedResponse("not a list of fields ending with ^A^A")
    return parts[:-2]


def parse_xoauth2(response: bytes) -> XOAuth2Credentials:
    """``user=<user> ^A auth=Bearer <token> ^A ^A`` (Google's XOAUTH2).

    Other keys are ignored; ``user`` and ``auth`` must be there, once each.
    """
    pairs = _kvpairs(_fields(response))
    login = pairs.get(b"user")
    if login is None:
        raise MalformedResponse("no user=")
    return XOAuth2Credentials(login=login, token=_bearer_token(pairs))


_SASLNAME_ESCAPE = re.compile(rb"=(?!2C|3D)")


def _gs2_authzid(header: bytes) -> Optional[bytes]:
    """The authzid of an RFC 7628 GS2 header ``n,[a=<saslname>],``.

    ``n`` (no channel binding) and ``y`` (client could, server cannot) are
    accepted; ``p=`` is refused, as OAUTHBEARER has no channel binding.
    """
    parts = header.split(b",")
    if len(parts) != 3 or parts[0] not in (b"n", b"y") or parts[2]:
        raise MalformedResponse("bad GS2 header")
    authzid = parts[1]
    if not authzid:
        return None
    if not authzid.startswith(b"a=") or _SASLNAME_ESCAPE.search(authzid, 2):
        raise MalformedResponse("bad authzid")
    return authzid[2:].replace(b"=2C", b",").replace(b"=3D", b"=")


def parse_oauthbearer(response: bytes) -> OAuthBearerCredentials:
    """``gs2-header ^A *(key=value ^A) ^A`` with ``auth=Bearer <token>``.

    ``host`` and ``port`` are kept; other keys are ignored (RFC 7628
    section 3.1).  A lone ``^A`` (the answer to an error challenge) is not a
    valid first response either.
    """
    fields = _fields(response)
    login = _gs2_authzid(fields[0])
    pairs = _kvpairs(fields[1:])
    token = _bearer_token(pairs)
    port_text = pairs.get(b"port")
    port: Optional[int] = None
    if port_text is not None:
        if not _PORT.match(port_text) or int(port_text) > 65535:
            raise MalformedResponse("bad port=")
        port = int(port_text)
    return OAuthBearerCredentials(login=login, token=token, host=pairs.get(b"host"), port=port)


def error_status(status: dict[str, str]) -> bytes:
    """The JSON of a bearer mechanism's error challenge (RFC 7628 3.2.2)."""
    return json.dumps(status, separators=(",", ":")).encode("utf-8")
