"""The mail transaction: MAIL, RCPT, DATA and BDAT for the ``SMTP`` class.

Reading the DATA content is the hot path: :meth:`_read_data` hands everything
received so far to the pure ``DataReader`` (``_framing``) at each wake-up,
never one line at a time, and passes the pieces it takes out of the buffer
to the message's ``Incoming`` (``_message_body``): kept for ``handle_DATA``,
or streamed to ``handle_DATA_STREAM``.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from aiosmtpd import metrics as _m
from aiosmtpd._dsn import MailParameters, take_mail_parameters, take_rcpt_parameters
from aiosmtpd._framing import DataError, DataReader, parse_bdat
from aiosmtpd._hooks import MISSING, syntax
from aiosmtpd._inline import is_own
from aiosmtpd._message_body import (
    BARE_LINE_ENDING,
    CONNECTION_LOST,
    LINE_TOO_LONG,
    NOT_ASCII,
    TOO_MUCH_DATA,
    TRANSACTION_RESET,
    Incoming,
)

if TYPE_CHECKING:  # pragma: no cover
    from aiosmtpd.smtp import SMTP

log = logging.getLogger("mail.log")


# The server's own 250s of a transaction, indexed by enable_ENHANCEDSTATUSCODES
# (a tuple, not a _code() call: these go out for every message).
_MAIL_OK = ("250 OK", "250 2.1.0 OK")
_RCPT_OK = ("250 OK", "250 2.1.5 OK")
_DATA_OK = ("250 OK", "250 2.0.0 OK")


def _as_coroutine(func: Callable[..., Any]) -> Callable[..., Any]:
    async def call(*args: Any) -> Any:
        return func(*args)

    return call


def _accepts(status: Any) -> bool:
    """Whether a handler's verdict accepts the message (for the metrics):
    a 2xx reply, or for LMTP a list of replies with at least one."""
    if isinstance(status, (list, tuple)):
        return any(_accepts(reply) for reply in status)
    if isinstance(status, bytes):
        return status[:1] == b"2"
    return isinstance(status, str) and status[:1] == "2"


# MAIL, RCPT and DATA of an ``SMTP`` connection.


def _syntax_error(self: SMTP, text: str, extended: str) -> str:
    assert self.session is not None
    if self.session.extended_smtp:
        return self._code(f"501 Syntax: {text}{extended}", "5.5.4")
    return self._code(f"501 Syntax: {text}", "5.5.4")


@syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
async def smtp_MAIL(self: SMTP, arg: Optional[str]) -> None:
    if await self.check_helo_needed():
        return
    if await self.check_auth_needed("MAIL"):
        return
    assert self.session is not None and self.envelope is not None
    syntaxerr = self._syntax_error("MAIL FROM: <address>", " [SP <mail-parameters>]")
    if arg is None:
        await self.push(syntaxerr)
        return
    arg = self._strip_command_keyword("FROM:", arg)
    if arg is None:
        await self.push(syntaxerr)
        return
    address, rest = self._getaddr(arg)
    if address is None:
        await self.push("553 5.1.3 Error: malformed address")
        return
    if not address or (rest and not self.session.extended_smtp):
        await self.push(syntaxerr)
        return
    if self.envelope.mail_from:
        await self.push(self._code("503 Error: nested MAIL command", "5.5.1"))
        return
    mail_options = (rest or "").upper().split()
    params = self._getparams(mail_options)
    if params is None:
        await self.push(syntaxerr)
        return
    if not self._decode_data:
        body = params.pop("BODY", "7BIT")
        if body not in ("7BIT", "8BITMIME") and not (
            body == "BINARYMIME" and self.enable_CHUNKING
        ):
            await self.push(
                self._code("501 Error: BODY can only be one of 7BIT, 8BITMIME", "5.5.4")
            )
            return
    smtputf8 = params.pop("SMTPUTF8", False)
    if not isinstance(smtputf8, bool):
        await self.push(self._code("501 Error: SMTPUTF8 takes no arguments", "5.5.4"))
        return
    if smtputf8 and not self.enable_SMTPUTF8:
        await self.push(self._code("501 Error: SMTPUTF8 disabled", "5.5.4"))
        return
    self.envelope.smtp_utf8 = smtputf8
    size = params.pop("SIZE", None)
    if size is not None:
        # Only ASCII digits: int() would accept other Unicode digits,
        # or raise on some of them (CHANGES.rst, "SIZE= with non-ASCII digits").
        if isinstance(size, bool) or not (size.isascii() and size.isdigit()):
            await self.push(syntaxerr)
            return
        if self.data_size_limit and int(size) > self.data_size_limit:
            await self.push(
                self._code(
                    "552 Error: message size exceeds fixed maximum message size", "5.3.4"
                )
            )
            return
    auth_offered = self._auth.advertised(self._tls_active)
    if (self.enable_DSN or auth_offered) and params:
        try:
            extras = take_mail_parameters(
                params, rest or "", dsn=self.enable_DSN, auth=auth_offered
            )
        except ValueError as bad:
            await self.push(bad.args[0])
            return
        self._remember_mail_parameters(extras)
    if params:
        await self.push(
            self._code("555 MAIL FROM parameters not recognized or not implemented", "5.5.4")
        )
        return
    status = await self._call_handler_hook("MAIL", address, mail_options)
    if status is MISSING:
        self.envelope.mail_from = address
        self.envelope.mail_options.extend(mail_options)
        status = _MAIL_OK[self.enable_ENHANCEDSTATUSCODES]
    log.info("%r sender: %s", self.session.peer, address)
    if self._metrics is not None and self.envelope.mail_from:
        self._metrics.values[_m.TRANSACTIONS] += 1
    await self.push(status)


@syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
async def smtp_RCPT(self: SMTP, arg: Optional[str]) -> None:
    if await self.check_helo_needed():
        return
    if await self.check_auth_needed("RCPT"):
        return
    assert self.session is not None and self.envelope is not None
    if not self.envelope.mail_from:
        await self.push(self._code("503 Error: need MAIL command", "5.5.1"))
        return
    syntaxerr = self._syntax_error("RCPT TO: <address>", " [SP <mail-parameters>]")
    if arg is None:
        await self.push(syntaxerr)
        return
    arg = self._strip_command_keyword("TO:", arg)
    if arg is None:
        await self.push(syntaxerr)
        return
    address, rest = self._getaddr(arg)
    # Deviation (CHANGES.rst): there is no null forward-path.
    if address is None or address == "<>":
        await self.push("553 5.1.3 Error: malformed address")
        return
    if not address or (rest and not self.session.extended_smtp):
        await self.push(syntaxerr)
        return
    rcpt_options = (rest or "").upper().split()
    params = self._getparams(rcpt_options)
    if params is None:
        await self.push(syntaxerr)
        return
    dsn = None
    if self.enable_DSN and params:
        try:
            dsn = take_rcpt_parameters(params, rest or "")
        except ValueError as bad:
            await self.push(bad.args[0])
            return
    if params:
        await self.push(
            self._code("555 RCPT TO parameters not recognized or not implemented", "5.5.4")
        )
        return
    limit = self._max_recipients
    if limit is not None and len(self.envelope.rcpt_tos) >= limit:
        # RFC 5321 4.5.3.1.10: temporary, so the client sends the rest
        # in another transaction (Postfix's wording).
        log.warning("%r too many recipients", self.session.peer)
        await self.push("452 4.5.3 Error: too many recipients")
        return
    status = await self._call_handler_hook("RCPT", address, rcpt_options)
    if status is MISSING:
        self.envelope.rcpt_tos.append(address)
        self.envelope.rcpt_options.extend(rcpt_options)
        status = _RCPT_OK[self.enable_ENHANCEDSTATUSCODES]
    if dsn is not None and address in self.envelope.rcpt_tos:
        recipients = self.envelope.dsn_recipients
        if not isinstance(recipients, dict):  # the shared empty default
            recipients = self.envelope.dsn_recipients = {}
        recipients[address] = dsn
    log.info("%r recip: %s", self.session.peer, address)
    await self.push(status)


@syntax("DATA")
async def smtp_DATA(self: SMTP, arg: Optional[str]) -> None:
    if await self.check_helo_needed():
        return
    if await self.check_auth_needed("DATA"):
        return
    assert self.session is not None and self.envelope is not None
    if not self.envelope.rcpt_tos:
        await self.push(self._code("503 Error: need RCPT command", "5.5.1"))
        return
    if arg:
        await self.push(self._code("501 Syntax: DATA", "5.5.4"))
        return
    if self.enable_CHUNKING and await self._chunking_refuses_data():
        return
    await self.push("354 End data with <CR><LF>.<CR><LF>")
    if self._message is not None:
        self._abandon_message(TRANSACTION_RESET)  # a BDAT message of a reset transaction
    incoming = self._message = self._incoming(stuffed=True)
    # One coroutine for the whole message: this runs for every message.
    try:
        try:
            reader = await self._read_data()
        except BaseException:  # lost, cancelled, or closed with its Task
            log.info("Connection lost during DATA")
            incoming.abandon(CONNECTION_LOST)
            raise
        incoming.size = reader.size
        if reader.error is DataError.TOO_LONG:
            incoming.abandon(LINE_TOO_LONG)
            await self._data_failed(
                self._code("500 Line too long (see RFC5321 4.5.3.1.6)", "5.6.0")
            )
        elif reader.error is DataError.TOO_MUCH:
            incoming.abandon(TOO_MUCH_DATA)
            await self._data_failed(self._code("552 Error: Too much mail data", "5.3.4"))
        elif incoming.unseen:
            await self._deliver()  # nothing to check, join or tell: only the verdict
        else:
            await self._deliver_message(incoming)
    finally:
        self._message = None


def _incoming(self: SMTP, stuffed: bool) -> Incoming:
    """Where the message about to arrive goes: nowhere when nothing can
    see it (``_message_unseen``), to a ``handle_DATA_STREAM`` hook as it
    arrives, or kept for ``handle_DATA``."""
    assert self.envelope is not None
    binary = not stuffed and "BODY=BINARYMIME" in self.envelope.mail_options
    incoming = Incoming(
        stuffed=stuffed,
        strict=self._strict_line_endings and not binary,
        keep=not (stuffed and self._message_unseen()),
    )
    hook = self._handle_hooks.get("DATA_STREAM")
    if hook is not None:
        # Its own Task, now: it reads while the message arrives.
        incoming.stream_to(self.loop, hook, self, self.session, self.envelope)
        # A message handle_DATA could not have decoded is refused here too.
        incoming.ascii_only = self._decode_data and not self.enable_SMTPUTF8
    return incoming


async def _deliver_message(self: SMTP, incoming: Incoming) -> None:
    """Check, decode and deliver a message received whole: DATA's, or
    BDAT's at its LAST chunk."""
    assert self.envelope is not None
    failure = incoming.finish()
    if failure is BARE_LINE_ENDING:
        await self._data_failed("554 5.6.0 Error: bare CR or LF in message data")
        return
    if failure is NOT_ASCII:
        await self._data_failed(self._code("500 Error: strict ASCII mode", "5.6.0"))
        return
    if incoming.pieces is None:
        # Streamed to a hook, or nothing can see it: only the verdict.
        await self._deliver()
        return
    original_content = await incoming.content(self.loop)
    content: Union[bytes, str] = original_content
    if self._decode_data:
        if self.enable_SMTPUTF8:
            content = original_content.decode("utf-8", errors="surrogateescape")
        else:
            try:
                content = original_content.decode("ascii", errors="strict")
            except UnicodeDecodeError:
                # Deviation (CHANGES.rst): reset here too, as after the
                # other DATA errors.
                await self._data_failed(self._code("500 Error: strict ASCII mode", "5.6.0"))
                return
    self.envelope.content = content
    self.envelope.original_content = original_content
    await self._deliver()


