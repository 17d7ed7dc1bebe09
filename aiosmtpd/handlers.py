"""Ready-made handlers to plug into an SMTP server.

A handler is any object; the server looks for ``handle_<VERB>`` coroutines on
it by name. The classes here cover the usual needs: discard (``Sink``), print
(``Debugging``), relay (``Proxy``), and hand over parsed messages
(``Message``, ``AsyncMessage``, ``Mailbox``); and, through the
``handle_DATA_STREAM`` hook, store or relay messages of any size as they
arrive (``Maildir``, ``StreamingProxy``). Classes with a ``from_cli``
classmethod can be chosen with ``python -m aiosmtpd -c``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import socket
import sys
import threading
import time
from abc import ABCMeta, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, Optional, TextIO, TypeVar, Union

from aiosmtpd._loop import get_or_new_eventloop

if TYPE_CHECKING:  # pragma: no cover
    import email.message
    import mailbox
    from argparse import ArgumentParser
    from collections.abc import AsyncIterable

    from aiosmtpd.smtp import SMTP, Envelope, Session

    # What a relay attempt reports: refused recipient -> (code, server text).
    RefusedRecipients = dict[str, tuple[int, bytes]]

# 1.4.6's list, in its order: ``import *`` gives what it gave.  The
# handlers added since (Maildir, StreamingProxy) are imported by name.
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
        return cls(_maildir_argument(parser, args, "Mailbox"))


def _maildir_argument(parser: ArgumentParser, args: tuple[str, ...], handler: str) -> str:
    """The one command-line argument of a Maildir-writing handler."""
    if len(args) < 1:
        parser.error("The directory for the maildir is required")
    elif len(args) > 1:
        parser.error(f"Too many arguments for {handler} handler")
    return args[0]


# ------------------------------------------------------------ streaming to disk

_T = TypeVar("_T")

STORE_TEMPFAIL = "451 4.3.0 Error: could not store the message, try again later"

# Part of every maildir file name this process makes; itertools.count's
# next() is atomic, so worker threads may draw from it at once.
_maildir_counter = itertools.count(1)


def _maildir_name() -> str:
    """A unique maildir file name, made as :class:`mailbox.Maildir` makes them."""
    now = time.time()
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_maildir_counter)}.{host}"


def _header_value(value: str) -> bytes:
    """*value* as the text of one header line: control characters masked."""
    text = "".join(c if c >= " " and c != "\x7f" else "?" for c in value)
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _StoreFailed(Exception):
    """A file operation of a delivery failed; ``__cause__`` is the OSError."""


class _MaildirDelivery:
    """One message on its way into a maildir: a file in ``tmp/``, then ``new/``.

    Every method but :meth:`discard` runs in a worker thread, one at a time
    (the handler awaits each before it starts the next). The lock and the
    ``_closed`` flag matter only when the handler is cancelled while one of
    them is running or queued in the executor: :meth:`discard`, called from
    the event loop, then waits for the running one to finish, and a queued
    one that starts after it does nothing. Writes go through the raw file
    descriptor: the handler batches the chunks itself, so a buffer of the
    file object would only add a copy (and a flush on close).
    """

    MAX_CLASHES = 10

    def __init__(self, root: str) -> None:
        self._root = root
        self._lock = threading.Lock()
        self._closed = False
        self._fd: Optional[int] = None
        self._name = ""
        self._tmp_path: Optional[str] = None  # to remove if the delivery fails
        self._new_path: Optional[str] = None  # likewise, until it is synced

    def open(self, first: bytes) -> None:
        """Create the file in ``tmp/`` and write *first* (the trace headers)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        with self._lock:
            if self._closed:
                return
            for _ in range(self.MAX_CLASHES):
                name = _maildir_name()
                path = os.path.join(self._root, "tmp", name)
                try:
                    # Mode as mailbox.Maildir creates its files (less the umask).
                    self._fd = os.open(path, flags, 0o666)
                except FileExistsError:
                    continue
                self._name, self._tmp_path = name, path
                break
            else:
                raise FileExistsError(f"name clash in {self._root}/tmp")
            self._write(first)

    def write(self, data: bytes) -> None:
        with self._lock:
            if not self._closed:
                self._write(data)

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise RuntimeError("the delivery file is not open")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def commit(self) -> str:
        """Sync the file, move it into ``new/``, sync ``new/``; return the key."""
        with self._lock:
            if self._closed or self._fd is None or self._tmp_path is None:
                raise RuntimeError("the delivery was discarded")
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp_path, name = self._tmp_path, self._name
            new_dir = os.path.join(self._root, "new")
            for _ in range(self.MAX_CLASHES):
                dest = os.path.join(new_dir, name)
                try:
                    # A link never replaces an existing message (a rename
                    # would); mailbox.Maildir.add does the same.
                    os.link(tmp_path, dest)
                except FileExistsError:
                    name = _maildir_name()
                    continue
                except (AttributeError, PermissionError):
                    # No hard links on this file system.
                    os.rename(tmp_path, dest)
                    self._tmp_path, self._new_path = None, dest
                else:
                    self._new_path = dest
                    os.remove(tmp_path)
                    self._tmp_path = None
                break
            else:
                raise FileExistsError(f"name clash in {new_dir}")
            _fsync_directory(new_dir)
            # Durable: from here on a failure must not remove it.
            self._new_path = None
            self._closed = True
            return name

    def discard(self) -> None:
        """Close and remove whatever this delivery left (never raises)."""
        with self._lock:
            self._closed = True
            if self._fd is not None:
                try:
                    os.close(self._fd)
                except OSError:  # pragma: no cover - a valid descriptor
                    pass
                self._fd = None
            for path in (self._tmp_path, self._new_path):
                if path is None:
                    continue
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
                except OSError:
                    log.exception("cannot remove the partial message %s", path)
            self._tmp_path = self._new_path = None


