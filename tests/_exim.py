"""A private Exim that relays every message to a test server, and its transcript.

Exim (Debian's ``exim4-daemon-light``) plays the sending MTA: a message is
submitted to it over SMTP on its standard input (``exim -bs``), and Exim
delivers it at once (``-odf``, foreground: the command returns after the
delivery attempt) through a ``manualroute`` router and an ``smtp`` transport
to ``127.0.0.1:PORT``, the server under test.  ``-v`` makes Exim write the
SMTP dialogue of that delivery to its standard error; ``exim_sent_commands``
and ``exim_received_replies`` read it back, so a test can assert what Exim
SENT (``BDAT 312 LAST``, ``MAIL FROM:<a@x> AUTH=<>``,
``RCPT TO:<b@y> NOTIFY=SUCCESS ORCPT=rfc822;b@y``) and what it RECEIVED
(``250 2.0.0 OK``).

API (keep it small, other tests use it)::

    from tests._exim import EXIM_SKIP_REASON, Exim, exim_binary, exim_sent_commands

    if exim_binary() is None:
        pytest.skip(EXIM_SKIP_REASON)
    with Exim(tmp_path, server.port, chunking=True, auth=("user", "pw")) as exim:
        result = exim.send(b"Subject: hi\\r\\n\\r\\nbody\\r\\n", "a@x.example",
                           ["b@y.example"], mail_params="RET=HDRS ENVID=e1",
                           rcpt_params="NOTIFY=SUCCESS ORCPT=rfc822;b@y.example")
    assert "BDAT" in [c.split()[0] for c in result.sent]
    assert "=> b@y.example" in result.log

In tests, the ``exim`` fixture of tests/conftest.py does the skipping and the
closing: ``relay = exim(server.port, **knobs)``.  ``exim_dialogue`` gives the
whole exchange with Exim's markers, which tell pipelined commands apart.

``Exim(directory, port, *, host="127.0.0.1", chunking=True, pipelining=True,
auth=None, auth_sender=None, timeout=10.0, main_options="",
transport_options="")``:

* ``chunking``: the transport's ``hosts_try_chunking`` (``*`` or empty):
  Exim uses BDAT when the server offers CHUNKING, else DATA.
* ``pipelining``: False sets ``hosts_avoid_pipelining = *`` (one command,
  one reply, even if the server offers PIPELINING).
* ``auth``: ``(username, password)`` adds a ``plaintext`` client
  authenticator (``PLAIN``) and ``hosts_try_auth = *``: Exim sends ``AUTH
  PLAIN`` when the server offers it, and carries on unauthenticated when it
  fails.  Once authenticated, Exim puts ``AUTH=<authenticated sender>`` on
  MAIL if it has one; ``auth_sender`` sets it (the transport's
  ``authenticated_sender``): ``"<>"`` gives ``MAIL FROM:<...> AUTH=<>``.
  Messages submitted with ``send`` have none otherwise, so no ``AUTH=``.
* DSN: always on the submission side (``dsn_advertise_hosts = :`` matches
  local ``-bs`` input), so ``send(mail_params="RET=... ENVID=...",
  rcpt_params="NOTIFY=... ORCPT=...")`` is accepted; Exim passes those on
  only to a server that offers DSN, and drops them otherwise.
* TLS is off (``hosts_avoid_tls = *``), and so are TCP Fast Open, PRDR and
  DANE; timeouts are short (``timeout`` seconds per connect and per reply).
* ``main_options`` / ``transport_options``: extra configuration lines for
  the main section / the ``smtp`` transport (one option a line).

Attributes can be changed between ``send`` calls: the configuration file is
rewritten before each one.  ``send(message, sender, recipients, *,
mail_params="", rcpt_params="", check=True) -> EximResult``: *message* (bytes
or str, any line endings) is submitted verbatim (dot-stuffed by the helper);
*rcpt_params* is one string for every recipient or a list, one per
recipient.  With ``check`` (the default), ``EximError`` is raised when Exim
refused the submission or did not exit 0; a delivery the server refused is
NOT an error (look at ``result.log``).  ``EximResult`` has ``sent``,
``received`` (parsed from ``transcript``), ``log`` (this run's main-log
lines, ``<=``/``=>``/``**``/``==`` ...), ``transcript`` (Exim's stderr),
``submission`` (Exim's replies to our submission), ``message_id`` and
``returncode``.  Messages Exim generates itself (bounces, DSNs) are
discarded by a first router (``:blackhole:``), so only the submitted message
ever reaches the server.

How Exim runs (Debian's build: setuid root, ``EXIM_USER=Debian-exim``,
``TRUSTED_CONFIG_LIST=/etc/exim4/trusted_configs``, root in
``FIXED_NEVER_USERS``): ``exim -C private.conf`` from a caller other than
root makes Exim give up root at once and run as that caller, which is all a
relay to 127.0.0.1 needs.  So Exim never runs as root here:

* called by a non-root user, Exim runs as that user; the configuration names
  it as ``exim_user``/``exim_group``/``trusted_users`` (trusted: it may set
  the envelope sender), and the working directory is a fresh
  ``directory/exim-*`` (configuration, spool, log).
  Exim then writes its log lines to stderr only, not to the log files (as
  observed with Exim 4.96: it writes them when running as root or as the
  compiled-in Exim user), which is where ``EximResult.log`` reads them from
  in every case.
* called by root (CI), the helper starts Exim as the compiled-in Exim user
  (``Debian-exim``, from ``exim -bP exim_user``) with ``subprocess``'s
  ``user``/``group``.  That user cannot enter pytest's ``tmp_path`` (under
  ``/tmp/pytest-of-root``, mode 0700), so the working directory is a fresh
  ``/tmp/aiosmtpd-exim-*`` owned by it; ``close()`` copies its log files and
  configuration into ``directory/aiosmtpd-exim-*`` and removes it.

Both forms log ``exim user lost privilege for using -C option`` (to the
private paniclog or stderr): expected.  The system Exim (its daemon, spool,
logs and configuration) is never used; nothing here needs
``/etc/exim4/trusted_configs``.  Installing the Debian package starts a
system daemon unless ``/usr/sbin/policy-rc.d`` forbids it (as in Docker-style
images); the tests do not need it (``.ci/run`` runs ``service exim4 stop``).

Command line::

    python3 tests/_exim.py      # report the binary and its build ("exim -bV")
"""