def _remember_mail_parameters(self: SMTP, extras: MailParameters) -> None:
    """DSN's RET and ENVID, and AUTH (never trusted from a client that
    has not authenticated: RFC 4954 section 5), on the envelope."""
    assert self.session is not None and self.envelope is not None
    envelope = self.envelope
    if extras.ret is not None:
        envelope.dsn_ret = extras.ret
    if extras.envid is not None:
        envelope.dsn_envid = extras.envid
    if extras.auth is not None:
        envelope.mail_auth = extras.auth if self.session.authenticated else "<>"

# -- BDAT (RFC 3030), with enable_CHUNKING ------------------------------------------


@syntax("BDAT <size> [LAST]", when="enable_CHUNKING")
async def smtp_BDAT(self: SMTP, arg: Optional[str]) -> None:
    parsed = parse_bdat(arg)
    if parsed is None:
        await self.push(self._code("501 Syntax: BDAT <size> [LAST]", "5.5.4"))
        # The chunk that follows cannot be told from commands: end here
        # rather than run the message as commands.
        self._close()
        return
    size, last = parsed
    assert self.session is not None
    # The chunk follows the command whatever the reply: it is always read
    # (and dropped when refused), so that none of it is taken for commands.
    if await self.check_helo_needed() or await self.check_auth_needed("BDAT"):
        await self._read_chunk(size, None)
        return
    envelope = self.envelope
    assert envelope is not None
    # The message so far lives on the envelope, so that RSET and a new
    # transaction (a new envelope) drop it; getattr: an envelope from
    # a _create_envelope() override need not be an Envelope.
    began = getattr(envelope, "_bdat", None) is not None
    incoming = self._message if began else None
    refusal = None
    if not envelope.mail_from:
        refusal = self._code("503 Error: need MAIL command", "5.5.1")
    elif not envelope.rcpt_tos:
        refusal = self._code("503 Error: need RCPT command", "5.5.1")
    elif getattr(envelope, "_bdat_failed", False):
        refusal = "503 5.5.1 Error: an earlier BDAT failed, send RSET"
    elif self.data_size_limit and (incoming.size if incoming else 0) + size > (
        self.data_size_limit
    ):
        refusal = self._code("552 Error: Too much mail data", "5.3.4")
        envelope._bdat_failed = True  # type: ignore[attr-defined]
        if incoming is not None:
            incoming.abandon(TOO_MUCH_DATA)
    if not began:
        # Even a refused chunk begins BDAT: DATA is refused from now on.
        envelope._bdat = True  # type: ignore[attr-defined]
    if refusal is None and incoming is None:
        self._abandon_message(TRANSACTION_RESET)  # one of an older envelope
        incoming = self._message = self._incoming(stuffed=False)
    try:
        await self._read_chunk(size, None if refusal is not None else incoming)
    except BaseException:
        self._abandon_message(CONNECTION_LOST)
        raise
    if refusal is not None:
        await self.push(refusal)
        return
    if not last:
        await self.push(f"250 2.0.0 {size} octets received")
        return
    assert incoming is not None
    envelope._bdat = None  # type: ignore[attr-defined]
    try:
        await self._deliver_message(incoming)
    finally:
        self._message = None