async def _in_thread(func: Callable[..., _T], *args: Any) -> _T:
    """Run a file operation in the loop's default executor.

    An OSError becomes :class:`_StoreFailed`, so that it is told apart from
    what the message stream raises.
    """
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(None, func, *args)
    except OSError as error:
        raise _StoreFailed(str(error)) from error


class Maildir:
    """Store every message in a Maildir as its bytes arrive (``handle_DATA_STREAM``).

    Each message goes to a new file in ``tmp/``, written in a worker thread in
    batches of about :attr:`write_size` bytes, so neither the event loop nor
    the process's memory depends on the size of the message. The file is
    synced, linked into ``new/`` and the ``new/`` directory synced before the
    client gets ``250 OK``. A message that ends in any other way (the client
    vanished, a limit was broken, the server stopped, a write failed) leaves
    no file behind. The trace headers ``X-Peer``, ``X-MailFrom`` and
    ``X-RcptTo`` are written *before* the message, whose bytes follow
    unchanged.
    """

    #: How many bytes of the message are gathered before they are written out.
    write_size: int = 256 * 1024

    def __init__(self, mail_dir: Union[str, os.PathLike[str]]) -> None:
        import mailbox

        #: The same folder as a :class:`mailbox.Maildir`.
        self.mailbox: mailbox.Maildir = mailbox.Maildir(mail_dir)
        self.mail_dir = mail_dir
        self._root = os.fspath(mail_dir)
        # mailbox.Maildir creates the three folders only along with a new
        # top folder; an existing empty folder must work as well.
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self._root, sub), mode=0o700, exist_ok=True)

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Maildir:
        return cls(_maildir_argument(parser, args, "Maildir"))

    def trace_headers(self, session: Session, envelope: Envelope) -> bytes:
        """The header lines written before the message (CRLF line ends).

        The same three headers as :class:`Mailbox` adds, with control
        characters shown as ``?``. Override to add others, or to return
        ``b""`` to store the message exactly as received.
        """
        mail_from: Optional[str] = envelope.mail_from
        fields = (
            (b"X-Peer", str(session.peer)),
            (b"X-MailFrom", "" if mail_from is None else mail_from),
            (b"X-RcptTo", COMMASPACE.join(envelope.rcpt_tos)),
        )
        return EMPTYBYTES.join(name + b": " + _header_value(value) + CRLF for name, value in fields)

    async def handle_DATA_STREAM(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        body: AsyncIterable[bytes],
    ) -> str:
        delivery = _MaildirDelivery(self._root)
        write_size = self.write_size
        try:
            await _in_thread(delivery.open, self.trace_headers(session, envelope))
            batch: list[bytes] = []
            size = 0
            async for chunk in body:
                batch.append(chunk)
                size += len(chunk)
                if size >= write_size:
                    data = batch[0] if len(batch) == 1 else EMPTYBYTES.join(batch)
                    batch, size = [], 0
                    # While this runs no chunk is taken; once its small
                    # queue is full the server stops reading, and the client
                    # waits instead of memory growing.
                    await _in_thread(delivery.write, data)
            if batch:
                await _in_thread(delivery.write, EMPTYBYTES.join(batch))
            key = await _in_thread(delivery.commit)
        except _StoreFailed as error:
            delivery.discard()
            log.error("cannot store the message in %s: %s", self._root, error.__cause__)
            return STORE_TEMPFAIL
        except BaseException:
            # MessageAborted (the client vanished, a limit was broken, the
            # server stops), a cancellation or a bug: nothing is kept.
            delivery.discard()
            raise
        log.debug("stored message %s in %s", key, self._root)
        return "250 OK"


