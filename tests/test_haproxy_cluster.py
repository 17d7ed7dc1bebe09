"""Three aiosmtpd instances behind a real HAProxy; one is SIGKILLed mid-load.

The set-up is the one docs/operations.rst ("Several instances behind HAProxy") describes:

* three backends, each a separate process (``python -m tests._cluster_backend``)
  listening on 127.0.0.1 port 0 with the PROXY protocol on; each appends every
  message it accepts to its own file and fsyncs it *before* replying ``250``;
* ``haproxy -db`` in ``mode tcp`` with ``balance roundrobin``,
  ``send-proxy-v2`` to every backend and ``option smtpchk`` health checks every
  200 ms.  Its frontend socket is bound to port 0 by the test and inherited by
  HAProxy (``bind fd@N``), so there is no window in which another program can
  take the port; its stats socket tells the test what the health checks see.

Eight client threads (smtplib, a fresh connection per attempt) send 300
numbered messages.  As soon as a third of them have been answered ``250`` the
test SIGKILLs one backend.  A client retries every message that did not get a
``250`` (reset, disconnect, 4xx, timeout), up to MAX_ATTEMPTS times and
within a deadline.  Each attempt carries the message's ``Message-ID`` and its
attempt number (``X-Attempt``), so every record names the one attempt that
produced it.

What must hold (``delivery_problems``), where the backends' files are the
truth about what was stored:

(a) every attempt a client saw answered ``250`` is recorded, and every
    message was answered ``250`` in the end;
(b) no attempt is recorded twice; a message is recorded more than once only
    when the extra copies come from attempts that got no ``250`` and were
    written by the killed backend (stored, then killed before it could reply:
    SMTP's at-least-once delivery), never from a surviving one;
(c) nothing is recorded that no client sent;
(d) the PROXY header gave each backend the real client: for every
    acknowledged attempt, 127.0.0.1 and the very port of the client's socket,
    and HAProxy's frontend as destination; every backend took its share before
    the kill, the killed one recorded nothing afterwards, and the survivors
    accepted messages that were sent after it died.

Then HAProxy's health checks must mark the killed backend DOWN and keep the
survivors UP.  The ``test_checker_*`` tests feed ``delivery_problems`` broken
histories, so that each of these checks is shown to fail when it should.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from tests._hostile import report

HAPROXY = shutil.which("haproxy")
ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

BACKENDS = ("mx1", "mx2", "mx3")
VICTIM = "mx2"
MESSAGES = 400
WORKERS = 8
KILL_AFTER = MESSAGES // 3  # acknowledged messages
MAX_ATTEMPTS = 8
IO_TIMEOUT = 10.0  # per smtplib socket operation
LOAD_DEADLINE = 30.0  # no new attempt after this many seconds of load
START_DEADLINE = 15.0  # backends listening, HAProxy checks all L7OK
DOWN_DEADLINE = 10.0  # HAProxy marks the killed backend DOWN


def poll(condition: Callable[[], Any], deadline: float, what: str) -> Any:
    """Call ``condition`` until it returns something true; fail at ``deadline``."""
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)  # poll interval, not a synchronisation


# ---------------------------------------------------------------------------
# the backends


@dataclass
class Backend:
    name: str
    records: Path
    proc: subprocess.Popen[str]
    port: int = 0


@contextlib.contextmanager
def backends(tmp: Path) -> Iterator[dict[str, Backend]]:
    started: dict[str, Backend] = {}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    try:
        for name in BACKENDS:
            records = tmp / f"{name}.jsonl"
            with (tmp / f"{name}.log").open("wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "tests._cluster_backend", name, str(records)],
                    cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=log, text=True)
            started[name] = Backend(name, records, proc)
        deadline = time.monotonic() + START_DEADLINE
        for backend in started.values():
            backend.port = _read_port(backend, deadline)
        yield started
    finally:
        for backend in started.values():
            if backend.proc.poll() is None:
                backend.proc.kill()
            backend.proc.wait()
            for stream in (backend.proc.stdin, backend.proc.stdout):
                assert stream is not None
                with contextlib.suppress(OSError):
                    stream.close()


def _read_port(backend: Backend, deadline: float) -> int:
    out = backend.proc.stdout
    assert out is not None
    ready, _, _ = select.select([out], [], [], max(0.0, deadline - time.monotonic()))
    line = out.readline() if ready else ""
    if not line.startswith("PORT "):
        log = (backend.records.parent / f"{backend.name}.log").read_text(errors="replace")
        pytest.fail(f"backend {backend.name} did not start ({line!r}):\n{log}")
    return int(line.split()[1])


def read_records(backends: dict[str, Backend]) -> list[dict[str, Any]]:
    records = []
    for backend in backends.values():
        if backend.records.exists():
            for line in backend.records.read_text().splitlines():
                records.append(json.loads(line))
    return records


# ---------------------------------------------------------------------------
# HAProxy


HAPROXY_CFG = """\
global
    maxconn 512
    stats socket {stats} mode 600 level operator
    log stdout format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 1s
    # Health checks: connect within min(connect, inter), answer within this.
    timeout check 2s
    # Longer than the SMTP idle timeout (aiosmtpd: 300 s).
    timeout client 310s
    timeout server 310s
    retries 2
    option redispatch 1