def _abandon_message(self: SMTP, reason: str) -> None:
    """Drop the message being received, if any (telling a stream hook)."""
    incoming, self._message = self._message, None
    if incoming is not None:
        incoming.abandon(reason)


async def _chunking_refuses_data(self: SMTP) -> bool:
    """DATA in a transaction that began BDAT, or that is BINARYMIME
    (RFC 3030 sections 2 and 3): 503, without reading any message."""
    assert self.envelope is not None
    if getattr(self.envelope, "_bdat", None) is not None:
        reply = "503 5.5.1 Error: DATA after BDAT, send RSET"
    elif "BODY=BINARYMIME" in self.envelope.mail_options:
        reply = "503 5.5.1 Error: BODY=BINARYMIME needs BDAT"
    else:
        return False
    await self.push(reply)
    return True


def _message_begins(self: SMTP) -> Optional[asyncio.TimerHandle]:
    """Message bytes come now (the receiver is in the message phase):
    read them, whatever the command backlog, within data_timeout;
    returns its timer."""
    self._resume_reading()
    if self._data_timeout is None:
        return None
    return self.loop.call_later(self._data_timeout, self._data_expired)


def _message_ends(self: SMTP, deadline: Optional[asyncio.TimerHandle]) -> None:
    self._receiver.end()  # back to commands if the message was cut short
    if deadline is not None:
        deadline.cancel()


