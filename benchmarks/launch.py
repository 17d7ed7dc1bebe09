"""Start and stop one server of a given kind, pinned to the server CPU.

Kinds:
  project   our aiosmtpd (this repo), via benchmarks/server.py
  upstream  aiosmtpd 1.4.6 from PyPI in a throwaway venv outside the repo,
            via the same benchmarks/server.py (a black box over sockets)
  floor     the canned-reply asyncio protocol in benchmarks/server.py
  smtp-sink Postfix's C test server (the native anchor)

Not run by default: ``project-wN`` (N >= 2), the project server with N worker
processes (aiosmtpd.workers), worker i pinned to CPU i: on 2 CPUs one worker
shares the client's CPU; ``project+VARIANT`` (and ``project-wN+VARIANT``),
the project server with an opt-in feature on (see VARIANTS).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.postfix import postfix_tool
from benchmarks.tlscert import TLSFiles

REPO = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = Path(__file__).resolve().parent / "server.py"
UPSTREAM_VERSION = "1.4.6"
SERVER_CPU = 0
CLIENT_CPU = 1
KINDS = ("project", "upstream", "floor", "smtp-sink")


#: ``project+NAME``: the project server with these SMTP options on
#: (benchmarks/server.py, VARIANT_OPTIONS).
VARIANTS = ("pipelining", "ops", "chunking")


def kind_variant(kind: str) -> str | None:
    """``"ops"`` for ``project+ops``; None without a variant."""
    base, plus, variant = kind.partition("+")
    return variant if plus and base.startswith("project") and variant in VARIANTS else None


def parse_kind(kind: str) -> tuple[str, int]:
    """(base kind, worker processes): ``("project", 2)`` for ``project-w2``."""
    if kind_variant(kind) is not None:
        kind = kind.partition("+")[0]
    base, sep, count = kind.rpartition("-w")
    if sep and base == "project" and count.isdigit() and int(count) >= 2:
        return base, int(count)
    return kind, 1


def known_kind(kind: str) -> bool:
    return parse_kind(kind)[0] in KINDS


class LaunchError(RuntimeError):
    pass


def upstream_venv() -> Path:
    env = os.environ.get("AIOSMTPD_BENCH_UPSTREAM_VENV")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "aiosmtpd-bench" / "upstream-venv"


def _upstream_ok(python: Path) -> bool:
    if not python.exists():
        return False
    check = (
        "import sys, aiosmtpd; from aiosmtpd.smtp import SMTP; "
        "from aiosmtpd.handlers import Sink; "
        f"sys.exit(aiosmtpd.__version__ != {UPSTREAM_VERSION!r})"
    )
    proc = subprocess.run([str(python), "-I", "-c", check], capture_output=True)
    return proc.returncode == 0


def ensure_upstream_python(log: bool = True) -> Path:
    """The venv interpreter with aiosmtpd 1.4.6, creating the venv if needed.

    Only ever used to run benchmarks/server.py: the package is a black box.
    """
    venv = upstream_venv()
    python = venv / "bin" / "python"
    if _upstream_ok(python):
        return python
    if log:
        print(f"creating {venv} with aiosmtpd=={UPSTREAM_VERSION} ...", file=sys.stderr)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"aiosmtpd=={UPSTREAM_VERSION}"],
        check=True,
    )
    if not _upstream_ok(python):
        raise LaunchError(f"aiosmtpd {UPSTREAM_VERSION} did not install in {venv}")
    return python


def project_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    return env


def project_available() -> bool:
    check = "from aiosmtpd.smtp import SMTP; from aiosmtpd.handlers import Sink"
    proc = subprocess.run(
        [sys.executable, "-c", check], env=project_env(), capture_output=True, cwd=REPO
    )
    return proc.returncode == 0


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen[bytes]
    port: int
    impl: str

    @property
    def pid(self) -> int:
        """The server process (with workers: the supervisor, see procstat.sample_tree)."""
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _read_json_line(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, object]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if not line:
        proc.kill()
        _, err = proc.communicate()
        raise LaunchError(f"server did not report its port: {err.decode(errors='replace')}")
    result: dict[str, object] = json.loads(line)
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_greeting(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(512).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return True
        except OSError:
            time.sleep(0.02)  # polling a C server we cannot ask to signal readiness
    return False


def _start_smtp_sink() -> Server:
    tool = postfix_tool("smtp-sink")
    if tool is None:
        raise LaunchError("smtp-sink not available (python3 tests/_postfix.py --fetch)")
    for _ in range(5):
        port = _free_port()
        argv = [*tool.argv, *tool.root_args, "-m", "8192", f"127.0.0.1:{port}", "4096"]
        proc = subprocess.Popen(
            argv,
            env=tool.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: pin(SERVER_CPU),
        )
        if _wait_for_greeting(port, proc, 10):
            return Server("smtp-sink", proc, port, " ".join(tool.argv))
        proc.kill()
        proc.wait()
    raise LaunchError("smtp-sink did not start")


def start(
    kind: str,
    tls: TLSFiles | None = None,
    profile: Path | None = None,
    handler: str = "sink",
    size_limit: bool = True,
    stall_file: Path | None = None,
) -> Server:
    if kind == "smtp-sink":
        if tls is not None:
            raise LaunchError("smtp-sink has no STARTTLS")
        return _start_smtp_sink()
    base, workers = parse_kind(kind)
    # -1: every CPU, worker i on CPU i.
    extra: list[str] = ["--cpu", str(SERVER_CPU if workers == 1 else -1)]
    if workers > 1:
        extra += ["--workers", str(workers)]
    if tls is not None:
        extra += ["--tls", str(tls.cert), str(tls.key)]
    if profile is not None:
        extra += ["--profile", str(profile)]
    if handler != "sink":
        extra += ["--handler", handler]
    if not size_limit:
        extra.append("--no-size-limit")
    if stall_file is not None:
        extra += ["--stall-file", str(stall_file)]
    variant = kind_variant(kind)
    if variant is not None:
        extra += ["--variant", variant]
    if kind == "upstream":
        # -I: no PYTHONPATH, no user site, no script dir: nothing of the repo.
        argv = [str(ensure_upstream_python()), "-I", str(SERVER_SCRIPT), kind]
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
    elif base in ("project", "floor"):
        argv = [sys.executable, str(SERVER_SCRIPT), base]
        env = project_env()
    else:
        raise LaunchError(f"unknown server kind {kind!r}")
    proc = subprocess.Popen(
        argv + extra,
        env=env,
        cwd=SERVER_SCRIPT.parent if kind == "upstream" else REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
    )
    info = _read_json_line(proc, 60)
    impl = str(info["impl"])
    if base == "project" and str(REPO) not in impl:
        proc.kill()
        proc.wait()
        raise LaunchError(f"project server imported the wrong aiosmtpd: {impl}")
    if kind == "upstream" and str(upstream_venv()) not in impl:
        proc.kill()
        proc.wait()
        raise LaunchError(f"upstream server imported the wrong aiosmtpd: {impl}")
    return Server(kind, proc, int(str(info["port"])), impl)


def transaction(port: int, body: bytes = b"Subject: warm-up\r\n\r\nhello\r\n") -> None:
    """One blocking SMTP transaction: warms lazy imports and caches before timing."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")

        def reply(expect: bytes) -> None:
            while True:
                line = reader.readline()
                if not line or line[3:4] != b"-":
                    break
            if not line.startswith(expect):
                raise LaunchError(f"warm-up: expected {expect!r}, got {line!r}")

        reply(b"220")
        for command, expect in (
            (b"EHLO warm.bench.localhost\r\n", b"250"),
            (b"MAIL FROM:<warm@bench.localhost>\r\n", b"250"),
            (b"RCPT TO:<warm@bench.localhost>\r\n", b"250"),
            (b"DATA\r\n", b"354"),
            (body + b".\r\n", b"250"),
            (b"QUIT\r\n", b"221"),
        ):
            sock.sendall(command)
            reply(expect)
