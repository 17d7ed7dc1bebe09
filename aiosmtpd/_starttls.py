"""STARTTLS (RFC 3207) for the ``SMTP`` class, and the TLS facts a session records."""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from typing import TYPE_CHECKING, Any, Optional, cast

from aiosmtpd import metrics as _m
from aiosmtpd._hooks import syntax

if TYPE_CHECKING:  # pragma: no cover
    from aiosmtpd.smtp import SMTP


log = logging.getLogger("mail.log")


class TLSSetupException(Exception):
    """The STARTTLS handshake failed."""


def tls_info(transport: asyncio.BaseTransport) -> dict[str, Any]:
    """What ``session.ssl`` holds: the TLS layer's facts about the connection."""
    return {
        key: transport.get_extra_info(key)
        for key in ("sslcontext", "peercert", "cipher", "compression", "ssl_object")
    }


#: asyncio's own bound on a TLS handshake, which implicit TLS listeners keep
#: when the SMTP timeout is longer.
DEFAULT_HANDSHAKE_TIMEOUT = 60.0


def handshake_timeout(smtp_timeout: float) -> Optional[float]:
    """How long an implicit-TLS listener waits for a client's handshake.

    The SMTP inactivity timer only starts once the handshake is done, so a
    client that connects and sends nothing would otherwise be held for
    asyncio's 60 s whatever ``timeout`` says (CHANGES.rst, "Implicit TLS handshake").
    ``None``: asyncio's default.
    """
    if smtp_timeout <= 0:
        return None
    return min(smtp_timeout, DEFAULT_HANDSHAKE_TIMEOUT)


def check_tls_context(context: ssl.SSLContext) -> None:
    """Warn about a server context that many clients cannot use."""
    if context.verify_mode not in {ssl.CERT_NONE, ssl.CERT_OPTIONAL}:
        log.warning(
            "tls_context.verify_mode not in {CERT_NONE, CERT_OPTIONAL}; "
            "this might cause client connection problems"
        )
    elif context.check_hostname:
        log.warning(
            "tls_context.check_hostname == True; "
            "this might cause client connection problems"
        )


def tls_protocol_of(transport: asyncio.BaseTransport) -> Any:
    """The TLS layer under a TLS transport: what ``SMTP._tls_protocol`` holds.

    asyncio does not name it publicly; when it cannot be found the
    ``ssl.SSLObject`` stands in (any non-None value means "TLS is on").
    """
    return getattr(transport, "_ssl_protocol", None) or transport.get_extra_info("ssl_object")


# The STARTTLS command of an ``SMTP`` connection.


@syntax("STARTTLS", when="tls_context")
async def smtp_STARTTLS(self: SMTP, arg: Optional[str]) -> None:
    if arg:
        await self.push(self._code("501 Syntax: STARTTLS", "5.5.4"))
        return
    if self._tls_active:
        await self.push("503 5.5.1 Error: TLS already active")
        return
    if not self.tls_context:
        await self.push(self._code("454 TLS not available", "4.7.0"))
        return
    # A server connection's transport reads and writes: asyncio.Transport
    # (the attribute keeps upstream's wider type).
    transport = cast(Optional[asyncio.Transport], self.transport)
    assert transport is not None and self.session is not None
    # Stop reading before the 220 goes out: what the client sends next is
    # its TLS handshake, which must reach the TLS layer, not our buffer.
    transport.pause_reading()
    # RFC 3207 section 6: plaintext pipelined after STARTTLS is discarded,
    # never executed (the CVE-2024-34083 class).
    self._receiver.discard()
    await self.push(self._code("220 Ready to start TLS", "2.0.0"))
    try:
        tls_transport = await self.loop.start_tls(
            transport,
            self,
            self.tls_context,
            server_side=True,
            ssl_handshake_timeout=self._tls_handshake_timeout,
        )
    except asyncio.CancelledError:
        raise
    except Exception as error:
        self._count(_m.TLS_FAILURES)
        # A client that disconnects mid-handshake is a failed handshake
        # too: handle_exception sees it, as in 1.4.6 (docs/tls.rst,
        # "When the handshake fails").
        raise TLSSetupException("Unable to set up TLS") from error
    if tls_transport is None:  # pragma: no cover - start_tls returns one
        raise TLSSetupException("Unable to set up TLS")
    # Not clearing the receiver again here: it can only hold data decrypted by
    # the TLS layer, and a TLS 1.3 client may already have sent its
    # first command along with its Finished message.
    if self._reading_paused:
        # data_received() paused the raw transport (through which the
        # TLS layer now reads) while a backlog arrived with the end of
        # the handshake; from here on pausing goes through tls_transport.
        self._reading_paused = False
        transport.resume_reading()
    self._count(_m.TLS_HANDSHAKES)
    # The TLS layer under tls_transport: upstream's _tls_protocol.
    self._tls_protocol = transport.get_protocol()
    # As upstream's TLS layer did: connection_made() again, with the TLS
    # transport; it recognises the second call and resets the session.
    self.connection_made(tls_transport)
    hook = self._handle_hooks.get("STARTTLS")
    if hook is not None:
        verdict = hook(self, self.session, self.envelope)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        self._tls_handshake_okay = bool(verdict)