from __future__ import annotations

import functools
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

__all__ = [
    "EXIM_SKIP_REASON",
    "Exim",
    "EximError",
    "EximResult",
    "exim_binary",
    "exim_dialogue",
    "exim_received_replies",
    "exim_sent_commands",
]

EXIM_SKIP_REASON = "exim not installed (apt-get install exim4-daemon-light)"

HOSTNAME = "exim.test"
"""Exim's ``primary_hostname``: the name it sends in EHLO."""


@functools.cache
def exim_binary() -> str | None:
    """The path of a working ``exim`` binary, or None."""
    for name in ("exim", "exim4"):
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
        if path is None:
            continue
        try:
            proc = subprocess.run(
                [path, "-bV"], stdin=subprocess.DEVNULL, capture_output=True,
                text=True, timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0 and "Exim version" in proc.stdout:
            return path
    return None


@functools.cache
def _compiled_exim_user() -> tuple[int, int]:
    """uid and gid of the Exim user compiled into the binary (``Debian-exim``)."""
    exim = exim_binary()
    assert exim is not None
    proc = subprocess.run(
        [exim, "-C", "/dev/null", "-bP", "exim_user"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )
    name = proc.stdout.partition("=")[2].strip()
    if not name:
        raise EximError(f"cannot tell Exim's user: {proc.stdout!r} {proc.stderr!r}")
    entry = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
    return entry.pw_uid, entry.pw_gid


class EximError(Exception):
    """Exim refused the submission, failed, or timed out."""


@dataclass
class EximResult:
    returncode: int
    submission: list[str]
    """Exim's replies to the helper's own SMTP submission (``exim -bs``)."""
    transcript: str
    """Exim's stderr: the ``-v`` output, with the delivery's SMTP dialogue."""
    message_id: str | None
    """Exim's id for the message (from ``250 OK id=...``), None if refused."""

    @property
    def sent(self) -> list[str]:
        """Every SMTP command Exim sent to the server (``exim_sent_commands``)."""
        return exim_sent_commands(self.transcript)

    @property
    def received(self) -> list[str]:
        """Every reply Exim read from the server (``exim_received_replies``)."""
        return exim_received_replies(self.transcript)

    @property
    def log(self) -> str:
        """This run's main-log lines, one a line (``<=``, ``=>``, ``**`` ...).

        Read from the ``-v`` output, so the same whether or not Exim could
        write its log files; without the expected "lost privilege" line.
        """
        lines = _log_lines(self.transcript, "MAIN")
        return "\n".join(x for x in lines if x != _LOST_PRIVILEGE)


# Logged by every run (exim -C from a caller other than root): expected, and
# left out of EximResult.log.
_LOST_PRIVILEGE = "exim user lost privilege for using -C option"

# In the -v transcript, "SMTP>> X" is a command sent and flushed, "SMTP|> X" one
# buffered for pipelining, "SMTP+> X" one buffered with more to follow;
# "SMTP>> (writing message)" and "SMTP>> ." stand for DATA content,
# "SMTP(close)>>" and the like for socket events.  "SMTP<< 250-x" opens a reply
# whose further lines follow indented ("         250 y").
_SENT = re.compile(r"^\s*SMTP([>|+]>) (.*)$")
_REPLY = re.compile(r"^\s*SMTP<< (.*)$")
_CONTINUATION = re.compile(r"^\s+(\d{3}[ -].*|\d{3})$")


def exim_dialogue(transcript: str) -> list[tuple[str, str]]:
    """The whole dialogue in transcript order, as ``(marker, text)`` pairs.

    *marker* is Exim's: ``">>"`` a command sent at once, ``"|>"`` one held
    back to be pipelined with the next, ``"+>"`` one held back with more to
    follow (``BDAT``, ``QUIT``), ``"<<"`` a reply (multi-line joined by
    ``"\\n"``).  With pipelining, ``MAIL`` and ``RCPT`` are ``"|>"`` and
    their replies come after the group, e.g. ``[("|>", "MAIL FROM:<a@x>"),
    ("|>", "RCPT TO:<b@y>"), (">>", "DATA"), ("<<", "250 OK"), ("<<", "250
    OK"), ("<<", "354 go")]``; without, each command is ``">>"`` and followed
    by its reply.  Content and socket events are left out as in
    ``exim_sent_commands``.
    """
    items: list[tuple[str, str]] = []
    open_reply = False
    for line in transcript.splitlines():
        m = _SENT.match(line)
        if m:
            open_reply = False
            if not m.group(2).startswith("(") and m.group(2) != ".":
                items.append((m.group(1), m.group(2)))
            continue
        m = _REPLY.match(line)
        if m:
            items.append(("<<", m.group(1)))
            open_reply = m.group(1)[3:4] == "-"
            continue
        c = _CONTINUATION.match(line) if open_reply else None
        if c:
            items[-1] = ("<<", items[-1][1] + "\n" + c.group(1))
            open_reply = c.group(1)[3:4] == "-"
        else:
            open_reply = False
    return items


def exim_sent_commands(transcript: str) -> list[str]:
    """The SMTP commands Exim sent, in order, from its ``-v`` output.

    E.g. ``["EHLO exim.test", "MAIL FROM:<a@x> SIZE=312", "RCPT TO:<b@y>",
    "BDAT 312 LAST", "QUIT"]``.  Message content is not included (neither
    the lines after DATA nor the final ``.``), nor socket events; the
    argument of ``AUTH`` is masked by Exim (``AUTH PLAIN ****``).  Every
    connection of the run is included, one after the other.
    """
    return [text for marker, text in exim_dialogue(transcript) if marker != "<<"]


def exim_received_replies(transcript: str) -> list[str]:
    """The SMTP replies Exim read, in order, from its ``-v`` output.

    A multi-line reply is one item, its lines joined by ``"\\n"``, e.g.
    ``["220 test.example ESMTP", "250-test.example\\n250-SIZE 33554432\\n250
    HELP", "250 2.1.0 OK", ...]``.
    """
    return [text for marker, text in exim_dialogue(transcript) if marker == "<<"]


def _log_lines(transcript: str, log: str) -> list[str]:
    """The lines Exim logged to *log* (``MAIN``, ``PANIC``), from ``-v`` output.

    ``-v`` shows each log entry as ``LOG: [selector] MAIN [PANIC]`` followed by
    its text indented by two spaces.
    """
    lines = transcript.splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith("LOG: ") and log in line.split()[1:]:
            for text in lines[i + 1:]:
                if not text.startswith("  "):
                    break
                found.append(text[2:])
    return found


def _config_string(value: str) -> str:
    """*value* as an Exim string option whose expansion yields it unchanged."""
    if "\n" in value or "\r" in value:
        raise ValueError(f"no line breaks in Exim options: {value!r}")
    return value.replace("\\", "\\\\").replace("$", "\\$")


def _xtext_free(value: str) -> str:
    if "^" in value:  # the separator of client_send's parts
        raise ValueError(f"no '^' in the credentials: {value!r}")
    return _config_string(value)


RcptParams = Union[str, Sequence[str]]


class Exim:
    """A private Exim configuration relaying every address to ``host:port``."""

    def __init__(
        self,
        directory: Path,
        port: int,
        *,
        host: str = "127.0.0.1",
        chunking: bool = True,
        pipelining: bool = True,
        auth: tuple[str, str] | None = None,
        auth_sender: str | None = None,
        timeout: float = 10.0,
        main_options: str = "",
        transport_options: str = "",
    ) -> None:
        exim = exim_binary()
        if exim is None:
            raise EximError(EXIM_SKIP_REASON)
        self.exim = exim
        self.directory = Path(directory)
        self.port = port
        self.host = host
        self.chunking = chunking
        self.pipelining = pipelining
        self.auth = auth
        self.auth_sender = auth_sender
        self.timeout = timeout
        self.main_options = main_options
        self.transport_options = transport_options
        self._as_root = os.geteuid() == 0
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            self.uid, self.gid = _compiled_exim_user()
            self.workdir = Path(tempfile.mkdtemp(prefix="aiosmtpd-exim-"))
            os.chown(self.workdir, self.uid, self.gid)
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
            self.workdir = Path(tempfile.mkdtemp(prefix="exim-", dir=self.directory))
        self.config = self.workdir / "exim.conf"
        self._closed = False

    # -- configuration ----------------------------------------------------

    def config_text(self) -> str:
        """The configuration file as ``send`` writes it."""
        w = self.workdir
        timeout = f"{max(1, round(self.timeout))}s"
        main = f"""\
# Written by tests/_exim.py: a private Exim that relays everything to
# {self.host}:{self.port}.  Never the system configuration.
primary_hostname = {HOSTNAME}
qualify_domain = {HOSTNAME}
exim_user = {self.uid}
exim_group = {self.gid}
trusted_users = {self.uid}
spool_directory = {w}/spool
log_file_path = {w}/log/%slog
pid_file_path = {w}/exim.pid
log_selector = +smtp_confirmation +received_recipients +deliver_time \\
  +smtp_protocol_error +smtp_syntax_error +smtp_connection
keep_environment =
tls_advertise_hosts =
dsn_advertise_hosts = :
message_size_limit = 0
acl_smtp_rcpt = accept
{self.main_options}
"""
        transport = [
            "driver = smtp",
            "allow_localhost",
            "hosts_avoid_tls = *",
            "hosts_try_fastopen =",
            "hosts_try_prdr =",
            "hosts_try_dane =",
            f"hosts_try_chunking = {'*' if self.chunking else ''}",
            f"connect_timeout = {timeout}",
            f"command_timeout = {timeout}",
            f"data_timeout = {timeout}",
            f"final_timeout = {timeout}",
        ]
        if not self.pipelining:
            transport.append("hosts_avoid_pipelining = *")
        if self.auth is not None:
            transport.append("hosts_try_auth = *")
        if self.auth_sender is not None:
            transport.append(f"authenticated_sender = {_config_string(self.auth_sender)}")
        transport.extend(line.strip() for line in self.transport_options.splitlines())
        authenticators = ""
        if self.auth is not None:
            user, password = (_xtext_free(s) for s in self.auth)
            authenticators = f"""
begin authenticators

plain:
  driver = plaintext
  public_name = PLAIN
  client_send = ^{user}^{password}
"""
        return (
            main
            + f"""
begin routers

# Bounces, DSNs and warnings Exim makes itself arrive with protocol "local";
# submissions from send() with "local-esmtp".  Only the latter go out.
exim_generated:
  driver = redirect
  condition = ${{if eq{{$received_protocol}}{{local}}}}
  data = :blackhole:

relay:
  driver = manualroute
  domains = *
  route_list = * {self.host}::{self.port} byname
  self = send
  transport = relay

begin transports

relay:
"""
            + "".join(f"  {line}\n" for line in transport if line)
            + authenticators
            + """
begin retry

* * F,1h,1h
"""
        )

    def _prepare(self) -> None:
        for sub in ("spool", "log"):
            (self.workdir / sub).mkdir(exist_ok=True)
        # A failed delivery leaves retry hints that would make the next run
        # skip the host ("retry time not reached"): each run starts afresh.
        shutil.rmtree(self.workdir / "spool" / "db", ignore_errors=True)
        self.config.write_text(self.config_text())
        if self._as_root:
            for path in (self.workdir, *self.workdir.rglob("*")):
                os.chown(path, self.uid, self.gid)

    # -- running ------------------------------------------------------------

    def send(
        self,
        message: bytes | str,
        sender: str,
        recipients: Sequence[str],
        *,
        mail_params: str = "",
        rcpt_params: RcptParams = "",
        check: bool = True,
    ) -> EximResult:
        """Submit *message* to Exim and let it deliver it to the server now."""
        if self._closed:
            raise EximError("this Exim helper is closed")
        if isinstance(rcpt_params, str):
            rcpt_params = [rcpt_params] * len(recipients)
        if len(rcpt_params) != len(recipients):
            raise ValueError("rcpt_params: one string per recipient")
        self._prepare()
        if isinstance(message, str):
            message = message.encode("utf-8")
        lines = message.replace(b"\r\n", b"\n").split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        body = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)

        def cmd(verb: str, params: str) -> bytes:
            return (verb + (" " + params if params else "") + "\r\n").encode("utf-8")

        stdin = (
            b"EHLO client.exim.test\r\n"
            + cmd(f"MAIL FROM:<{sender}>", mail_params)
            + b"".join(cmd(f"RCPT TO:<{r}>", p) for r, p in zip(recipients, rcpt_params))
            + b"DATA\r\n" + body + b".\r\nQUIT\r\n"
        )
        argv = [self.exim, "-C", str(self.config), "-odf", "-bs", "-v"]
        extra = {"user": self.uid, "group": self.gid, "extra_groups": []} if self._as_root else {}
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.workdir,
            start_new_session=True,
            **extra,  # type: ignore[arg-type]
        )
        try:
            out, err = proc.communicate(stdin, timeout=self.timeout * 4 + 10)
        except subprocess.TimeoutExpired:
            self._kill_group(proc.pid)
            out, err = proc.communicate()
            raise EximError(
                f"exim timed out; stderr:\n{err.decode(errors='replace')}"
            ) from None
        finally:
            self._kill_group(proc.pid)
            self._kill_strays()
        replies = _parse_submission(out.decode("utf-8", "replace"))
        final = replies[-2] if len(replies) >= 2 else ""
        m = re.match(r"250 OK id=(\S+)", final)
        result = EximResult(
            returncode=proc.returncode,
            submission=replies,
            transcript=err.decode("utf-8", "replace"),
            message_id=m.group(1) if m else None,
        )
        if check and (proc.returncode != 0 or m is None):
            raise EximError(
                f"exim refused the submission or failed (exit {proc.returncode});\n"
                f"replies: {replies}\nstderr:\n{result.transcript}"
            )
        return result

    @staticmethod
    def _kill_group(pgid: int) -> None:
        # Exim's process group (start_new_session): with -odf nothing should be
        # left in it once exim exits, but never let a straggler outlive us.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stray_processes(self) -> list[int]:
        """Pids of processes still running with this helper's configuration."""
        marker = str(self.config).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in argv:
                found.append(int(entry.name))
        return found

    def _kill_strays(self) -> None:
        for pid in self.stray_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def mainlog(self) -> str:
        """The private main log file (empty when Exim logs only to stderr)."""
        try:
            return (self.workdir / "log" / "mainlog").read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Kill leftovers; as root, keep the logs in ``directory`` and tidy /tmp."""
        if self._closed:
            return
        self._closed = True
        self._kill_strays()
        if self._as_root:
            keep = self.directory / self.workdir.name
            keep.mkdir(parents=True, exist_ok=True)
            for src in (*(self.workdir / "log").glob("*log"), self.config):
                if src.is_file():
                    shutil.copyfile(src, keep / src.name)
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Exim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_submission(text: str) -> list[str]:
    """Exim's replies on stdout (``-bs``), multi-line replies joined by "\\n"."""
    replies: list[list[str]] = []
    continuing = False
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            continue
        if continuing:
            replies[-1].append(line)
        else:
            replies.append([line])
        continuing = line[3:4] == "-"
    return ["\n".join(r) for r in replies]


def _main() -> int:
    exim = exim_binary()
    if exim is None:
        print(EXIM_SKIP_REASON)
        return 1
    print(exim)
    subprocess.run([exim, "-bV"], check=False)
    if os.geteuid() == 0:
        uid, gid = _compiled_exim_user()
        print(f"as root, the tests run exim as uid {uid} gid {gid}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
