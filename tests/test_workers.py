"""Worker processes: ``aiosmtpd --workers N`` and the ``aiosmtpd.workers`` API.

Real processes on loopback, port 0: the supervisor's stderr (its log) tells
the port and what happened; each worker answers NOOP with its pid
(tests/_workers.py). Every process is killed at the end of its test, whatever
happened: each server runs in a session of its own, and every process of
that session is killed (the workers run in process groups of their own).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from aiosmtpd import workers
from aiosmtpd.main import parseargs
from aiosmtpd.smtp import SMTP
from aiosmtpd.workers import REUSE_PORT, bind_sockets, create_server

REPO = Path(__file__).resolve().parent.parent
DEADLINE = 20.0  # seconds; every wait below polls a condition until then
PID_HANDLER = "tests._workers.PidHandler"

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="workers need os.fork()")


class Server:
    """A server process whose stderr lines are collected as they come."""

    def __init__(self, argv: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    @property
    def stderr(self) -> str:
        with self.changed:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: str) -> re.Match[str]:
        """The first stderr line matching ``pattern``, waiting for it if need be."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + DEADLINE
        with self.changed:
            while True:
                for line in self.lines:
                    match = regex.search(line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or (not self.reader.is_alive() and self.proc.poll() is not None):
                    pytest.fail(f"no line matching {pattern!r} on stderr:\n" + self.stderr)
                self.changed.wait(min(left, 0.5))

    def kill(self) -> None:
        # The whole session: the supervisor and every worker, even orphaned.
        for pid in session(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(DEADLINE)
        self.reader.join(DEADLINE)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()

    @staticmethod
    def children_of(pid: int) -> set[int] | None:
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return None
        return {int(child) for child in text.split()}

    def workers(self) -> set[int]:
        children = self.children_of(self.proc.pid)
        if children is None:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.stderr}")
            pytest.skip("/proc/PID/task/PID/children is not available")
        return children


def session(sid: int) -> list[int]:
    """The processes of session ``sid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Fields after the command name: state, ppid, pgrp, session...
            if int(stat.rpartition(")")[2].split()[3]) == sid:
                found.append(int(entry.name))
    return found


@pytest.fixture
def start() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(*argv: str) -> Server:
        server = Server(list(argv))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


def cli(start: Callable[..., Server], *argv: str) -> tuple[Server, int]:
    """``python -m aiosmtpd -d ARGV -l 127.0.0.1:0``; returns it and its port."""
    server = start("-m", "aiosmtpd", "-d", "-l", "127.0.0.1:0", "-c", PID_HANDLER, *argv)
    match = server.wait_for_line(r"^INFO:mail\.log:Server is listening on 127\.0\.0\.1:(\d+)$")
    port = int(match.group(1))
    assert port != 0
    return server, port


def served_by(port: int) -> int:
    """Connect, and return the pid of the process that answers NOOP."""
    with closing(smtplib.SMTP("127.0.0.1", port, timeout=DEADLINE)) as client:
        code, text = client.noop()
        assert code == 250, text
        client.quit()
    return int(text.split()[1])


def poll(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.01)  # polling interval, not synchronisation


def collect_pids(port: int, wanted: Callable[[set[int]], bool]) -> set[int]:
    """Connect again and again until the set of answering pids is ``wanted``."""
    seen: set[int] = set()
    poll(lambda: wanted(seen) or seen.add(served_by(port)), "the right workers answered")
    return seen


def gone(pid: int) -> bool:
    """The process has exited (zombies count: nobody may be left to reap them)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


# ---------------------------------------------------------------- the command line


def test_two_workers_serve_one_port(start: Callable[..., Server]) -> None:
    server, port = cli(start, "-n", "--workers", "2")
    poll(lambda: len(server.workers()) == 2, "two workers run")
    pids = server.workers()
    assert server.proc.pid not in pids
    # The kernel spreads new connections over both workers.
    assert collect_pids(port, lambda seen: len(seen) == 2) == pids
    with closing(smtplib.SMTP("127.0.0.1", port, timeout=DEADLINE)) as client:
        assert client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nx\r\n") == {}
    mode = "a SO_REUSEPORT socket each" if REUSE_PORT else "one shared socket"
    server.wait_for_line(rf"^INFO:mail\.log\.workers:Starting 2 workers \({mode}\)$")
    assert "Traceback" not in server.stderr


def test_killed_worker_is_restarted(start: Callable[..., Server]) -> None:
    server, port = cli(start, "-n", "--workers", "2")
    poll(lambda: len(server.workers()) == 2, "two workers run")
    before = server.workers()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    server.wait_for_line(
        rf"^WARNING:mail\.log\.workers:Worker {victim} was killed by signal "
        rf"{int(signal.SIGKILL)} \(SIGKILL\); restarting it now$"
    )
    poll(lambda: len(server.workers()) == 2 and victim not in server.workers(), "a new worker")
    after = server.workers()
    (new,) = after - before
    assert after == (before - {victim}) | {new}
    # Still serving, by the new worker too: no connection fails meanwhile.
    assert new in collect_pids(port, lambda seen: new in seen and len(seen) == 2)
    assert gone(victim)


# As the single process: status 0 after SIGINT, killed by SIGTERM after
# SIGTERM (what service managers expect).
STOPS = {
    "SIGINT": (signal.SIGINT, 0, "exited with status 0"),
    "SIGTERM": (signal.SIGTERM, -signal.SIGTERM, r"was killed by signal 15 \(SIGTERM\)"),
}


@pytest.mark.parametrize("how", list(STOPS))
def test_stop_signal_stops_every_worker(start: Callable[..., Server], how: str) -> None:
    signum, status, ended = STOPS[how]
    server, port = cli(start, "-n", "--workers", "2")
    poll(lambda: len(server.workers()) == 2, "two workers run")
    pids = server.workers()
    collect_pids(port, lambda seen: len(seen) == 2)  # both are serving
    began = time.monotonic()
    server.proc.send_signal(signum)
    assert server.proc.wait(DEADLINE) == status
    assert time.monotonic() - began < 5
    for pid in pids:
        # Reaped by the supervisor before it exited.
        assert gone(pid)
        server.wait_for_line(rf"^INFO:mail\.log\.workers:Worker {pid} {ended}$")
    server.wait_for_line(rf"^INFO:mail\.log\.workers:Received {signal.Signals(signum).name}: ")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=DEADLINE).close()
    assert "WARNING" not in server.stderr and "Traceback" not in server.stderr