# ------------------------------------------------------------ streaming relay


class _RelayFailed(Exception):
    """The upstream server refused or failed; *code* is its reply code, or -1
    when there was no usable reply (as smtplib reports a lost connection)."""

    def __init__(self, code: int, text: bytes) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


class _DotStuffer:
    """Message bytes to their DATA wire form, chunk by chunk.

    The same as :mod:`smtplib` does to a whole message: every line end (CRLF,
    a bare CR or a bare LF) becomes CRLF, so that the upstream server cannot
    read an end of data the client never sent, and a line starting with a
    dot gets a second one. A CR that ends a chunk is held back: it may be the
    first half of a CRLF that the next chunk completes.
    """

    def __init__(self) -> None:
        self._held_cr = False
        self._line_start = True

    def feed(self, data: bytes) -> bytes:
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._held_cr = True
        if not data:
            return data
        data = NLCRE.sub(CRLF, data)
        if self._line_start and data[:1] == b".":
            data = b"." + data
        data = data.replace(b"\n.", b"\n..")
        self._line_start = data.endswith(b"\n")
        return data

    def end(self) -> bytes:
        """The rest, an end to an unterminated last line, and the final dot."""
        tail = CRLF if self._held_cr or not self._line_start else EMPTYBYTES
        self._held_cr, self._line_start = False, True
        return tail + b".\r\n"


class _Upstream:
    """Just enough of an SMTP client over asyncio streams to relay one message.

    Every failure (connection, timeout, a reply that is not SMTP) becomes
    :class:`_RelayFailed`, so it is told apart from what the message stream
    raises. Each read and each wait for the send buffer to drain is bounded
    by *timeout*.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout = timeout
        self.extensions: set[str] = set()

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float) -> _Upstream:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, asyncio.TimeoutError) as error:
            raise _RelayFailed(-1, str(error).encode("utf-8", "replace")) from error
        return cls(reader, writer, timeout)

    async def reply(self) -> tuple[int, bytes]:
        texts: list[bytes] = []
        while True:
            try:
                line = await asyncio.wait_for(self._reader.readline(), self._timeout)
            except (OSError, asyncio.TimeoutError, ValueError) as error:
                # ValueError: a line longer than the reader's limit.
                raise _RelayFailed(-1, repr(error).encode("utf-8", "replace")) from error
            if not line.endswith(b"\n"):
                raise _RelayFailed(-1, b"Connection unexpectedly closed")
            line = line.rstrip(b"\r\n")
            code, separator = line[:3], line[3:4]
            if not (len(code) == 3 and code.isdigit() and separator in (b"", b" ", b"-")):
                raise _RelayFailed(-1, b"Malformed reply: " + line[:100])
            texts.append(line[4:])
            if separator != b"-":
                return int(code), b"\n".join(texts)

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        try:
            # Waits only while the kernel and the transport hold more than
            # the high-water mark: the upstream server's pace sets ours.
            await asyncio.wait_for(self._writer.drain(), self._timeout)
        except (OSError, asyncio.TimeoutError) as error:
            raise _RelayFailed(-1, repr(error).encode("utf-8", "replace")) from error

    async def command(self, line: str) -> tuple[int, bytes]:
        await self.send(line.encode("utf-8") + CRLF)
        return await self.reply()

    async def expect(self, line: str, wanted: int) -> bytes:
        code, text = await self.command(line)
        if code != wanted:
            raise _RelayFailed(code, text)
        return text

    async def greet(self, local_hostname: str) -> None:
        code, text = await self.reply()
        if code != 220:
            raise _RelayFailed(code, text)
        code, text = await self.command(f"EHLO {local_hostname}")
        if code == 250:
            self.extensions = {
                line.split(b" ", 1)[0].decode("ascii", "replace").upper()
                for line in text.split(b"\n")[1:]
            }
        else:
            await self.expect(f"HELO {local_hostname}", 250)

    async def quit(self) -> None:
        """Say QUIT and close; the outcome is known, so failures do not matter."""
        try:
            await self.command("QUIT")
        except _RelayFailed:
            pass
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once (mid-DATA: the upstream discards the message)."""
        self._writer.transport.abort()


