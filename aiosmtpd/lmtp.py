"""LMTP (RFC 2033): the SMTP server speaking ``LHLO`` instead of HELO/EHLO."""

from __future__ import annotations

from typing import Any, Optional

from aiosmtpd._inline import engine_class
from aiosmtpd.smtp import MISSING, SMTP, syntax

__all__ = ["LMTP"]

# LHLO is the greeting of LMTP, so it must pass the STARTTLS gate; EHLO stays
# allowed there only to get its "not recognized" reply (docs/decisions.rst,
# "EHLO before STARTTLS in LMTP").
_ALLOWED_BEFORE_STARTTLS = frozenset({"NOOP", "LHLO", "EHLO", "STARTTLS", "QUIT"})


@engine_class
class LMTP(SMTP):
    """An LMTP server: one instance per connection, like :class:`SMTP`.

    ``per_recipient_replies`` (keyword-only, default ``False``) makes the
    server send one reply per accepted recipient after DATA, as RFC 2033
    requires, whenever the handler leaves the reply to the server (no
    ``handle_DATA``, or a "default" result) and for the server's own
    post-DATA errors. It is off by default because clients such as
    :class:`smtplib.LMTP` read only one reply. It never multiplies a hook's
    verdict: a ``handle_DATA`` returning one string, or raising, gets one
    reply in both modes. Independently of the flag, a ``handle_DATA``
    returning a list or tuple gets one reply line per element, however many
    recipients there are.
    """

    # Kept for compatibility; upstream never used it either.
    show_smtp_greeting: bool = False

    def __init__(self, handler: Any, *, per_recipient_replies: bool = False, **kwargs: Any) -> None:
        self.per_recipient_replies = per_recipient_replies
        super().__init__(handler, **kwargs)

    @syntax("LHLO hostname")
    async def smtp_LHLO(self, arg: Optional[str]) -> None:
        if not arg:
            await self.push(self._code("501 Syntax: LHLO hostname", "5.5.4"))
            return
        await self._ehlo(arg)

    # No @syntax on these two: that keeps them out of HELP.
    async def smtp_HELO(self, arg: Optional[str]) -> None:
        await self.push(self._code('500 Error: command "HELO" not recognized', "5.5.2"))

    async def smtp_EHLO(self, arg: Optional[str]) -> None:
        await self.push(self._code('500 Error: command "EHLO" not recognized', "5.5.2"))

    async def check_helo_needed(self, helo: str = "LHLO") -> bool:
        # The inherited callers ask for HELO (MAIL/RCPT/DATA) or EHLO (AUTH),
        # neither of which LMTP accepts.
        if helo in ("HELO", "EHLO"):
            helo = "LHLO"
        return await super().check_helo_needed(helo)

    def _allowed_before_starttls(self) -> frozenset[str]:
        return _ALLOWED_BEFORE_STARTTLS

    # -- Replies after DATA -------------------------------------------------------

    async def _data_failed(self, status: str) -> None:
        # The server's own verdict on the data concerns every recipient.
        assert self.envelope is not None
        count = len(self.envelope.rcpt_tos) if self.per_recipient_replies else 1
        self._set_post_data_state()
        for _ in range(max(count, 1)):
            await self.push(status)

    async def _deliver(self) -> None:
        assert self.envelope is not None
        rcpt_count = len(self.envelope.rcpt_tos)
        status = await self._delivery_status()
        self._set_post_data_state()
        if isinstance(status, (list, tuple)):
            for reply in status:
                await self.push(reply)
        elif status is MISSING:
            for _ in range(rcpt_count if self.per_recipient_replies else 1):
                await self.push(self._code("250 OK", "2.0.0"))
        else:
            await self.push(status)
