"""The session commands of the ``SMTP`` class: HELO, EHLO, NOOP, QUIT, RSET,
VRFY, EXPN and HELP.  (MAIL, RCPT and DATA are in ``_transaction``, AUTH in
``_auth``, STARTTLS in ``_starttls``.)"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Optional

from aiosmtpd._grammar import control_chars_to_question_marks, get_address
from aiosmtpd._hooks import MISSING, syntax

if TYPE_CHECKING:  # pragma: no cover
    from aiosmtpd.smtp import SMTP

log = logging.getLogger("mail.log")


# HELO, EHLO, NOOP, QUIT, RSET, VRFY, EXPN and HELP.


@syntax("HELO hostname")
async def smtp_HELO(self: SMTP, hostname: Optional[str]) -> None:
    assert self.session is not None
    if not hostname:
        await self.push(self._code("501 Syntax: HELO hostname", "5.5.4"))
        return
    self._set_rset_state()
    self.session.extended_smtp = False
    status = await self._call_handler_hook("HELO", hostname)
    if status is MISSING:
        self.session.host_name = hostname
        status = f"250 {self.hostname}"
    await self.push(status)


@syntax("EHLO hostname")
async def smtp_EHLO(self: SMTP, hostname: Optional[str]) -> None:
    if not hostname:
        await self.push(self._code("501 Syntax: EHLO hostname", "5.5.4"))
        return
    await self._ehlo(hostname)


def _ehlo_lines(self: SMTP) -> list[str]:
    """The EHLO response lines before the final ``250 HELP``."""
    size_allowance = 0
    lines = [f"250-{self.hostname}"]
    if self.data_size_limit:
        lines.append(f"250-SIZE {self.data_size_limit}")
        size_allowance += 26  # RFC 1870 SIZE=<n> on MAIL
    if not self._decode_data:
        lines.append("250-8BITMIME")
    if self.enable_SMTPUTF8:
        lines.append("250-SMTPUTF8")
        size_allowance += 10  # RFC 6531 SMTPUTF8 on MAIL
    auth = self._auth.advertised(self._tls_active)
    if auth:
        size_allowance += 500  # RFC 4954 section 5: AUTH= on MAIL
    if self.enable_DSN:
        size_allowance += 110  # RFC 3461 section 5: RET= and ENVID= (100)
        self.command_size_limits["RCPT"] = self.command_size_limit + 500  # NOTIFY, ORCPT
    # Recomputed at each EHLO, never accumulated (deviation, CHANGES.rst).
    self.command_size_limits["MAIL"] = self.command_size_limit + size_allowance
    if self.tls_context and not self._tls_active:
        lines.append("250-STARTTLS")
    if auth:
        lines.append(self._auth.ehlo_line())
    if self.enable_PIPELINING:
        lines.append("250-PIPELINING")
    if self.enable_ENHANCEDSTATUSCODES:
        lines.append("250-ENHANCEDSTATUSCODES")
    if self.enable_DSN:
        lines.append("250-DSN")
    if self.enable_CHUNKING:
        lines.append("250-CHUNKING")
        if not self._decode_data:
            lines.append("250-BINARYMIME")
    return lines


async def _ehlo(self: SMTP, hostname: str) -> None:
    """EHLO (and LMTP's LHLO) once the argument has been checked."""
    assert self.session is not None
    self._set_rset_state()
    self.session.extended_smtp = True
    lines = self._ehlo_lines()
    ehlo_hook = getattr(self, "ehlo_hook", None)
    if ehlo_hook is not None:
        warnings.warn(
            "Use handler.handle_EHLO() instead of .ehlo_hook()",
            DeprecationWarning,
            stacklevel=2,
        )
    if self._ehlo_hook_ver is None:
        self.session.host_name = hostname
        lines.append("250 HELP")
    elif self._ehlo_hook_ver == "old":
        for line in lines:
            await self.push(line)
        if ehlo_hook is not None:
            await self._user_code(ehlo_hook)
        await self.push(await self._call_handler_hook("EHLO", hostname))
        return
    else:
        lines.append("250 HELP")
        lines = await self._call_handler_hook("EHLO", hostname, lines)
    if ehlo_hook is None:
        await self._push_lines(lines)
        return
    # Deviation (CHANGES.rst): the deprecated ehlo_hook runs just before
    # the final line, as upstream documented, not before the first.
    await self._push_lines(lines[:-1])
    await self._user_code(ehlo_hook)
    await self._push_lines(lines[-1:])


@syntax("NOOP [ignored]")
async def smtp_NOOP(self: SMTP, arg: Optional[str]) -> None:
    status = await self._call_handler_hook("NOOP", arg)
    await self.push(self._code("250 OK", "2.0.0") if status is MISSING else status)


@syntax("QUIT")
async def smtp_QUIT(self: SMTP, arg: Optional[str]) -> None:
    if arg:
        await self.push(self._code("501 Syntax: QUIT", "5.5.4"))
        return
    status = await self._call_handler_hook("QUIT")
    await self.push(self._code("221 Bye", "2.0.0") if status is MISSING else status)
    self._close()


@syntax("RSET")
async def smtp_RSET(self: SMTP, arg: Optional[str]) -> None:
    if arg:
        await self.push(self._code("501 Syntax: RSET", "5.5.4"))
        return
    self._set_rset_state()
    rset_hook = getattr(self, "rset_hook", None)
    if rset_hook is not None:
        warnings.warn(
            "Use handler.handle_RSET() instead of .rset_hook()",
            DeprecationWarning,
            stacklevel=2,
        )
        await self._user_code(rset_hook)
    status = await self._call_handler_hook("RSET")
    await self.push(self._code("250 OK", "2.0.0") if status is MISSING else status)


@syntax("VRFY <address>")
async def smtp_VRFY(self: SMTP, arg: Optional[str]) -> None:
    if await self.check_auth_needed("VRFY"):
        return
    if not arg:
        await self.push(self._code("501 Syntax: VRFY <address>", "5.5.4"))
        return
    address, _ = self._getaddr(arg)
    if address is None:
        # Only MAIL and RCPT refuse "<a@b"; VRFY keeps accepting free
        # text, as upstream did (docs/decisions.rst, "Address syntax").
        address, _ = get_address(arg, self.local_part_limit, require_closing_bracket=False)
    if address is None:
        # Echo no control bytes (CHANGES.rst) and, with SMTPUTF8, no
        # undecodable bytes (surrogates would make push() raise).
        shown = control_chars_to_question_marks(arg).encode("utf-8", "replace").decode()
        await self.push(self._code(f"502 Could not VRFY {shown}", "5.1.3"))
        return
    status = await self._call_handler_hook("VRFY", address)
    if status is MISSING:
        status = self._code(
            "252 Cannot VRFY user, but will accept message and attempt delivery", "2.0.0"
        )
    await self.push(status)


async def smtp_EXPN(self: SMTP, arg: Optional[str]) -> None:
    await self.push(self._code("502 EXPN not implemented", "5.5.1"))


@syntax("HELP [command]")
async def smtp_HELP(self: SMTP, arg: Optional[str]) -> None:
    if await self.check_auth_needed("HELP"):
        return
    assert self.session is not None
    code = 250
    if arg:
        method = self._command_method(arg.upper())
        if method is not None and self._syntax_available(method):
            help_str: str = method.__smtp_syntax__  # type: ignore[attr-defined]
            extended = method.__smtp_syntax_extended__  # type: ignore[attr-defined]
            if self.session.extended_smtp and extended:
                help_str += extended
            await self.push(self._code(f"250 Syntax: {help_str}", "2.0.0"))
            return
        code = 501
    commands = " ".join(
        sorted(
            n for n in self._smtp_commands if self._syntax_available(self._command_method(n))
        )
    )
    enhanced = "2.0.0" if str(code) == "250" else "5.5.4"
    await self.push(self._code(f"{code} Supported commands: {commands}", enhanced))
