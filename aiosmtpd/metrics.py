"""Counters and gauges of a running server (docs/operations.rst, "Metrics").

A :class:`Metrics` is a fixed table of 64-bit integers, one per series, so
that counting costs one indexed increment and so that worker processes can
keep theirs in shared memory for the supervisor to add up.  Nothing here
does I/O: :func:`render` writes the Prometheus text format, and the CLI's
``--metrics`` endpoint serves it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple, Optional, Union

__all__ = ["Metrics", "SERIES", "Series", "render"]


class Series(NamedTuple):
    """One number a server keeps."""

    name: str
    labels: tuple[tuple[str, str], ...]
    kind: str  # "counter" or "gauge", as Prometheus names them
    help: str

    @property
    def key(self) -> str:
        """The series' name as :meth:`Metrics.snapshot` and Prometheus write it."""
        if not self.labels:
            return self.name
        labels = ",".join(f'{k}="{v}"' for k, v in self.labels)
        return f"{self.name}{{{labels}}}"


def _series() -> tuple[Series, ...]:
    table = [
        Series("connections_open", (), "gauge", "Client connections open now."),
        Series("connections_total", (), "counter", "Client connections accepted."),
    ]
    for reason in ("max_connections", "max_connections_per_ip"):
        table.append(Series(
            "connections_refused_total", (("reason", reason),), "counter",
            "Client connections refused by a connection limit.",
        ))
    table += [
        Series("transactions_total", (), "counter", "Mail transactions begun (MAIL accepted)."),
        Series("messages_accepted_total", (), "counter",
               "Messages whose DATA got a 2xx reply."),
        Series("message_bytes_accepted_total", (), "counter",
               "DATA bytes of the accepted messages, as received (dot-stuffed)."),
    ]
    for cls in ("2xx", "3xx", "4xx", "5xx"):
        table.append(Series("replies_total", (("class", cls),), "counter",
                            "Replies sent, by class."))
    table += [
        Series("auth_failures_total", (), "counter", "Failed AUTH attempts."),
        Series("tls_handshakes_total", (), "counter",
               "Completed TLS handshakes (STARTTLS and implicit TLS)."),
        Series("tls_failures_total", (), "counter", "Failed STARTTLS handshakes."),
    ]
    for kind in ("idle", "data", "session", "proxy"):
        table.append(Series("timeouts_total", (("kind", kind),), "counter",
                            "Connections closed by a timeout, by kind."))
    return tuple(table)


#: Every series, in storage order.
SERIES = _series()
_INDEX = {series.key: i for i, series in enumerate(SERIES)}

# Storage indexes used by the engine (one name per series it counts).
CONNECTIONS_OPEN = _INDEX["connections_open"]
CONNECTIONS_TOTAL = _INDEX["connections_total"]
REFUSED_GLOBAL = _INDEX['connections_refused_total{reason="max_connections"}']
REFUSED_PER_IP = _INDEX['connections_refused_total{reason="max_connections_per_ip"}']
TRANSACTIONS = _INDEX["transactions_total"]
MESSAGES = _INDEX["messages_accepted_total"]
MESSAGE_BYTES = _INDEX["message_bytes_accepted_total"]
AUTH_FAILURES = _INDEX["auth_failures_total"]
TLS_HANDSHAKES = _INDEX["tls_handshakes_total"]
TLS_FAILURES = _INDEX["tls_failures_total"]
TIMEOUT_IDLE = _INDEX['timeouts_total{kind="idle"}']
TIMEOUT_DATA = _INDEX['timeouts_total{kind="data"}']
TIMEOUT_SESSION = _INDEX['timeouts_total{kind="session"}']
TIMEOUT_PROXY = _INDEX['timeouts_total{kind="proxy"}']

#: The index of replies_total for a reply's first byte ("2" .. "5").
REPLY_CLASS = {ord(c): _INDEX[f'replies_total{{class="{c}xx"}}'] for c in "2345"}

#: Bytes of storage one Metrics needs (see Metrics' ``buffer``).
STORAGE_BYTES = 8 * len(SERIES)


class Metrics:
    """The counters and gauges of one server (or one worker process).

    ``buffer``: where to keep the numbers, at least ``STORAGE_BYTES`` long
    (a slice of shared memory, say); by default a Python list, which counts
    twice as fast.
    """

    __slots__ = ("values",)

    def __init__(self, buffer: Optional[memoryview] = None) -> None:
        #: The numbers, indexed like :data:`SERIES`.
        self.values: Union[list[int], memoryview] = (
            [0] * len(SERIES)
            if buffer is None
            else buffer.cast("B")[:STORAGE_BYTES].cast("q")
        )

    def snapshot(self) -> dict[str, int]:
        """Every series by its key, e.g. ``'replies_total{class="2xx"}'``."""
        return {series.key: self.values[i] for i, series in enumerate(SERIES)}

    def __getitem__(self, key: str) -> int:
        """One series, by its key (``metrics["connections_open"]``)."""
        try:
            return self.values[_INDEX[key]]
        except KeyError:
            raise KeyError(f"no such series: {key!r} (see aiosmtpd.metrics.SERIES)") from None


def render(
    snapshots: Iterable[Mapping[str, int]], prefix: str = "aiosmtpd_"
) -> str:
    """The Prometheus text exposition of the sum of ``snapshots``."""
    totals = dict.fromkeys(_INDEX, 0)
    for snapshot in snapshots:
        for key, value in snapshot.items():
            totals[key] += value
    lines: list[str] = []
    described: set[str] = set()
    for series in SERIES:
        name = prefix + series.name
        if name not in described:
            described.add(name)
            lines.append(f"# HELP {name} {series.help}")
            lines.append(f"# TYPE {name} {series.kind}")
        lines.append(f"{prefix}{series.key} {totals[series.key]}")
    return "\n".join(lines) + "\n"
