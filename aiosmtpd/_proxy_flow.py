"""The PROXY protocol step at the start of an SMTP connection."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from aiosmtpd.smtp import SMTP


async def accept_proxy_header(server: SMTP) -> bool:
    """Read the PROXY header; return False when the connection must close."""
    raise NotImplementedError("PROXY protocol support is being written")
