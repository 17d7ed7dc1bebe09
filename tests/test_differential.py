"""Differential test: our SMTP replies against upstream aiosmtpd 1.4.6.

Upstream is used strictly as a black box: it runs in its own interpreter (a
throwaway venv outside the repository, default ``/opt/upstream-aiosmtpd``, or
the interpreter named by ``AIOSMTPD_UPSTREAM_PYTHON``), and we only talk to it
over loopback sockets. Both implementations run the same server script (the
public ``SMTP`` class as an asyncio protocol factory, one listener per
configuration), receive the same raw bytes and must send back the same bytes.

Where a deliberate deviation (CHANGES.rst) changes a reply on purpose, the case
names that deviation and the one reply line that differs; every other byte must
match. Each case also names a reply line upstream must send (``row``), which
proves the script really reaches the reply it is meant to cover.

Our version differs from upstream's on purpose (1.5.0 against 1.4.6, see
CHANGES.rst), and the version is the last word of the greeting: the greeting
of ours is compared with upstream's after swapping the version, and must
match byte for byte otherwise.

Replies not covered here, and why: AUTH, STARTTLS, PROXY and LMTP replies
(tested elsewhere); the inactivity timeout, client EOF and TLS
handshake failure (no reply to compare, only timing); ``handle_exception``
returning ``None`` (upstream hangs, so only a timed wait could observe it).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

import pytest

import aiosmtpd

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_PYTHON = os.environ.get(
    "AIOSMTPD_UPSTREAM_PYTHON", "/opt/upstream-aiosmtpd/bin/python"
)
HOST = "127.0.0.1"
UPSTREAM_VERSION = "1.4.6"
# The one deliberate difference in every conversation: the greeting's version.
GREETING = b"220 diff.example Python SMTP "
UPSTREAM_GREETING = GREETING + UPSTREAM_VERSION.encode()
OUR_GREETING = GREETING + aiosmtpd.__version__.encode()
# Only a safety net against a server that never answers or never closes:
# every conversation ends with the server closing the connection.
IO_TIMEOUT = 15.0

pytestmark = pytest.mark.differential

# Runs unchanged under both implementations; uses only the public API.
SERVER_SCRIPT = r'''
import asyncio, json, sys
import aiosmtpd
from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import SMTP


class Unprintable(Exception):
    def __str__(self):
        raise ValueError("no text")


class Hopeless(Exception):
    def __str__(self):
        raise Unprintable()


class Hooks:
    async def handle_NOOP(self, server, session, envelope, arg):
        if arg == "raise":
            raise ValueError("boom")
        if arg == "none":
            return None
        if arg == "int":
            return 42
        if arg == "unprintable":
            raise Unprintable()
        if arg == "hopeless":
            raise Hopeless()
        if arg == "multi":
            return "250-first\r\n250 second"
        return "250 hooked"


class SyncHandleException(Hooks):
    def handle_exception(self, error):
        return "451 never sent"


class AsyncHandleException(Hooks):
    async def handle_exception(self, error):
        return "451 4.3.0 handled %s" % type(error).__name__


class ShortLocalPart(SMTP):
    local_part_limit = 8


CONFIGS = {
    "default": (SMTP, Sink, {}),
    "nosize": (SMTP, Sink, {"data_size_limit": None}),
    "small": (SMTP, Sink, {"data_size_limit": 100}),
    "utf8": (SMTP, Sink, {"enable_SMTPUTF8": True}),
    "decode": (SMTP, Sink, {"decode_data": True}),
    "limit": (SMTP, Sink, {"command_call_limit": 2}),
    "authreq": (SMTP, Sink, {"auth_required": True, "auth_require_tls": False}),
    "locallimit": (ShortLocalPart, Sink, {}),
    "hooks": (SMTP, Hooks, {}),
    "syncexc": (SMTP, SyncHandleException, {}),
    "asyncexc": (SMTP, AsyncHandleException, {}),
}


async def main():
    loop = asyncio.get_running_loop()
    ports = {}
    servers = []
    for name, (cls, handler_cls, kwargs) in CONFIGS.items():
        def factory(cls=cls, handler_cls=handler_cls, kwargs=kwargs):
            return cls(handler_cls(), hostname="diff.example", **kwargs)
        server = await loop.create_server(factory, "127.0.0.1", 0)
        servers.append(server)
        ports[name] = server.sockets[0].getsockname()[1]
    print(json.dumps({"version": aiosmtpd.__version__, "ports": ports}), flush=True)
    # Serve until the test closes our stdin.
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    for server in servers:
        server.close()


asyncio.run(main())
'''


@dataclass(frozen=True)
class Deviation:
    """One reply line that a deviation listed in CHANGES.rst changes on purpose."""

    spec: str
    upstream: bytes
    ours: bytes
    occurrence: int = 1  # which matching upstream line (1 = the first)


@dataclass(frozen=True)
class Case:
    id: str
    script: bytes
    row: Optional[bytes] = None
    config: str = "default"
    closes: bool = False  # the server hangs up by itself; do not append QUIT
    deviation: Optional[Deviation] = None


def lines(*commands: bytes) -> bytes:
    return b"".join(c + b"\r\n" for c in commands)


LONG_ARG = b"x" * 2000
# Limits (docs/decisions.rst, "Command line size limits"): 512 bytes per
# command line, MAIL 538 after EHLO (+26 for SIZE), 548 with SMTPUTF8 (+10).
NOOP_512 = b"NOOP " + b"x" * 507
NOOP_513 = b"NOOP " + b"x" * 508


def mail_line(length: int) -> bytes:
    head, tail = b"MAIL FROM:<", b"@example.org>"
    return head + b"a" * (length - len(head) - len(tail)) + tail


TRANSACTION = (b"HELO client.example", b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.org>")
SYN_MAIL = b"501 Syntax: MAIL FROM: <address>"
SYN_MAIL_ESMTP = b"501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"
SYN_RCPT = b"501 Syntax: RCPT TO: <address>"
SYN_RCPT_ESMTP = b"501 Syntax: RCPT TO: <address> [SP <mail-parameters>]"
MALFORMED = b"553 5.1.3 Error: malformed address"
HELP_LIST = b"Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY"

CASES = [
    # --- connection level ----------------------------------------------
    Case("greeting", lines(b"QUIT"), UPSTREAM_GREETING, closes=True),
    Case(
        "line-over-reader-limit",
        b"NOOP " + LONG_ARG + b"\r\n" + lines(b"NOOP"),
        b"500 Command line too long",
    ),
    Case("command-512-ok-513-too-long", lines(NOOP_512, NOOP_513), b"500 Command line too long"),
    Case(
        "mail-538-after-ehlo",
        lines(b"EHLO c", mail_line(538), b"RSET", mail_line(539)),
        b"500 Command line too long",
    ),
    Case(
        "mail-548-with-smtputf8",
        lines(b"EHLO c", mail_line(548), b"RSET", mail_line(549)),
        b"500 Command line too long",
        config="utf8",
    ),
    Case(
        "repeated-ehlo-mail-limit",
        lines(b"EHLO c", b"EHLO c", b"EHLO c", b"EHLO c", mail_line(600)),
        deviation=Deviation(
            "CHANGES.rst (MAIL allowance recomputed, not grown)",
            b"250 OK",
            b"500 Command line too long",
        ),
    ),
    Case("empty-line", b"\r\n" + lines(b"NOOP"), b"500 Error: bad syntax"),
    Case("non-ascii-command-word", lines(b"N\xc3\xa9OOP"), b"500 Error: bad syntax"),
    Case("non-ascii-argument", lines(b"NOOP caf\xc3\xa9"), b"500 Error: strict ASCII mode"),
    Case(
        "unknown-command",
        lines(b"FOO", b"bar baz", b" NOOP"),
        b'500 Error: command "BAR" not recognized',
    ),
    Case(
        "unknown-command-control-chars",
        lines(b"NOOP\rJUNK"),
        deviation=Deviation(
            "CHANGES.rst (control characters echoed as ?)",
            b'500 Error: command "NOOP\rJUNK" not recognized',
            b'500 Error: command "NOOP?JUNK" not recognized',
        ),
    ),
    Case(
        "too-many-unrecognized",
        lines(b"A1", b"NOOP", b"A2", b"A3", b"A4", b"A5"),
        b"502 5.5.1 Too many unrecognized commands, goodbye.",
        closes=True,
    ),
    Case(
        "call-limit",
        lines(b"NOOP", b"NOOP", b"NOOP"),
        b"421 4.7.0 NOOP sent too many times",
        config="limit",
        closes=True,
    ),
    Case("hook-raises", lines(b"NOOP raise", b"NOOP"), b"500 Error: (ValueError) boom", "hooks"),
    Case(
        "hook-returns-none",
        lines(b"NOOP none", b"NOOP"),
        config="hooks",
        deviation=Deviation(
            "CHANGES.rst (push() raises a descriptive TypeError)",
            b"500 Error: (AssertionError) ",
            b"500 Error: (TypeError) push() argument must be str or bytes, not NoneType",
        ),
    ),
    Case(
        "hook-returns-int",
        lines(b"NOOP int"),
        config="hooks",
        deviation=Deviation(
            "CHANGES.rst (push() raises a descriptive TypeError)",
            b"500 Error: (AssertionError) ",
            b"500 Error: (TypeError) push() argument must be str or bytes, not int",
        ),
    ),
    Case("hook-multi-line-reply", lines(b"NOOP multi"), b"250 second", "hooks"),
    Case(
        "exception-str-fails",
        lines(b"NOOP unprintable"),
        b"500 Error: (ValueError) no text",
        "hooks",
    ),
    Case(
        "exception-cannot-describe",
        lines(b"NOOP hopeless"),
        b"500 Error: Cannot describe error",
        "hooks",
    ),
    Case(
        "sync-handle-exception",
        lines(b"NOOP raise"),
        b"500 Error: (TypeError) object str can't be used in 'await' expression",
        "syncexc",
    ),
    Case(
        "async-handle-exception",
        lines(b"NOOP raise"),
        b"451 4.3.0 handled ValueError",
        "asyncexc",
    ),
    # --- session and state guards ---------------------------------------
    Case(
        "helo-first",
        lines(b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.org>", b"DATA"),
        b"503 Error: send HELO first",
    ),
    Case(
        "auth-required",
        lines(b"HELP", b"VRFY a@b", b"EHLO c", b"MAIL FROM:<a@b>", b"RCPT TO:<b@c>", b"DATA"),
        b"530 5.7.0 Authentication required",
        config="authreq",
    ),
    # --- per command ---------------------------------------------------
    Case("helo", lines(b"HELO", b"HELO client.example", b"HELO a b"), b"250 diff.example"),
    Case("ehlo-default", lines(b"EHLO", b"EHLO client.example"), b"250-SIZE 33554432"),
    Case("ehlo-no-size", lines(b"EHLO c"), b"250-8BITMIME", config="nosize"),
    Case("ehlo-small-size", lines(b"EHLO c"), b"250-SIZE 100", config="small"),
    Case("ehlo-smtputf8", lines(b"EHLO c"), b"250-SMTPUTF8", config="utf8"),
    Case("ehlo-decode-data", lines(b"EHLO c"), b"250 HELP", config="decode"),
    Case("noop", lines(b"NOOP", b"NOOP anything at all"), b"250 OK"),
    Case("quit", lines(b"QUIT now", b"QUIT   "), b"501 Syntax: QUIT", closes=True),
    Case("rset", lines(b"RSET x", b"RSET"), b"501 Syntax: RSET"),
    Case(
        "mail-syntax-helo",
        lines(b"HELO c", b"MAIL", b"MAIL TO:<a@b>", b"MAIL FROM :<a@b>", b"MAIL FROM:",
              b"MAIL FROM:<a@b> SIZE=10"),
        SYN_MAIL,
    ),
    Case(
        "mail-syntax-ehlo",
        lines(b"EHLO c", b"MAIL", b"MAIL FROM:   ", b"MAIL FROM:<a@b> X-FOO=1",
              b"MAIL FROM:<a@b> KEY=", b"MAIL FROM:<a@b> SIZE", b"MAIL FROM:<a@b> SIZE=1k"),
        SYN_MAIL_ESMTP,
    ),
    Case(
        "mail-malformed",
        lines(b"HELO c", b"MAIL FROM:<a@b@c>", b"MAIL FROM:<@>"),
        MALFORMED,
    ),
    Case(
        "mail-local-part-limit",
        lines(b"HELO c", b"MAIL FROM:<abcdefghi@b>", b"MAIL FROM:<abcdefgh@b>"),
        MALFORMED,
        config="locallimit",
    ),
    Case(
        "mail-accepted-forms",
        lines(b"HELO c", b"MAIL FROM:<>", b"RSET", b"MAIL FROM:a@b", b"RSET",
              b"mail from: <a@b>", b"MAIL FROM:<a@b>"),
        b"503 Error: nested MAIL command",
    ),
    Case(
        "mail-unterminated-angle-addr",
        lines(b"HELO c", b"MAIL FROM:<a@b"),
        deviation=Deviation(
            "CHANGES.rst (angle-addr without '>' rejected)", b"250 OK", MALFORMED
        ),
    ),
    Case(
        "mail-esmtp-params",
        lines(b"EHLO c", b"MAIL FROM:<a@b> BODY=9BIT", b"MAIL FROM:<a@b> BODY",
              b"MAIL FROM:<a@b> SMTPUTF8=yes", b"MAIL FROM:<a@b> SMTPUTF8",
              b"MAIL FROM:<a@b> FOO=1", b"MAIL FROM:<a@b> size=10 body=8bitmime"),
        b"501 Error: BODY can only be one of 7BIT, 8BITMIME",
    ),
    Case(
        "mail-smtputf8-disabled",
        lines(b"EHLO c", b"MAIL FROM:<a@b> SMTPUTF8"),
        b"501 Error: SMTPUTF8 disabled",
    ),
    Case(
        "mail-size-limit",
        lines(b"EHLO c", b"MAIL FROM:<a@b> SIZE=101", b"MAIL FROM:<a@b> SIZE=0100"),
        b"552 Error: message size exceeds fixed maximum message size",
        config="small",
    ),
    Case(
        "mail-size-unicode-digit",
        lines(b"EHLO c", "MAIL FROM:<a@b> SIZE=\u00b2".encode()),
        config="utf8",
        deviation=Deviation(
            "CHANGES.rst (only ASCII digits in SIZE=)",
            b"500 Error: (ValueError) invalid literal for int() with base 10: '\xc2\xb2'",
            SYN_MAIL_ESMTP,
        ),
    ),
    Case(
        "mail-body-when-decoding",
        lines(b"EHLO c", b"MAIL FROM:<a@b> BODY=8BITMIME"),
        b"555 MAIL FROM parameters not recognized or not implemented",
        config="decode",
    ),
    Case(
        "rcpt-guards-and-syntax",
        lines(b"HELO c", b"RCPT", b"MAIL FROM:<a@b>", b"RCPT", b"RCPT FROM:<b@c>",
              b"RCPT TO:", b"RCPT TO:<b@c> NOTIFY=NEVER", b"RCPT TO:<b@c@d>", b"RCPT TO:<b@c>"),
        b"503 Error: need MAIL command",
    ),
    Case(
        "rcpt-esmtp-params",
        lines(b"EHLO c", b"MAIL FROM:<a@b>", b"RCPT TO:<b@c> NOTIFY=NEVER",
              b"RCPT TO:<b@c> X-Y=1", b"RCPT", b"RCPT TO:<b@c>"),
        b"555 RCPT TO parameters not recognized or not implemented",
    ),
    Case(
        "rcpt-null-recipient",
        lines(b"HELO c", b"MAIL FROM:<a@b>", b"RCPT TO:<>"),
        deviation=Deviation(
            "CHANGES.rst (null recipient rejected)", b"250 OK", MALFORMED, occurrence=2
        ),
    ),
    Case(
        "rcpt-unterminated-angle-addr",
        lines(b"HELO c", b"MAIL FROM:<a@b>", b"RCPT TO:<b@c"),
        deviation=Deviation(
            "CHANGES.rst (angle-addr without '>' rejected)", b"250 OK", MALFORMED, occurrence=2
        ),
    ),
    Case(
        "data-guards",
        lines(b"HELO c", b"DATA", b"MAIL FROM:<a@b>", b"DATA", b"RCPT TO:<b@c>", b"DATA now"),
        b"503 Error: need RCPT command",
    ),
    Case(
        "data-accepted",
        lines(*TRANSACTION, b"DATA", b"Subject: x", b"", b"..stuffed", b"body", b".",
              b"MAIL FROM:<a@b>", b"RCPT TO:<b@c>", b"DATA", b"."),
        b"354 End data with <CR><LF>.<CR><LF>",
    ),
    Case(
        "data-line-limits",
        lines(*TRANSACTION, b"DATA", b"y" * 999, b"." + b"z" * 998, b".",
              b"MAIL FROM:<a@b>", b"RCPT TO:<b@c>", b"DATA", b"y" * 1000, b"more", b".",
              b"RCPT TO:<b@c>"),
        b"500 Line too long (see RFC5321 4.5.3.1.6)",
    ),
    Case(
        "data-too-much",
        lines(*TRANSACTION, b"DATA", b"x" * 60, b"y" * 60, b".", b"RCPT TO:<b@c>"),
        b"552 Error: Too much mail data",
        config="small",
    ),
    Case(
        "data-bare-line-endings-pass",
        lines(*TRANSACTION, b"DATA", b"a\nb\rc", b"\n.\n", b"."),
        b"250 OK",
    ),
    Case(
        "data-strict-ascii",
        lines(*TRANSACTION, b"DATA", b"caf\xc3\xa9", b".", b"MAIL FROM:<a@b>"),
        config="decode",
        deviation=Deviation(
            "CHANGES.rst (envelope reset after the strict-ASCII failure)",
            b"503 Error: nested MAIL command",
            b"250 OK",
        ),
    ),
    Case(
        "vrfy",
        lines(b"VRFY", b"VRFY a@b", b"VRFY foo bar"),
        b"252 Cannot VRFY user, but will accept message and attempt delivery",
    ),
    Case("vrfy-unparsable", lines(b"VRFY <@>"), b"502 Could not VRFY <@>"),
    Case("expn", lines(b"EXPN", b"EXPN list"), b"502 EXPN not implemented"),
    Case(
        "help",
        lines(b"HELP", b"HELP MAIL", b"help rcpt", b"HELP EXPN", b"HELP STARTTLS", b"HELP bogus",
              b"HELP NOOP", b"HELP HELP", b"HELP DATA", b"HELP VRFY", b"HELP QUIT", b"HELP RSET"),
        b"501 " + HELP_LIST,
    ),
    Case(
        "help-esmtp",
        lines(b"EHLO c", b"HELP MAIL", b"HELP RCPT", b"HELP EHLO", b"HELP HELO", b"HELP AUTH"),
        b"250 Syntax: MAIL FROM: <address> [SP <mail-parameters>]",
    ),
]


@dataclass
class RunningServer:
    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    stderr: IO[bytes]

    def log(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-4000:]


def start_server(argv: list[str], cwd: Path, env: dict[str, str], version: str) -> RunningServer:
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [*argv, "-c", SERVER_SCRIPT],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if not first:
        proc.wait(timeout=IO_TIMEOUT)
        stderr.seek(0)
        raise RuntimeError(
            f"{argv[0]} did not start a server:\n{stderr.read().decode(errors='replace')}"
        )
    info = json.loads(first)
    assert info["version"] == version, info
    return RunningServer(proc, info["ports"], stderr)


def stop_server(server: RunningServer) -> None:
    assert server.proc.stdin is not None
    server.proc.stdin.close()
    try:
        server.proc.wait(timeout=IO_TIMEOUT)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    assert server.proc.stdout is not None
    server.proc.stdout.close()
    server.stderr.close()


def upstream_usable() -> Optional[str]:
    """Return why the upstream black box cannot be used, or None."""
    if not os.path.exists(UPSTREAM_PYTHON):
        return (
            f"upstream aiosmtpd 1.4.6 not installed at {UPSTREAM_PYTHON} (python3 -m venv "
            "/opt/upstream-aiosmtpd && /opt/upstream-aiosmtpd/bin/pip install aiosmtpd==1.4.6, "
            "or set AIOSMTPD_UPSTREAM_PYTHON)"
        )
    probe = subprocess.run(
        [UPSTREAM_PYTHON, "-I", "-c", "import aiosmtpd.smtp; print(aiosmtpd.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tempfile.gettempdir(),
    )
    if probe.returncode != 0 or probe.stdout.strip() != UPSTREAM_VERSION:
        return (
            f"{UPSTREAM_PYTHON} cannot import aiosmtpd {UPSTREAM_VERSION}: "
            f"{probe.stderr.strip()[-500:]}"
        )
    return None


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[RunningServer, RunningServer]]:
    reason = upstream_usable()
    if reason is not None:
        pytest.skip(reason)
    if not (ROOT / "aiosmtpd" / "smtp.py").exists():
        pytest.skip("aiosmtpd/smtp.py does not exist yet")
    # -I: upstream must never see this checkout (nor PYTHONPATH, user site).
    upstream = start_server(
        [UPSTREAM_PYTHON, "-I"], Path(tempfile.gettempdir()), dict(os.environ), UPSTREAM_VERSION
    )
    try:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        ours = start_server([sys.executable], ROOT, env, aiosmtpd.__version__)
    except BaseException:
        stop_server(upstream)
        raise
    try:
        yield upstream, ours
    finally:
        stop_server(ours)
        stop_server(upstream)


def converse(port: int, data: bytes) -> list[bytes]:
    """Send ``data`` at once (pipelined), read until the server closes."""
    received = bytearray()
    with socket.create_connection((HOST, port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(data)
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(
                    f"server did not close the connection; received so far: {bytes(received)!r}"
                ) from None
            if not chunk:
                break
            received += chunk
    assert received.endswith(b"\r\n"), bytes(received)
    return bytes(received[:-2]).split(b"\r\n")


def expected_for_ours(case: Case, upstream: list[bytes]) -> list[bytes]:
    expected = list(upstream)
    dev = case.deviation
    if dev is None:
        return expected
    hits = [i for i, line in enumerate(upstream) if line == dev.upstream]
    assert len(hits) >= dev.occurrence, (
        f"upstream no longer sends {dev.upstream!r} (x{dev.occurrence}) for {case.id}; "
        f"the deviation table ({dev.spec}) needs updating: {upstream!r}"
    )
    expected[hits[dev.occurrence - 1]] = dev.ours
    return expected


def expected_greeting(upstream: list[bytes]) -> list[bytes]:
    """Upstream's conversation with our version in its greeting."""
    assert upstream[0] == UPSTREAM_GREETING, upstream
    return [OUR_GREETING, *upstream[1:]]


def test_case_table_is_consistent() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    for case in CASES:
        # Every case must prove what it covers, or name the deviation it checks.
        assert case.row is not None or case.deviation is not None, case.id
        assert case.script.endswith(b"\r\n"), case.id


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_same_replies_as_upstream(
    servers: tuple[RunningServer, RunningServer], case: Case
) -> None:
    upstream_server, our_server = servers
    script = case.script if case.closes else case.script + b"QUIT\r\n"

    upstream = converse(upstream_server.ports[case.config], script)
    assert upstream[0] == UPSTREAM_GREETING, upstream
    if case.row is not None:
        assert case.row in upstream, (
            f"script does not reach the row it covers: {case.row!r} not in {upstream!r}"
        )

    ours = converse(our_server.ports[case.config], script)
    expected = expected_for_ours(case, expected_greeting(upstream))
    assert ours == expected, (
        f"replies differ from upstream 1.4.6"
        f"{f' (allowed deviation: {case.deviation.spec})' if case.deviation else ''}\n"
        f"server log:\n{our_server.log()}"
    )