frontend smtp_in
    bind fd@{fd}
    default_backend aiosmtpd

backend aiosmtpd
    balance roundrobin
    option smtpchk EHLO haproxy.cluster.test
    default-server send-proxy-v2 check inter 200ms fall 2 rise 1
{servers}
"""


@dataclass
class HAProxy:
    port: int
    stats: Path
    log: Path

    def servers(self) -> dict[str, tuple[str, str]]:
        """(status, check_status) per server, from ``show stat``."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(IO_TIMEOUT)
            try:
                sock.connect(str(self.stats))
            except OSError:
                return {}  # not listening yet
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        if not lines or not lines[0].startswith("# "):
            return {}
        fields = lines[0][2:].split(",")
        rows = [dict(zip(fields, line.split(","))) for line in lines[1:] if line]
        # "* L7OK": the last result was L7OK, and a check is running now.
        return {row["svname"]: (row["status"], row["check_status"].removeprefix("* "))
                for row in rows if row["pxname"] == "aiosmtpd" and row["svname"] != "BACKEND"}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def haproxy(tmp: Path, backends: dict[str, Backend]) -> Iterator[HAProxy]:
    assert HAPROXY is not None
    # A short directory: a Unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="hap") as short, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((HOST, 0))
        listener.listen(512)
        stats = Path(short) / "stats.sock"
        cfg = tmp / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(
            stats=stats, fd=listener.fileno(),
            servers="\n".join(f"    server {b.name} {HOST}:{b.port}"
                              for b in backends.values())))
        log = tmp / "haproxy.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    pass_fds=(listener.fileno(),))
        try:
            front = HAProxy(listener.getsockname()[1], stats, log)
            all_up = dict.fromkeys(backends, ("UP", "L7OK"))

            def ready() -> bool:
                if proc.poll() is not None:
                    pytest.fail(f"haproxy exited with {proc.returncode}:\n{front.log_text()}")
                return front.servers() == all_up

            poll(ready, time.monotonic() + START_DEADLINE,
                 "HAProxy's SMTP checks to pass on every backend")
            yield front
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------
# the clients


@dataclass(frozen=True)
class Attempt:
    seq: int
    attempt: int
    started: float  # time.monotonic()
    client_port: Optional[int]
    acked: bool
    error: str = ""


def msgid(seq: int) -> str:
    return f"<{seq}@cluster.test>"


def send(front_port: int, seq: int, attempt: int) -> Attempt:
    """One attempt on a fresh connection; acked iff the data got ``250``."""
    message = (f"From: client@cluster.test\r\nTo: rcpt@cluster.test\r\n"
               f"Message-ID: {msgid(seq)}\r\nX-Attempt: {attempt}\r\n"
               f"Subject: message {seq}\r\n\r\nBody of message {seq}.\r\n")
    started = time.monotonic()
    client = smtplib.SMTP(timeout=IO_TIMEOUT)
    client_port = None
    try:
        client.connect(HOST, front_port)
        assert client.sock is not None
        client_port = client.sock.getsockname()[1]
        refused = client.sendmail("client@cluster.test", ["rcpt@cluster.test"], message)
        assert not refused, refused
    except (smtplib.SMTPException, OSError) as exc:
        client.close()
        return Attempt(seq, attempt, started, client_port, False, f"{type(exc).__name__}: {exc}")
    # The 250 is in; what happens to QUIT changes nothing about the message.
    with contextlib.suppress(smtplib.SMTPException, OSError):
        client.quit()
    client.close()
    return Attempt(seq, attempt, started, client_port, True)


