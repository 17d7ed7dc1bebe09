"""Certificates made at run time for the TLS test servers.

Nothing is written to a shared place: each process (each pytest-xdist worker)
makes its own certificate authority in memory, once, on first use.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

EXTRA_HINT = (
    "the aiosmtpd TLS test servers need trustme (aiosmtpd's 'tls' extra) to "
    "make their certificates: pip install trustme"
)

#: Names every test certificate is valid for.
DEFAULT_IDENTITIES = ("localhost", "127.0.0.1", "::1")


class MissingExtraError(ImportError):
    """An optional dependency of aiosmtpd.testing is not installed."""


def _trustme() -> Any:
    try:
        import trustme
    except ImportError as error:
        raise MissingExtraError(EXTRA_HINT) from error
    return trustme


class TestCertificates:
    """A private certificate authority and a server certificate it signed."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, identities: tuple[str, ...] = DEFAULT_IDENTITIES) -> None:
        trustme = _trustme()
        self.identities = identities
        self._ca: Any = trustme.CA()
        self._leaf: Any = self._ca.issue_cert(*identities)

    @property
    def ca_pem(self) -> bytes:
        """The certificate authority, PEM encoded, for clients that want a file."""
        pem: bytes = self._ca.cert_pem.bytes()
        return pem

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._leaf.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts the test servers (and only them)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self._ca.configure_trust(context)
        return context


def certificates(identities: tuple[str, ...] = DEFAULT_IDENTITIES) -> TestCertificates:
    """The process-wide certificates for these names, made on first use."""
    return _cached(tuple(identities))


@functools.lru_cache(maxsize=8)
def _cached(identities: tuple[str, ...]) -> TestCertificates:
    return TestCertificates(identities)


def certificates_for(host: str) -> TestCertificates:
    if host in DEFAULT_IDENTITIES or host in ("", "0.0.0.0", "::"):
        return certificates()
    return certificates((*DEFAULT_IDENTITIES, host))