async def _read_chunk(self: SMTP, size: int, into: Optional[Incoming]) -> None:
    """Take the next ``size`` bytes the client sends, and hand them to
    ``into`` as they come (None: drop them)."""
    receiver = self._receiver
    receiver.begin_chunk(size)
    deadline = self._message_begins()
    try:
        while receiver.chunk_left():
            piece = receiver.chunk(keep=into is not None)
            if piece is None:
                await self._wait_for_data()
                continue
            self._reset_timeout()  # a client that keeps sending is not idle
            if into is not None:
                room = into.add(piece)
                if room is not None:
                    await room  # a stream hook is slow: so is this client
    finally:
        self._message_ends(deadline)


def _message_unseen(self: SMTP) -> bool:
    """True when nothing can see the content of the message: no hook
    reads it (a handler such as Sink), no check or log needs it, and no
    subclass can reach it.  DATA then keeps none of it in memory."""
    cls = type(self)
    hooks = self._handle_hooks
    return (
        "DATA" not in hooks
        and "DATA_STREAM" not in hooks
        and getattr(self.event_handler, "process_message", None) is None
        and not self._decode_data
        and not self._strict_line_endings
        and self._inline
        and is_own(cls, "_set_post_data_state")
        and is_own(cls, "_create_envelope")
        and not log.isEnabledFor(logging.DEBUG)
    )


