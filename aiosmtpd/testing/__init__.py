"""Helpers for testing code that sends mail, and the pytest plugin behind them.

The pytest fixtures (``smtpd``, ``smtpd_starttls``, ``smtpd_tls``,
``smtpd_auth``, ``async_smtpd``, ...) live in :mod:`aiosmtpd.testing.plugin`,
which pytest loads by itself once aiosmtpd is installed.  This module holds
what they are built from, usable without pytest too.

The names below are imported on first use: pytest imports this package (for
the plugin) in every run of every project that has aiosmtpd installed, and
that must not cost the import of the SMTP server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from aiosmtpd.testing._capture import CapturedMessage, CaptureHandler
    from aiosmtpd.testing._certs import MissingExtraError, TestCertificates, certificates
    from aiosmtpd.testing._config import ServerConfig
    from aiosmtpd.testing._faults import Fault, FaultPlan
    from aiosmtpd.testing._server import AsyncSMTPTestServer, SMTPTestServer
    from aiosmtpd.testing._transcript import Transcript, TranscriptEntry

_EXPORTS = {
    "AsyncSMTPTestServer": "_server",
    "CaptureHandler": "_capture",
    "CapturedMessage": "_capture",
    "Fault": "_faults",
    "FaultPlan": "_faults",
    "MissingExtraError": "_certs",
    "SMTPTestServer": "_server",
    "ServerConfig": "_config",
    "TestCertificates": "_certs",
    "Transcript": "_transcript",
    "TranscriptEntry": "_transcript",
    "certificates": "_certs",
}

__all__ = [
    "AsyncSMTPTestServer",
    "CaptureHandler",
    "CapturedMessage",
    "Fault",
    "FaultPlan",
    "MissingExtraError",
    "SMTPTestServer",
    "ServerConfig",
    "TestCertificates",
    "Transcript",
    "TranscriptEntry",
    "certificates",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # Not cached in globals(): the module stays the one source of truth even
    # if it is re-imported (pytester's in-process runs do that).
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
