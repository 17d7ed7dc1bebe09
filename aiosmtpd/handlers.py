"""Ready-made handlers to plug into an SMTP server.

A handler is any object; the server looks for ``handle_<VERB>`` coroutines on
it by name. The classes here cover the usual needs: discard (``Sink``), print
(``Debugging``), relay (``Proxy``), and hand over parsed messages
(``Message``, ``AsyncMessage``, ``Mailbox``). Classes with a ``from_cli``
classmethod can be chosen with ``python -m aiosmtpd -c``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from abc import ABCMeta, abstractmethod
from typing import TYPE_CHECKING, Any, Optional, TextIO, Union

from aiosmtpd._loop import get_or_new_eventloop

if TYPE_CHECKING:  # pragma: no cover
    import email.message
    from argparse import ArgumentParser

    from aiosmtpd.smtp import SMTP, Envelope, Session

    # What a relay attempt reports: refused recipient -> (code, server text).
    RefusedRecipients = dict[str, tuple[int, bytes]]

# Order fixed by the public API, not alphabetical.
__all__ = ["Debugging", "Proxy", "Sink", "Message", "AsyncMessage", "Mailbox"]  # noqa: RUF022

log = logging.getLogger("mail.debug")

EMPTYBYTES = b""
COMMASPACE = ", "
CRLF = b"\r\n"
NLCRE = re.compile(rb"\r\n|\r|\n")

RELAY_TEMPFAIL = "451 4.4.1 Error: relay failed, try again later"
RELAY_PERMFAIL = "554 5.0.0 Error: relay failed"


class Debugging:
    """Print every received message to a text stream (stdout by default)."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        # Captured once: later reassignments of sys.stdout (e.g. by test
        # runners) must not redirect an already-built handler.
        self.stream: TextIO = sys.stdout if stream is None else stream

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Debugging:
        if not args:
            return cls(None)
        if len(args) == 1:
            if args[0] == "stdout":
                return cls(sys.stdout)
            if args[0] == "stderr":
                return cls(sys.stderr)
        parser.error("Debugging usage: [stdout|stderr]")

    def _print_message_content(self, peer: Any, data: Union[bytes, str]) -> None:
        in_headers = True
        for line in data.splitlines():
            if in_headers and not line:
                # The header block ends at the first empty line; that is
                # where the peer is shown.
                print(f"X-Peer: {peer!r}", file=self.stream)
                in_headers = False
            if isinstance(line, bytes):
                line = line.decode("utf-8", "replace")
            print(line, file=self.stream)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # Explicit checks rather than ``assert`` so that ``python -O`` keeps them.
        if session.peer is None or envelope.content is None:
            raise AssertionError("no peer or no content")
        print("---------- MESSAGE FOLLOWS ----------", file=self.stream)
        printed_options = False
        if envelope.mail_options:
            print(f"mail options: {envelope.mail_options!r}", file=self.stream)
            printed_options = True
        if any(envelope.rcpt_options):
            print(f"rcpt options: {envelope.rcpt_options!r}", file=self.stream)
            printed_options = True
        if printed_options:
            print(file=self.stream)
        self._print_message_content(session.peer, envelope.content)
        print("------------ END MESSAGE ------------", file=self.stream)
        return "250 OK"


def _peer_host(peer: Any) -> str:
    """The part of a peer address worth putting in a relayed X-Peer header.

    Unix-socket peers are plain strings (often empty), so only sequences are
    indexed. Control characters are masked so a strange peer name can never
    break the header block.
    """
    if isinstance(peer, (tuple, list)):
        host = str(peer[0]) if peer else ""
    else:
        host = str(peer) if peer else ""
    return "".join(c if " " <= c < "\x7f" else "?" for c in host)