async def _data_failed(self: SMTP, status: str) -> None:
    """Reject received DATA: reset the transaction and reply (LMTP
    overrides this to answer once per recipient)."""
    self._set_post_data_state()
    await self.push(status)


async def _delivery_status(self: SMTP) -> Any:
    """The handler's verdict on the received message, or MISSING."""
    message = self._message
    if (
        "DATA" in self._handle_hooks
        or hasattr(self.event_handler, "process_message")
        or (message is not None and message.hook is not None)
    ):
        # No goodbye (drain, deadline) while the handler delivers.
        departure = self._departure
        departure.delivering = True
        try:
            status = await self._handler_verdict()
        finally:
            departure.delivering = False
    else:
        status = MISSING  # no handler code: the server's own 250
    metrics = self._metrics
    if metrics is not None and (status is MISSING or _accepts(status)):
        metrics.values[_m.MESSAGES] += 1
        metrics.values[_m.MESSAGE_BYTES] += message.size if message is not None else 0
    return status


async def _handler_verdict(self: SMTP) -> Any:
    assert self.session is not None and self.envelope is not None
    message = self._message
    if message is not None and message.hook is not None:
        # handle_DATA_STREAM's return value, as handle_DATA's would be.
        return await message.hook
    if "DATA" in self._handle_hooks:
        return await self._call_handler_hook("DATA")
    process_message = getattr(self.event_handler, "process_message", None)
    if process_message is None:
        return MISSING
    warnings.warn(
        "Use handler.handle_DATA() instead of .process_message()",
        DeprecationWarning,
        stacklevel=2,
    )
    envelope = self.envelope
    args = (self.session.peer, envelope.mail_from, envelope.rcpt_tos, envelope.content)
    if not asyncio.iscoroutinefunction(process_message):
        process_message = _as_coroutine(process_message)
    status = await self._user_code(process_message, *args)
    return MISSING if status is None else status


async def _deliver(self: SMTP) -> None:
    """Hand the received message to the handler and reply (LMTP overrides)."""
    status = await self._delivery_status()
    self._set_post_data_state()
    await self.push(_DATA_OK[self.enable_ENHANCEDSTATUSCODES] if status is MISSING else status)


async def _read_data(self: SMTP) -> DataReader:
    """Read DATA content up to the terminator, in as few steps as the
    network allows: each wake-up scans everything received so far."""
    incoming = self._message
    assert incoming is not None
    reader = DataReader(self.data_size_limit, self.line_length_limit, keep=not incoming.unseen)
    pieces = reader.pieces
    receiver = self._receiver
    receiver.begin_message(reader)
    deadline = self._message_begins()
    try:
        if not receiver.buf:
            await self._wait_for_data()  # the client waited for our 354
        while True:
            done, active = receiver.message()
            room = None
            if pieces:
                for piece in pieces:
                    room = incoming.add(piece) or room
                pieces.clear()
            if done:
                if room is not None:
                    await room
                return reader
            # Deviation (CHANGES.rst): a client that keeps completing
            # lines is not idle (the receiver tells).
            if active:
                self._reset_timeout()
            if room is not None:
                await room  # a stream hook is slow: so is this client
                continue  # with what arrived meanwhile
            await self._wait_for_data()
    finally:
        self._message_ends(deadline)