class Load:
    """WORKERS threads send MESSAGES messages, retrying each until ``250``."""

    def __init__(self, front_port: int) -> None:
        self.front_port = front_port
        self.todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for seq in range(MESSAGES):
            self.todo.put(seq)
        self.lock = threading.Lock()
        self.attempts: list[Attempt] = []
        self.acked = 0
        self.kill_now = threading.Event()
        self.deadline = time.monotonic() + LOAD_DEADLINE
        self.threads = [threading.Thread(target=self.worker, name=f"client-{i}", daemon=True)
                        for i in range(WORKERS)]

    def worker(self) -> None:
        while True:
            try:
                seq = self.todo.get_nowait()
            except queue.Empty:
                return
            for attempt in range(1, MAX_ATTEMPTS + 1):
                if time.monotonic() > self.deadline:
                    break
                result = send(self.front_port, seq, attempt)
                with self.lock:
                    self.attempts.append(result)
                    if result.acked:
                        self.acked += 1
                        if self.acked >= KILL_AFTER:
                            self.kill_now.set()
                if result.acked:
                    break

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        # Every thread stops trying at the deadline; one attempt can last a
        # few socket timeouts beyond it.
        until = self.deadline + 4 * IO_TIMEOUT
        for thread in self.threads:
            thread.join(max(0.0, until - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "client threads hang"


# ---------------------------------------------------------------------------
# the checks


def delivery_problems(messages: int, attempts: list[Attempt],
                      records: list[dict[str, Any]], *, pids: dict[str, int],
                      victim: str, killed_at: float, front_port: int) -> list[str]:
    """Everything wrong with what the backends stored, given what the clients
    saw (messages 0 .. messages-1 were sent); an empty list when the cluster
    behaved.  Each problem starts with the letter of the property it breaks."""
    problems: list[str] = []
    by_attempt = {(a.seq, a.attempt): a for a in attempts}
    ids = {msgid(seq): seq for seq in range(messages)}

    # (c) Each record names an attempt that a client made, and a backend.
    known: list[tuple[Attempt, dict[str, Any]]] = []
    for record in records:
        attempt = None
        with contextlib.suppress(TypeError, ValueError):
            attempt = by_attempt.get((ids.get(record.get("msgid")), int(record["attempt"])))
        if attempt is None:
            problems.append(f"(c) recorded but never sent: {record}")
        elif pids.get(record.get("backend")) != record.get("pid"):
            problems.append(f"(c) recorded by an unknown backend: {record}")
        else:
            known.append((attempt, record))

    # (a) Every message acknowledged exactly once, and recorded.
    acked = Counter(a.seq for a in attempts if a.acked)
    for seq in range(messages):
        if acked[seq] != 1:
            problems.append(f"(a) message {seq} acknowledged {acked[seq]} times")
    stored = Counter((a.seq, a.attempt) for a, _ in known)
    for a in attempts:
        if a.acked and not stored[(a.seq, a.attempt)]:
            problems.append(f"(a) acknowledged but not recorded: {a}")

    # (b) One record per attempt; extra copies only from the crash.
    for key, count in stored.items():
        if count > 1:
            problems.append(f"(b) attempt {key} recorded {count} times")
    for a, record in known:
        if not a.acked and record["backend"] != victim:
            problems.append("(b) a surviving backend stored an unacknowledged attempt "
                            f"(a duplicate without a crash): {record}")

    # (d) PROXY told the truth; round robin before the kill, failover after.
    for a, record in known:
        if a.acked and record.get("src") != [HOST, a.client_port]:
            problems.append(f"(d) PROXY source is not the client {[HOST, a.client_port]}: "
                            f"{record}")
        if record.get("dst") != [HOST, front_port]:
            problems.append(f"(d) PROXY destination is not HAProxy's frontend: {record}")
        if (record.get("peer") or [None])[0] != HOST:
            problems.append(f"(d) session.peer is not HAProxy on loopback: {record}")
        if record["backend"] == victim and a.started > killed_at:
            problems.append(f"(d) the killed backend recorded an attempt made after "
                            f"its death: {record}")
    for name in pids:
        if not any(r["backend"] == name and a.started < killed_at for a, r in known):
            problems.append(f"(d) backend {name} got nothing before the kill "
                            "(no round robin)")
    if not any(r["backend"] != victim and a.started > killed_at for a, r in known):
        problems.append("(d) no surviving backend recorded a message sent after the kill "
                        "(no failover)")
    return problems


# ---------------------------------------------------------------------------
# the test


@pytest.mark.external
@pytest.mark.slow
@pytest.mark.timeout(120)  # after the test's own deadlines, which fail more clearly
@pytest.mark.skipif(HAPROXY is None, reason="haproxy not on PATH (Debian package 'haproxy')")
def test_kill_one_backend_mid_load(tmp_path: Path) -> None:
    began = time.monotonic()
    with backends(tmp_path) as cluster, haproxy(tmp_path, cluster) as front:
        victim = cluster[VICTIM]
        load = Load(front.port)
        load.start()
        try:
            assert load.kill_now.wait(LOAD_DEADLINE), \
                f"only {load.acked} messages acknowledged:\n{front.log_text()}"
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait()
            killed_at = time.monotonic()
            acked_at_kill = load.acked
        finally:
            load.join()
        down_at = poll(lambda: front.servers().get(VICTIM, ("",))[0] == "DOWN"
                       and time.monotonic(),
                       time.monotonic() + DOWN_DEADLINE, "HAProxy to mark the killed backend DOWN")
        states = front.servers()
        records = read_records(cluster)
        pids = {name: b.proc.pid for name, b in cluster.items()}

        problems = delivery_problems(MESSAGES, load.attempts, records, pids=pids, victim=VICTIM,
                                     killed_at=killed_at, front_port=front.port)
        assert not problems, "\n".join(problems[:30]) + "\n" + front.log_text()[-4000:]
        assert {name: state[0] for name, state in states.items()} == {
            name: "DOWN" if name == VICTIM else "UP" for name in BACKENDS}, states
        assert all(states[name][1] == "L7OK" for name in BACKENDS if name != VICTIM), states

    failed = [a for a in load.attempts if not a.acked]
    per_backend = Counter(r["backend"] for r in records)
    report("haproxy_cluster", messages=MESSAGES, attempts=len(load.attempts),
           failed_attempts=len(failed), acked_at_kill=acked_at_kill,
           records=len(records), duplicates=len(records) - MESSAGES,
           per_backend=dict(sorted(per_backend.items())),
           down_after_s=round(down_at - killed_at, 3),
           seconds=round(time.monotonic() - began, 2),
           errors=sorted(Counter(a.error.split(":")[0] for a in failed).items()))


# ---------------------------------------------------------------------------
# the instance script of docs/operations.rst ("Several instances behind HAProxy")


EXAMPLE = ROOT / "docs" / "examples" / "haproxy_instance.py"
# A version 2 header with the LOCAL command, as HAProxy's health checks send.
PROXY_V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00, 0x00, 0x00])


