"""Shared pieces of the reliability tests: hostile clients, reply checks,
error traps, resource counters and the long-mode switch.

The reliability tests (``test_fuzz_protocol``, ``test_smuggling``,
``test_limits_hostile``, ``test_faults``, ``test_load``) run small in the
default suite; ``AIOSMTPD_LONG=1`` scales them up (see tests/README.md).

Run as a module it is the load client of ``test_load``, kept in a separate
process so that it neither starves the server's event loop nor shares its
file descriptor table::

    python -m tests._hostile load PORT CONNECTIONS TRANSACTIONS
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import resource
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

LONG = os.environ.get("AIOSMTPD_LONG", "") not in ("", "0")

# Look-alikes of the end of DATA (CRLF . CRLF) used in SMTP smuggling: none
# may end the data, whether the framing sees them alone or over a socket.
SMUGGLING_ENDS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\n.\r",
    b"\r.\n",
    b"\r\n.\r\r\n",
    b"\r\n.\n\r\n",
    b"\r\n .\r\n",
    b"\r\n..\r\n",
    b"\r\n\x00.\r\n",
]


def scale(default: int, long: int, env: Optional[str] = None) -> int:
    """``default`` in the normal suite, ``long`` under AIOSMTPD_LONG=1; an
    explicit ``env`` variable overrides both."""
    if env and os.environ.get(env):
        return int(os.environ[env])
    return long if LONG else default


def report(name: str, **figures: Any) -> None:
    """Print the figures of a run (``pytest -s`` shows them), and append them
    as one JSON line to $AIOSMTPD_FIGURES when set, for the closing note."""
    line = json.dumps({"test": name, **figures}, sort_keys=True)
    print(f"\nFIGURES {line}")
    path = os.environ.get("AIOSMTPD_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


# -- Replies ------------------------------------------------------------------

# RFC 5321 4.2: Reply-code SP/"-" textstring, textstring = 1*(HT / %d32-126).
# SMTPUTF8 servers may also send UTF-8 (RFC 6531 3.7.4.1), never controls.
_REPLY_LINE = re.compile(rb"[2-5][0-5][0-9]([ -][\t\x20-\x7e\x80-\xff]*)?")


class BadReply(AssertionError):
    pass


def split_replies(data: bytes, utf8: bool = False) -> tuple[list[list[bytes]], bytes]:
    """Split received bytes into complete replies (lists of lines without
    CRLF); return them and the unparsed rest.  Raise :class:`BadReply` on a
    line that is not a well-formed reply line."""
    replies: list[list[bytes]] = []
    current: list[bytes] = []
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            break
        line = data[pos:end]
        if not _REPLY_LINE.fullmatch(line):
            raise BadReply(f"malformed reply line {line!r}")
        if not utf8 and not line.isascii():
            raise BadReply(f"non-ASCII reply line {line!r}")
        if utf8:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                raise BadReply(f"invalid UTF-8 in reply line {line!r}") from None
        if current and line[:3] != current[0][:3]:
            raise BadReply(f"reply code changed inside a multi-line reply: {current + [line]!r}")
        current.append(line)
        if line[3:4] != b"-":
            replies.append(current)
            current = []
        pos = end + 2
    rest = data[pos:]
    if b"\n" in rest or b"\r" in rest[:-1]:
        raise BadReply(f"bare line ending in reply stream {rest!r}")
    return replies, b"".join(line + b"\r\n" for line in current) + rest


# -- Error traps --------------------------------------------------------------


class ErrorTrap(logging.Handler):
    """Collects every log record at ERROR or above (any logger, including
    asyncio's "Task exception was never retrieved") and every exception
    reported to an event loop's exception handler."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name} {record.levelname}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" [{record.exc_info[0].__name__ if record.exc_info[0] else ''}: "
            text += f"{record.exc_info[1]}]"
        self.records.append(text)

    def loop_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.records.append(f"loop exception handler: {context.get('message')} "
                            f"{context.get('exception')!r}")

    def take(self) -> list[str]:
        records, self.records = self.records, []
        return records


@contextmanager
def trap_errors() -> Iterator[ErrorTrap]:
    trap = ErrorTrap()
    root = logging.getLogger()
    root.addHandler(trap)
    try:
        yield trap
    finally:
        root.removeHandler(trap)


# -- Handlers -----------------------------------------------------------------

ID_RE = re.compile(rb"^X-Id: (\S+)\r?$", re.MULTILINE)


class Sink:
    """Counts delivered messages by their ``X-Id`` header: the tests check
    that every message answered 250 arrived exactly once."""

    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()
        self.count = 0
        self._lock = threading.Lock()

    def _record(self, envelope: Envelope) -> None:
        content = envelope.original_content or b""
        match = ID_RE.search(content)
        with self._lock:
            self.count += 1
            if match:
                self.ids[match.group(1).decode("ascii", "replace")] += 1

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._record(envelope)
        return "250 OK"

    def duplicates(self) -> list[str]:
        return [k for k, n in self.ids.items() if n > 1]


USER, PASSWORD = b"user", b"secret"
AUTH_PLAIN = "AUTH PLAIN " + base64.b64encode(b"\0" + USER + b"\0" + PASSWORD).decode()


def authenticator(server: SMTP, session: Session, envelope: Envelope,
                  mechanism: str, auth_data: Any) -> AuthResult:
    login = getattr(auth_data, "login", None)
    password = getattr(auth_data, "password", None)
    return AuthResult(success=(login, password) == (USER, PASSWORD))


def message(msg_id: str, body: bytes = b"hello\r\n") -> bytes:
    return b"X-Id: " + msg_id.encode() + b"\r\nSubject: t\r\n\r\n" + body


# -- Resources ----------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib(pid: str = "self") -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")  # pragma: no cover


def raise_nofile(wanted: int) -> bool:
    """Raise the soft RLIMIT_NOFILE to at least ``wanted`` if the hard limit
    allows; True if the limit is now high enough."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return True
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return False
    return target >= wanted


# -- The load client (run in its own process) --------------------------------


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"connection closed mid-reply: {line!r}")
        if line[3:4] != b"-":
            return line


async def _expect(reader: asyncio.StreamReader, code: bytes) -> None:
    reply = await _read_reply(reader)
    if not reply.startswith(code):
        raise ConnectionError(f"expected {code!r}, got {reply!r}")


async def load_client(port: int, connections: int, transactions: int) -> dict[str, Any]:
    """Open ``connections`` connections, hold them all open at once (each has
    read its greeting before any transaction starts), then run
    ``transactions`` mail transactions on each."""
    raise_nofile(connections + 100)
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors: Counter[str] = Counter()
    # Connect in waves so the listen backlog never overflows (a dropped SYN
    # costs a one second retransmission, not a failure, but slows the test).
    wave = 256
    for first in range(0, connections, wave):
        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**16)
            await _expect(reader, b"220")
            return reader, writer

        results = await asyncio.gather(
            *(connect() for _ in range(first, min(connections, first + wave))),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                errors[type(r).__name__] += 1
            else:
                opened.append(r)
    held = len(opened)
    accepted: list[str] = []

    async def session(index: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        writer.write(b"EHLO load.example\r\n")
        await _expect(reader, b"250")
        for t in range(transactions):
            msg_id = f"load-{index}-{t}"
            writer.write(b"MAIL FROM:<a@load.example>\r\n")
            await _expect(reader, b"250")
            writer.write(b"RCPT TO:<b@load.example>\r\n")
            await _expect(reader, b"250")
            writer.write(b"DATA\r\n")
            await _expect(reader, b"354")
            writer.write(message(msg_id, b"x" * 200 + b"\r\n") + b".\r\n")
            await _expect(reader, b"250")
            accepted.append(msg_id)
        writer.write(b"QUIT\r\n")
        await _expect(reader, b"221")
        writer.close()

    outcomes = await asyncio.gather(
        *(session(i, r, w) for i, (r, w) in enumerate(opened)), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            errors[type(outcome).__name__] += 1
    return {"held": held, "accepted": accepted, "errors": dict(errors)}


def _main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] != "load":
        print(__doc__, file=sys.stderr)
        return 2
    port, connections, transactions = (int(a) for a in argv[1:])
    result = asyncio.run(load_client(port, connections, transactions))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