class Proxy:
    """Relay every message to another SMTP server.

    The relay runs ``smtplib`` in a worker thread so the event loop keeps
    serving other sessions while the upstream server is slow.
    """

    def __init__(self, remote_hostname: str, remote_port: int, *, timeout: float = 300) -> None:
        self._hostname = remote_hostname
        self._port = remote_port
        self._timeout = timeout

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        if isinstance(content, str):
            # Relay the bytes as received, never a re-encoding of decoded text.
            content = envelope.original_content
        if content is None:
            raise AssertionError("no content")
        lines = content.splitlines(keepends=True)
        # Upstream's loop semantics: without an empty line the header goes
        # before the last line (index stays at the last one), or first if
        # there are no lines at all.
        index = max(len(lines) - 1, 0)
        ending = CRLF
        for i, line in enumerate(lines):
            if NLCRE.match(line):
                index, ending = i, line
                break
        host = _peer_host(session.peer)
        if host:
            lines.insert(index, b"X-Peer: " + host.encode("ascii") + ending)
        data = EMPTYBYTES.join(lines)
        mail_from = envelope.mail_from or ""
        rcpt_tos = list(envelope.rcpt_tos)
        loop = asyncio.get_running_loop()
        refused = await loop.run_in_executor(None, self._deliver, mail_from, rcpt_tos, data)
        log.info("we got some refusals: %s", refused)
        return self._reply(rcpt_tos, refused)

    @staticmethod
    def _reply(rcpt_tos: list[str], refused: RefusedRecipients) -> str:
        if any(rcpt not in refused for rcpt in rcpt_tos):
            return "250 OK"
        # Nobody got the mail: say so, so that the client keeps it queued
        # (temporary) or bounces it (permanent) instead of it vanishing.
        temporary = any(code == -1 or 400 <= code < 500 for code, _ in refused.values())
        return RELAY_TEMPFAIL if temporary else RELAY_PERMFAIL

    def _deliver(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> RefusedRecipients:
        # Imported here, as the email and mailbox modules below: a server
        # that uses only Sink should not carry them (about 1.5 MiB).
        import smtplib

        refused: RefusedRecipients = {}
        client = smtplib.SMTP(timeout=self._timeout)
        try:
            client.connect(self._hostname, self._port)
            try:
                refused = client.sendmail(mail_from, rcpt_tos, data)
            finally:
                try:
                    client.quit()
                except (OSError, smtplib.SMTPException):
                    # The transaction outcome is already known; a failing
                    # QUIT must not turn a delivered message into an error.
                    pass
        except smtplib.SMTPRecipientsRefused as e:
            log.info("got SMTPRecipientsRefused")
            refused = e.recipients
        except (OSError, smtplib.SMTPException) as e:
            log.exception("got %s", e.__class__)
            errcode: int = getattr(e, "smtp_code", -1)
            errmsg: bytes = getattr(e, "smtp_error", b"ignore")
            for rcpt in rcpt_tos:
                refused[rcpt] = (errcode, errmsg)
        finally:
            client.close()
        return refused


class Sink:
    """Accept every message and throw it away (no hooks: server defaults apply)."""

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Sink:
        if len(args) > 0:
            parser.error("Sink handler does not accept arguments")
        return cls()


class MessageBase(metaclass=ABCMeta):
    """Common part of the handlers that turn DATA into an ``email`` message."""

    def __init__(self, message_class: Optional[type[email.message.Message]] = None) -> None:
        self.message_class = message_class

    def prepare_message(self, session: Session, envelope: Envelope) -> email.message.Message:
        from email import message_from_bytes, message_from_string

        data: Any = envelope.content
        message: email.message.Message
        if isinstance(data, (bytes, bytearray)):
            if self.message_class is None:
                message = message_from_bytes(data)
            else:
                message = message_from_bytes(data, self.message_class)
        elif isinstance(data, str):
            if self.message_class is None:
                message = message_from_string(data)
            else:
                message = message_from_string(data, self.message_class)
        else:
            raise TypeError(f"Expected str or bytes, got {type(data)}")
        # Appended, never replacing: a forged incoming X-Peer stays visible
        # next to the real one.
        message["X-Peer"] = str(session.peer)
        # Assigned as is, even None (upstream behaviour).
        mail_from: Any = envelope.mail_from
        message["X-MailFrom"] = mail_from
        message["X-RcptTo"] = COMMASPACE.join(envelope.rcpt_tos)
        return message

    @abstractmethod
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raise NotImplementedError  # pragma: no cover


class Message(MessageBase, metaclass=ABCMeta):
    """Parse each message and pass it to the synchronous ``handle_message``."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        message = self.prepare_message(session, envelope)
        self.handle_message(message)
        return "250 OK"

    @abstractmethod
    def handle_message(self, message: email.message.Message) -> None:
        raise NotImplementedError  # pragma: no cover


class AsyncMessage(MessageBase, metaclass=ABCMeta):
    """Parse each message and await the coroutine ``handle_message``."""

    def __init__(
        self,
        message_class: Optional[type[email.message.Message]] = None,
        *,
        loop: Optional[asyncio.AbstractEventLoop] = None,
    ) -> None:
        super().__init__(message_class)
        self.loop = loop or get_or_new_eventloop()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        message = self.prepare_message(session, envelope)
        await self.handle_message(message)
        return "250 OK"

    @abstractmethod
    async def handle_message(self, message: email.message.Message) -> None:
        raise NotImplementedError  # pragma: no cover


class Mailbox(Message):
    """Store every message in a Maildir (created if missing)."""

    def __init__(
        self,
        mail_dir: Union[str, os.PathLike[str]],
        message_class: Optional[type[email.message.Message]] = None,
    ) -> None:
        import mailbox

        self.mailbox = mailbox.Maildir(mail_dir)
        self.mail_dir = mail_dir
        super().__init__(message_class)

    def handle_message(self, message: email.message.Message) -> None:
        self.mailbox.add(message)

    def reset(self) -> None:
        self.mailbox.clear()

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Mailbox:
        if len(args) < 1:
            parser.error("The directory for the maildir is required")
        elif len(args) > 1:
            parser.error("Too many arguments for Mailbox handler")
        return cls(args[0])