def test_ctrl_c_drains_once(start: Callable[..., Server]) -> None:
    # Ctrl-C in a terminal signals the whole foreground process group. Each
    # worker must get SIGINT once (from the supervisor): a second one would
    # cut the drain short and drop the transaction in flight.
    server, port = cli(start, "-n", "--workers", "2")
    poll(lambda: len(server.workers()) == 2, "two workers run")
    with closing(smtplib.SMTP("127.0.0.1", port, timeout=DEADLINE)) as client:
        assert client.ehlo("me")[0] == 250
        assert client.mail("a@example.com")[0] == 250
        assert client.rcpt("b@example.com")[0] == 250
        os.killpg(os.getpgid(server.proc.pid), signal.SIGINT)

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=DEADLINE).close()
            except ConnectionRefusedError:
                return True
            return False

        poll(refused, "every worker stops accepting (draining)")
        code, text = client.data(b"Subject: drained\r\n\r\nstill delivered\r\n")
        assert code == 250, text
        assert client.noop()[0] == 421
    assert server.proc.wait(DEADLINE) == 0
    assert "Stopping without waiting for the drain" not in server.stderr


def test_workers_stop_when_the_supervisor_is_killed(start: Callable[..., Server]) -> None:
    server, port = cli(start, "-n", "--workers", "2")
    poll(lambda: len(server.workers()) == 2, "two workers run")
    pids = server.workers()
    os.kill(server.proc.pid, signal.SIGKILL)
    poll(lambda: all(gone(pid) for pid in pids), "the orphaned workers exit")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=DEADLINE).close()


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("how", list(STOPS))
def test_one_worker_is_the_single_process(start: Callable[..., Server], how: str) -> None:
    signum, status, _ = STOPS[how]
    # The single-process server logs the port it was given: pick a free one.
    port = free_port()
    server = start(
        "-m", "aiosmtpd", "-n", "-d", "--workers", "1", "-l", f"127.0.0.1:{port}", "-c", PID_HANDLER
    )
    server.wait_for_line(rf"^INFO:mail\.log:Server is listening on 127\.0\.0\.1:{port}$")
    assert [served_by(port) for _ in range(3)] == [server.proc.pid] * 3
    assert server.workers() == set()
    server.proc.send_signal(signum)
    assert server.proc.wait(DEADLINE) == status
    assert "mail.log.workers" not in server.stderr


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", ""])
def test_bad_worker_counts(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parseargs(["-n", "--workers", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(
        f"error: argument --workers: must be a whole number, 1 or more, not {value!r}\n"
    )


def scrape(port: int) -> dict[str, float]:
    parser = pytest.importorskip("prometheus_client.parser")
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=DEADLINE) as response:
        text = response.read().decode()
    return {
        s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
        for family in parser.text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_add_up_over_workers(start: Callable[..., Server]) -> None:
    server, port = cli(start, "-n", "--workers", "2", "--metrics", "127.0.0.1:0")
    match = server.wait_for_line(r"^INFO:mail\.log:Metrics at http://127\.0\.0\.1:(\d+)/metrics$")
    metrics_port = int(match.group(1))
    # Two workers and the process that serves the metrics.
    poll(lambda: len(server.workers()) == 3, "three processes run")
    for _ in range(6):
        with closing(smtplib.SMTP("127.0.0.1", port, timeout=DEADLINE)) as client:
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nx\r\n")
    # Both workers served mail (the kernel spreads connections)...
    mail_workers = collect_pids(port, lambda seen: len(seen) == 2)
    poll(lambda: scrape(metrics_port)["aiosmtpd_connections_open"] == 0, "all closed")
    first = scrape(metrics_port)
    # ...and the endpoint gives the sum.
    assert first["aiosmtpd_messages_accepted_total"] == 6
    assert first["aiosmtpd_transactions_total"] == 6
    assert first["aiosmtpd_connections_total"] >= 8
    # A worker's counts outlive it: its replacement counts on in its slot.
    victim = min(mail_workers)
    os.kill(victim, signal.SIGKILL)
    poll(lambda: len(server.workers()) == 3 and victim not in server.workers(), "a new worker")
    assert scrape(metrics_port)["aiosmtpd_messages_accepted_total"] == 6


def test_worker_count_parsed() -> None:
    assert parseargs(["-n"])[1].workers == 1
    assert parseargs(["-n", "--workers", "3"])[1].workers == 3


def test_no_fork_no_workers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delattr(os, "fork")
    assert parseargs(["-n", "--workers", "1"])[1].workers == 1
    with pytest.raises(SystemExit) as exc:
        parseargs(["-n", "--workers", "2"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.endswith(
        "error: argument --workers: more than 1 needs os.fork(), which this platform lacks\n"
    )
    with pytest.raises(RuntimeError, match="needs os.fork"):
        workers.run_workers(lambda sockets: None, [[]])


def proc_ids(pid: int) -> tuple[list[str], list[str]]:
    fields = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return fields["Uid"].split(), fields["Gid"].split()


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="privilege drop needs root"
)
def test_supervisor_and_workers_drop_privileges(start: Callable[..., Server]) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    server, port = cli(start, "--workers", "2")
    poll(lambda: len(server.workers()) == 2, "two workers run")
    for pid in (server.proc.pid, *server.workers()):
        assert proc_ids(pid) == ([str(nobody.pw_uid)] * 4, [str(nobody.pw_gid)] * 4)
    assert collect_pids(port, lambda seen: len(seen) == 2) == server.workers()
    # A restarted worker comes from the unprivileged supervisor.
    victim = min(server.workers())
    os.kill(victim, signal.SIGKILL)
    poll(lambda: len(server.workers()) == 2 and victim not in server.workers(), "a new worker")
    for pid in server.workers():
        assert proc_ids(pid)[0] == [str(nobody.pw_uid)] * 4
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(DEADLINE) == 0


# ---------------------------------------------------------------- the Python API


def api(start: Callable[..., Server], *argv: str) -> tuple[Server, int]:
    server = start("-m", "tests._workers", *argv)
    assert server.proc.stdout is not None
    line = server.proc.stdout.readline()
    assert line.startswith("port "), server.stderr
    return server, int(line.split()[1])


@pytest.mark.parametrize("shared", [False, True], ids=["default", "shared socket"])
def test_api_serves_and_stops(start: Callable[..., Server], shared: bool) -> None:
    server, port = api(start, "serve", *(["--shared"] if shared else []))
    poll(lambda: len(server.workers()) == 2, "two workers run")
    pids = server.workers()
    seen = collect_pids(port, lambda seen: len(seen) >= 1)
    assert seen <= pids
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(DEADLINE) == 0
    assert all(gone(pid) for pid in pids)
    assert server.stderr == ""
    assert server.proc.stdout is not None
    assert server.proc.stdout.read() == f"stopped by {int(signal.SIGTERM)}\n"


def test_api_crash_loop_backs_off(start: Callable[..., Server]) -> None:
    server, _ = api(start, "crash")
    # Deaths within a second of starting: restarted at once, then after
    # 0.1 s, 0.2 s, 0.4 s...
    server.wait_for_line(r"restarting it in 0\.4 s$")
    warnings = [line for line in server.stderr.splitlines() if line.startswith("Worker ")]
    assert [line.rpartition("restarting it ")[2] for line in warnings[:4]] == [
        "now",
        "in 0.1 s",
        "in 0.2 s",
        "in 0.4 s",
    ]
    assert all(" exited with status 3; " in line for line in warnings)
    server.wait_for_line(r"^Worker \d+ exited with status 3; restarting it in 0\.8 s$")
    starts = [float(line.split()[1]) for line in server.stderr.splitlines() if "started" in line]
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    for gap, delay in zip(gaps, [0.0, 0.1, 0.2, 0.4]):
        assert gap >= delay
    assert len(starts) >= 5
    server.proc.send_signal(signal.SIGTERM)  # while no worker runs
    assert server.proc.wait(DEADLINE) == 0


def test_restart_delays() -> None:
    delays = [workers._restart_delay(n) for n in range(1, 11)]
    assert delays[:5] == [0.0, 0.1, 0.2, 0.4, 0.8]
    assert delays[-1] == workers.MAX_DELAY == 10.0


def test_bind_sockets_port_0() -> None:
    groups = bind_sockets("127.0.0.1", 0, 3, reuse_port=REUSE_PORT)
    try:
        assert len(groups) == 3 and all(len(group) == 1 for group in groups)
        ports = {sock.getsockname() for group in groups for sock in group}
        assert len(ports) == 1 and ports.pop()[1] != 0
        distinct = {id(sock) for group in groups for sock in group}
        assert len(distinct) == (3 if REUSE_PORT else 1)
    finally:
        for group in groups:
            for sock in group:
                sock.close()


def test_bind_sockets_shared() -> None:
    groups = bind_sockets("127.0.0.1", 0, 2, reuse_port=False)
    try:
        assert groups[0] is groups[1]
        assert not groups[0][0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    finally:
        groups[0][0].close()


def test_bind_sockets_address_in_use() -> None:
    with closing(socket.create_server(("127.0.0.1", 0))) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="address already in use"):
            bind_sockets("127.0.0.1", port, 2)


def test_bind_sockets_bad_count() -> None:
    with pytest.raises(ValueError):
        bind_sockets("127.0.0.1", 0, 0)


def test_create_server_several_addresses() -> None:
    # Every interface: 0.0.0.0 and, where IPv6 works, ::, on one port.
    try:
        groups = bind_sockets("", 0, 2)
    except OSError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"cannot bind every interface: {exc}")
    sockets = groups[0]
    port = sockets[0].getsockname()[1]
    assert {sock.getsockname()[1] for group in groups for sock in group} == {port}
    hosts = ["127.0.0.1"] + (["::1"] if len(sockets) > 1 else [])
    # Only the first worker's sockets are served here: with SO_REUSEPORT the
    # kernel would hand some connections to the second's.
    for sock in groups[1]:
        if sock not in sockets:
            sock.close()

    async def check() -> None:
        server = await create_server(lambda: SMTP(None, hostname="workers.test"), sockets)
        assert server.is_serving()
        for host in hosts:
            reader, writer = await asyncio.open_connection(host, port)
            assert (await reader.readline()).startswith(b"220 workers.test ")
            writer.close()
        server.close()
        await server.wait_closed()
        assert not server.is_serving()

    try:
        asyncio.run(check())
    finally:
        for group in groups:
            for sock in group:
                sock.close()