class StreamingProxy:
    """Relay every message to another SMTP server as it arrives (``handle_DATA_STREAM``).

    The upstream session (greeting, EHLO, MAIL, RCPT, DATA) is opened when
    the message begins, and the message is forwarded chunk by chunk,
    dot-stuffed on the way, with an ``X-Peer`` header *before* it. The
    client's reply follows :class:`Proxy`'s rules.

    It talks to the upstream server over asyncio streams rather than running
    :mod:`smtplib` in a worker thread as :class:`Proxy` does: a relay lasts as
    long as the client takes to send its message, and a worker thread held
    per message in flight would soon exhaust the loop's default executor (a
    few threads), stalling every other handler that uses it.
    """

    def __init__(self, remote_hostname: str, remote_port: int, *, timeout: float = 300) -> None:
        self._hostname = remote_hostname
        self._port = remote_port
        self._timeout = timeout

    async def _open(
        self, server: SMTP, envelope: Envelope, rcpt_tos: list[str], refused: RefusedRecipients
    ) -> Optional[_Upstream]:
        """Connect and go as far as DATA's 354.

        Refused recipients go to *refused*; when every one is, the session is
        closed and the result is None.
        """
        upstream = await _Upstream.connect(self._hostname, self._port, self._timeout)
        try:
            await upstream.greet(server.hostname)
            mail_from = envelope.mail_from or ""
            options = ""
            if not all(address.isascii() for address in (mail_from, *rcpt_tos)):
                if "SMTPUTF8" not in upstream.extensions:
                    raise _RelayFailed(553, b"5.6.7 upstream server lacks SMTPUTF8")
                options = " SMTPUTF8"
            await upstream.expect(f"MAIL FROM:<{mail_from}>{options}", 250)
            for rcpt in rcpt_tos:
                code, text = await upstream.command(f"RCPT TO:<{rcpt}>")
                if code not in (250, 251):
                    refused[rcpt] = (code, text)
            if len(refused) == len(rcpt_tos):
                log.info("got SMTPRecipientsRefused")
                await upstream.quit()
                return None
            await upstream.expect("DATA", 354)
        except _RelayFailed as error:
            if error.code > 0:
                await upstream.quit()  # a refusal: the session is still in order
            else:
                upstream.abort()
            raise
        except BaseException:
            upstream.abort()
            raise
        return upstream

    async def handle_DATA_STREAM(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        body: AsyncIterable[bytes],
    ) -> str:
        rcpt_tos = list(envelope.rcpt_tos)
        refused: RefusedRecipients = {}
        try:
            upstream = await self._open(server, envelope, rcpt_tos, refused)
            if upstream is not None:
                stuffer = _DotStuffer()
                host = _peer_host(session.peer)
                try:
                    if host:
                        header = b"X-Peer: " + host.encode("ascii") + CRLF
                        await upstream.send(stuffer.feed(header))
                    async for chunk in body:
                        await upstream.send(stuffer.feed(chunk))
                    await upstream.send(stuffer.end())
                    code, text = await upstream.reply()
                except BaseException:
                    # Mid-DATA nothing may follow (it would be taken for
                    # message content): drop the connection, and the partial
                    # message is discarded upstream. Then pass on
                    # MessageAborted, or the relay's failure.
                    upstream.abort()
                    raise
                await upstream.quit()
                if code != 250:
                    raise _RelayFailed(code, text)
        except _RelayFailed as error:
            log.error(
                "relay to %s:%s failed: %s %r", self._hostname, self._port, error.code, error.text
            )
            refused = dict.fromkeys(rcpt_tos, (error.code, error.text))
        log.info("we got some refusals: %s", refused)
        return Proxy._reply(rcpt_tos, refused)
