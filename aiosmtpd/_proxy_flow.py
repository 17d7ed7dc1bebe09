"""The PROXY protocol step at the start of an SMTP connection (docs/proxyprotocol.rst).

The header is parsed straight from the connection's receive buffer; bytes
after it stay there for the SMTP session.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

from aiosmtpd._hooks import MISSING
from aiosmtpd.operations import address_of
from aiosmtpd.proxy_protocol import scan_proxy_header

if TYPE_CHECKING:  # pragma: no cover
    from aiosmtpd.smtp import SMTP

log = logging.getLogger("mail.log")


def checked_proxy_timeout(timeout: Optional[float]) -> Optional[float]:
    """``proxy_protocol_timeout`` as given, once checked (``None``: no PROXY)."""
    if timeout is not None:
        if timeout <= 0:
            raise ValueError("proxy_protocol_timeout must be > 0")
        elif timeout < 3.0:
            log.warning("proxy_protocol_timeout < 3.0")
    return timeout


async def accept_proxy_header(server: SMTP) -> bool:
    """Read the PROXY header; return False when the connection must close.

    The whole handshake, including the ``handle_PROXY`` hook, must finish
    within ``proxy_protocol_timeout``; nothing is ever sent to the client
    before the header is accepted.
    """
    assert server.session is not None and server._proxy_timeout is not None
    session = server.session
    peer = session.peer
    server._set_timeout(server._proxy_timeout)
    log.debug("%r waiting PROXY handshake", peer)
    buf = server._receiver.buf
    while True:
        scan = scan_proxy_header(buf)
        if scan.data is not None:
            break
        await server._wait_for_data()
    proxy_data = scan.data
    session.proxy_data = proxy_data
    status: object = False
    if proxy_data and server._ops is not None:
        # The per-address limit counts the client the header names, and
        # refuses before any handler code (handle_PROXY) runs.
        source = getattr(proxy_data, "src_addr", None)
        refusal = server._identified(str(source) if source else address_of(peer))
        if refusal is not None:
            server._say_goodbye(refusal, greeted=True)
            return False
    if proxy_data:
        log.info("%r valid PROXY handshake", peer)
        try:
            status = await server._call_handler_hook("PROXY", proxy_data)
        except Exception:
            # Deviation (CHANGES.rst): upstream left the connection
            # hanging until the PROXY timer fired.
            log.exception("%r handle_PROXY raised an exception", peer)
            status = False
        log.debug("%r handle_PROXY returned %r", peer, status)
    else:
        log.warning("%r invalid PROXY handshake", peer)
    if status is MISSING or not status:
        log.info("%r rejected by handle_PROXY", peer)
        if server.transport is not None:
            server.transport.close()
        return False
    del buf[: scan.consumed]
    server._set_timeout(server._idle_timeout)
    return True