class RawSession:
    def __init__(self, port: int, header: bytes) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=IO_TIMEOUT)
        self.file = self.sock.makefile("rb")
        self.sock.sendall(header)

    def reply(self) -> int:
        while True:
            line = self.file.readline()
            assert line[:3].isdigit(), line
            if line[3:4] != b"-":
                return int(line[:3])

    def cmd(self, line: bytes) -> int:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.mark.slow
def test_documented_instance_drains_on_sigterm(tmp_path: Path) -> None:
    """On SIGTERM the script stops listening at once, lets an open
    transaction end with 250 (then 421), then exits 0; it accepts health
    checks."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    stderr = tmp_path / "instance.log"
    with stderr.open("wb") as log:
        proc = subprocess.Popen([sys.executable, str(EXAMPLE), "0"], env=env, text=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    sessions: list[RawSession] = []
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], START_DEADLINE)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith(f"listening on {HOST}:"), (line, stderr.read_text())
        port = int(line.rsplit(":", 1)[1])

        check = RawSession(port, PROXY_V2_LOCAL)
        sessions.append(check)
        assert check.reply() == 220
        assert check.cmd(b"EHLO haproxy.cluster.test") == 250

        client = RawSession(port, b"PROXY TCP4 192.0.2.10 127.0.0.1 50000 25\r\n")
        sessions.append(client)
        assert client.reply() == 220
        assert client.cmd(b"HELO client.test") == 250
        assert client.cmd(b"MAIL FROM:<a@client.test>") == 250
        assert client.cmd(b"RCPT TO:<b@cluster.test>") == 250

        proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                socket.create_connection((HOST, port), timeout=IO_TIMEOUT).close()
            except ConnectionRefusedError:
                return True
            return False

        poll(refused, time.monotonic() + IO_TIMEOUT, "the listener to close")
        assert proc.poll() is None, "exited with a transaction open"
        assert client.cmd(b"DATA") == 354
        client.sock.sendall(b"Subject: drained\r\n\r\nbody\r\n.\r\n")
        assert client.reply() == 250
        # Then the drain says goodbye (docs/operations.rst, "Graceful drain").
        assert client.reply() == 421
        check.close()
        client.close()
        assert proc.wait(IO_TIMEOUT) == 0, stderr.read_text()
        assert proc.stdout.read() == "message from 192.0.2.10 for ['b@cluster.test']\n"
    finally:
        for session in sessions:
            session.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


# ---------------------------------------------------------------------------
# the checks can fail: delivery_problems on doctored histories


T0 = 1000.0
KILLED = T0 + 10
PIDS = {"mx1": 11, "mx2": 12, "mx3": 13}
FRONT = 2525


def _history() -> tuple[list[Attempt], list[dict[str, Any]]]:
    """A history that passes: six messages, one killed mid-transaction after
    the victim stored it (retried, stored again by a survivor)."""
    attempts, records = [], []

    def store(a: Attempt, backend: str) -> None:
        records.append({"backend": backend, "pid": PIDS[backend], "msgid": msgid(a.seq),
                        "attempt": str(a.attempt), "src": [HOST, a.client_port],
                        "dst": [HOST, FRONT], "peer": [HOST, 40000 + len(records)]})

    for seq, backend in enumerate(["mx1", "mx2", "mx3"]):
        attempts.append(Attempt(seq, 1, T0 + seq, 50000 + seq, True))
        store(attempts[-1], backend)
    lost = Attempt(3, 1, KILLED - 1, 50003, False, "SMTPServerDisconnected: x")
    attempts.append(lost)
    store(lost, "mx2")  # fsynced, then SIGKILL before the 250 went out
    attempts.append(Attempt(3, 2, KILLED + 1, 50004, True))
    store(attempts[-1], "mx1")
    attempts.append(Attempt(4, 1, KILLED + 2, 50005, True))
    store(attempts[-1], "mx3")
    return attempts, records


def _problems(attempts: list[Attempt], records: list[dict[str, Any]],
              messages: int = 5) -> list[str]:
    return delivery_problems(messages, attempts, records, pids=PIDS, victim="mx2",
                             killed_at=KILLED, front_port=FRONT)


def _fails(attempts: list[Attempt], records: list[dict[str, Any]], label: str,
           messages: int = 5) -> None:
    problems = _problems(attempts, records, messages)
    assert problems and all(p.startswith(label) for p in problems), problems


def test_checker_accepts_at_least_once() -> None:
    assert _problems(*_history()) == []


def test_checker_a_lost_message() -> None:
    attempts, records = _history()
    _fails(attempts, [r for r in records if r["msgid"] != msgid(4)], "(a)")


def test_checker_a_never_acknowledged() -> None:
    attempts, records = _history()
    attempts.append(Attempt(5, 1, KILLED + 3, None, False, "ConnectionRefusedError"))
    _fails(attempts, records, "(a)", messages=6)


def test_checker_a_never_sent() -> None:
    _fails(*_history(), "(a)", messages=7)


def test_checker_b_stored_twice() -> None:
    attempts, records = _history()
    _fails(attempts, records + [records[0]], "(b)")


def test_checker_b_duplicate_without_crash() -> None:
    attempts, records = _history()
    records[3] = {**records[3], "backend": "mx3", "pid": PIDS["mx3"]}
    _fails(attempts, records, "(b)")


def test_checker_c_never_sent() -> None:
    attempts, records = _history()
    _fails(attempts, records + [{**records[0], "msgid": "<999@cluster.test>"}], "(c)")
    _fails(attempts, records + [{**records[0], "attempt": "7"}], "(c)")
    _fails(attempts, records + [{**records[0], "msgid": None}], "(c)")


def test_checker_d_proxy_source() -> None:
    attempts, records = _history()
    records[0] = {**records[0], "src": [HOST, 40000]}  # HAProxy's port, say
    _fails(attempts, records, "(d)")


def test_checker_d_no_failover() -> None:
    attempts, records = _history()
    late = {(a.seq, a.attempt) for a in attempts if a.started > KILLED}
    attempts = [replace(a, started=KILLED - 0.5) if (a.seq, a.attempt) in late else a
                for a in attempts]
    _fails(attempts, records, "(d)")


def test_checker_d_no_round_robin() -> None:
    attempts, records = _history()
    _fails(attempts, [{**r, "backend": "mx1", "pid": PIDS["mx1"]}
                      if r["backend"] == "mx3" else r for r in records], "(d)")


def test_checker_d_victim_after_death() -> None:
    attempts, records = _history()
    records[-1] = {**records[-1], "backend": "mx2", "pid": PIDS["mx2"]}
    _fails(attempts, records, "(d)")
