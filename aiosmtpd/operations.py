"""What a server shares across its connections: limits, drain, metrics.

One :class:`Operations` object serves every connection of a listener
(docs/operations.rst).  The controllers make one for themselves
(``controller.operations``); code that builds ``SMTP`` instances itself
passes the same object to each: ``SMTP(handler, operations=ops)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Optional, Protocol, Union

from aiosmtpd import metrics as _m
from aiosmtpd._departure import AFTER_DELIVERY, AFTER_TRANSACTION
from aiosmtpd.metrics import Metrics

__all__ = ["Operations", "TOO_MANY_CONNECTIONS", "TOO_MANY_FROM_ADDRESS", "SHUTTING_DOWN"]

log = logging.getLogger("mail.log")

# RFC 5321 3.8 / 4.2.5: 421 tells the client to try again later; the
# enhanced codes follow the server's own 421s (4.7.0: refused by policy;
# 4.3.2: system not accepting network messages).
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
TOO_MANY_FROM_ADDRESS = "421 4.7.0 Too many connections from your address, try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"


class Connection(Protocol):
    """What a drain asks of a connection (``aiosmtpd.smtp.SMTP`` is one)."""

    def _leave(self, reply: str, after: str) -> int: ...

    def _closing_done(self) -> bool: ...


def address_of(peer: object) -> Optional[str]:
    """The client address of a ``peername``; None for a Unix socket's."""
    return peer[0] if isinstance(peer, tuple) and peer else None


def _check_limit(name: str, value: Optional[int]) -> Optional[int]:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be None or a positive int, not {value!r}")
    return value


class _Burst:
    """Logs a run of refusals once: when it starts and when it ends."""

    __slots__ = ("what", "refused")

    def __init__(self, what: str) -> None:
        self.what = what
        self.refused = 0

    def refuse(self, peer: object) -> None:
        if not self.refused:
            log.warning("%s: refusing connections (first: %r)", self.what, peer)
        self.refused += 1

    def admitted(self) -> None:
        if self.refused:
            log.warning("%s: accepting again after refusing %d", self.what, self.refused)
            self.refused = 0


class Operations:
    """Connection limits, graceful drain and metrics for one listener.

    ``max_connections``: at most this many clients at once; ``None`` (the
    default) sets no limit.  ``max_connections_per_ip``: at most this many
    from one client address (the PROXY protocol's source address when PROXY
    is on).  A client over a limit gets ``421 4.7.0`` and is disconnected
    before any handler code runs.

    ``metrics``: ``True`` for a private :class:`~aiosmtpd.metrics.Metrics`,
    or one to count into (shared memory in a worker process, say).
    """

    def __init__(
        self,
        *,
        max_connections: Optional[int] = None,
        max_connections_per_ip: Optional[int] = None,
        metrics: Union[bool, Metrics] = False,
    ) -> None:
        self.max_connections = _check_limit("max_connections", max_connections)
        self.max_connections_per_ip = _check_limit(
            "max_connections_per_ip", max_connections_per_ip
        )
        #: The counters, or None when not asked for.
        self.metrics: Optional[Metrics] = (
            metrics if isinstance(metrics, Metrics) else Metrics() if metrics else None
        )
        #: The connections open now.
        self.connections: set[Connection] = set()
        self._per_ip: dict[str, int] = {}
        # The address each connection was counted under (per-address limit).
        self._address_of: dict[Connection, str] = {}
        self._global_burst = _Burst("max_connections reached")
        self._ip_burst = _Burst("max_connections_per_ip reached")
        #: True once drain() has begun: connections finish their transaction
        #: and are then sent SHUTTING_DOWN.
        self.draining = False
        self._emptied: Optional[asyncio.Event] = None

    # -- Called by SMTP ---------------------------------------------------------------

    def opened(self, server: Connection, peer: object) -> Optional[str]:
        """A connection begins: the reply refusing it, or None to serve it."""
        if self.draining:
            return SHUTTING_DOWN
        limit = self.max_connections
        if limit is not None and len(self.connections) >= limit:
            self._global_burst.refuse(peer)
            if self.metrics is not None:
                self.metrics.values[_m.REFUSED_GLOBAL] += 1
            return TOO_MANY_CONNECTIONS
        self._global_burst.admitted()
        self.connections.add(server)
        if self.metrics is not None:
            values = self.metrics.values
            values[_m.CONNECTIONS_TOTAL] += 1
            values[_m.CONNECTIONS_OPEN] += 1
        return None

    def identified(self, server: Connection, address: str) -> Optional[str]:
        """The client's address is known (at once, or from the PROXY
        header): the reply refusing it, or None to serve it."""
        limit = self.max_connections_per_ip
        if limit is None or not address:
            return None
        count = self._per_ip.get(address, 0)
        if count >= limit:
            self._ip_burst.refuse(address)
            if self.metrics is not None:
                self.metrics.values[_m.REFUSED_PER_IP] += 1
            return TOO_MANY_FROM_ADDRESS
        self._ip_burst.admitted()
        self._per_ip[address] = count + 1
        self._address_of[server] = address
        return None

    def closed(self, server: Connection) -> None:
        """A connection has ended (nothing to do if opened() refused it)."""
        if server not in self.connections:
            return
        address = self._address_of.pop(server, None)
        if address is not None:
            count = self._per_ip[address] - 1
            if count:
                self._per_ip[address] = count
            else:
                del self._per_ip[address]
        self.connections.discard(server)
        if self.metrics is not None:
            self.metrics.values[_m.CONNECTIONS_OPEN] -= 1
        if not self.connections and self._emptied is not None:
            self._emptied.set()

    # -- Graceful drain ------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Let every connection finish its transaction, then close it.

        Call it once the listener has stopped accepting.  At once, idle
        connections get ``421 4.3.2`` and are closed; a connection in a
        transaction may finish it (its reply is sent) and is then closed the
        same way.  After ``timeout`` seconds the rest are closed with that
        reply, except those whose handler is delivering a message: the
        handler is never cancelled, so its message is either answered or,
        if the client has gone, never acknowledged.  Returns when no
        connection is left.
        """
        self.draining = True
        self._emptied = emptied = asyncio.Event()
        if not self.connections:
            return
        log.info("Draining %d connections (deadline %.1f s)", len(self.connections), timeout)
        for server in list(self.connections):
            server._leave(SHUTTING_DOWN, after=AFTER_TRANSACTION)
        if self.connections:
            try:
                await asyncio.wait_for(emptied.wait(), timeout)
                return
            except asyncio.TimeoutError:
                pass
        delivering = 0
        for server in list(self.connections):
            delivering += server._leave(SHUTTING_DOWN, after=AFTER_DELIVERY)
        if delivering:
            log.warning("Drain deadline passed; waiting for %d handlers delivering", delivering)
        # A closing connection may linger (a client that reads nothing keeps
        # the 421 in the write buffer); the caller aborts those.  Only a
        # handler still delivering is worth waiting for.
        while any(not server._closing_done() for server in self.connections):
            emptied.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(emptied.wait(), 0.05)
