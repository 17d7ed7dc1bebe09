"""The scenarios, and how one (scenario, server kind) run is measured."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import launch, procstat
from benchmarks.postfix import postfix_tool
from benchmarks.tlscert import TLSFiles

LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
KIB = 1024
MIB = 1024 * 1024
FLOOD_LINES = 170_000
"""NOOP lines the flood keeps unanswered: 170,000 x 6 bytes, about 1 MB."""


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: float | None = None
    """Wanted ratio project/upstream (>= when higher is better, else <=)."""
    limit: float | None = None
    """A goal for project's median itself, in ``unit`` (<= when lower is
    better, else >=; < or > with ``strict``)."""
    strict: bool = False
    relative_to: str | None = None
    """A goal against another scenario of the same run: project's median at
    least ``share`` times project's median of the same metric there (at
    most, when lower is better)."""
    share: float = 1.0


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    sessions: int
    messages: int
    per_connection: int
    """Messages per connection; 0 keeps each session on one connection."""
    size: int
    metrics: tuple[Metric, ...]
    tls: bool = False
    idle: int = 0
    postfix_client: bool = True
    """smtp-source can drive it (no TLS, no idle hold)."""
    kinds: tuple[str, ...] = field(default=launch.KINDS)
    handler: str = "sink"
    """The aiosmtpd servers' handler: "sink" (Sink) or "hook" (a handle_DATA
    that takes envelope.content and returns 250)."""
    variant: str | None = None
    """Run the project kinds as ``project+VARIANT`` (benchmarks/launch.py)."""
    bdat_chunk: int = 0
    """Send each message as BDAT chunks of this many bytes (0: DATA)."""
    flood: int = 0
    """NOOP lines one client keeps unanswered while a bystander does round
    trips (``messages`` is then the bystander's most round trips); 0: no flood."""
    seconds: float = 0.0
    """The bystander's time bound: it starts no round trip after this."""
    stream: bool = False
    """Each session sends ONE message of ``size`` bytes, written as it goes
    from a 1 MiB block (loadgen --stream): no client holds a 1 GiB buffer."""
    size_limit: bool = True
    """The aiosmtpd servers' data_size_limit is 64 MiB; False: None (no limit)."""
    fairness: bool = False
    """The ``sessions`` big streams run at once while one more client times
    small transactions, and the server reports its event loop's worst stall."""
    single_process: bool = False
    """Not for project-wN (the stall monitor watches one event loop)."""


def scenarios(quick: bool) -> list[Scenario]:
    def n(full: int, fast: int) -> int:
        return fast if quick else full

    flood_seconds = 1.5 if quick else 5.0
    large = Scenario(
        "large",
        f"{n(8, 2)} messages of 10 MiB on one connection: throughput and server peak RSS",
        sessions=1,
        messages=n(8, 2),
        per_connection=0,
        size=10 * MIB,
        # smtp-source writes 80-byte lines through stdio and tops out
        # below what the floor takes; our client sends one prebuilt buffer.
        postfix_client=False,
        metrics=(
            Metric("mb_per_s", "MB/s", "MB/s", True, 10.0),
            Metric("peak_rss_mib", "peak RSS", "MiB", False, 0.5),
            # Peak minus the RSS after warm-up: what the messages cost,
            # without the interpreter and imports.
            Metric("rss_growth_mib", "peak RSS growth", "MiB", False),
        ),
    )
    # Rows beside large whose targets (set for Sink against 1.4.6) do not apply.
    untargeted = tuple(dataclasses.replace(m, target=None) for m in large.metrics)
    stream_size = n(1024, 64) * MIB
    fair_size = n(200, 32) * MIB
    return [
        Scenario(
            "small",
            f"{n(3000, 400):,} messages of 1 KiB, one per connection, 20 sessions in parallel",
            sessions=20,
            messages=n(3000, 400),
            per_connection=1,
            size=KIB,
            metrics=(Metric("msgs_per_s", "msgs/s", "msgs/s", True, 2.5),),
        ),
        Scenario(
            "persistent",
            f"{n(6000, 800):,} messages of 1 KiB, 4 sessions each keeping one connection "
            f"({n(6000, 800) // 4:,} messages per connection)",
            sessions=4,
            messages=n(6000, 800),
            per_connection=0,
            size=KIB,
            metrics=(Metric("msgs_per_s", "msgs/s", "msgs/s", True, 2.5),),
        ),
        large,
        dataclasses.replace(
            large,
            name="large-hook",
            what=f"as large, with a handler that has handle_DATA (so envelope.content is "
            f"built and handed over): {n(8, 2)} messages of 10 MiB",
            # This row shows what a real handler costs.
            metrics=untargeted,
            kinds=("project", "upstream"),
            handler="hook",
        ),
        dataclasses.replace(
            large,
            name="bdat",
            what=f"as large, each message as BDAT chunks of 1 MiB (CHUNKING offered, "
            f"which 1.4.6 cannot): {n(8, 2)} messages of 10 MiB",
            metrics=untargeted,
            kinds=("project",),
            variant="chunking",
            bdat_chunk=MIB,
        ),
        Scenario(
            "large-stream",
            f"ONE message of {stream_size // MIB:,} MiB with DATA on one connection, to a "
            "handler that streams it (handle_DATA_STREAM counting the bytes; upstream, which "
            "has no streaming hook: handle_DATA taking len(envelope.content)); "
            "data_size_limit=None",
            sessions=1,
            messages=1,
            per_connection=0,
            size=stream_size,
            postfix_client=False,
            metrics=(
                Metric("mb_per_s", "MB/s", "MB/s", True, relative_to="large", share=0.9),
                Metric("rss_growth_mib", "peak RSS growth", "MiB", False, limit=16),
                Metric("peak_rss_mib", "peak RSS", "MiB", False),
            ),
            kinds=("project", "upstream"),
            handler="stream",
            stream=True,
            size_limit=False,
        ),
        Scenario(
            "idle",
            f"{n(2000, 500):,} connections held open after EHLO: server RSS growth per connection",
            sessions=0,
            messages=0,
            per_connection=0,
            size=0,
            idle=n(2000, 500),
            postfix_client=False,
            metrics=(Metric("kib_per_conn", "RSS/conn", "KiB", False, 0.5),),
        ),
        Scenario(
            "cpu",
            f"{n(2000, 300):,} messages of 1 KiB, one session on one connection (lock-step, "
            "no batching): server CPU time (user+system) per message",
            sessions=1,
            messages=n(2000, 300),
            per_connection=0,
            size=KIB,
            metrics=(Metric("cpu_us_per_msg", "CPU/msg", "µs", False, 0.4),),
        ),
        Scenario(
            "starttls",
            f"{n(1000, 100):,} messages of 1 KiB after STARTTLS (ECDSA P-256), 10 per "
            "connection, 10 sessions; Python client (smtp-source has no TLS)",
            sessions=10,
            messages=n(1000, 100),
            per_connection=10,
            size=KIB,
            tls=True,
            postfix_client=False,
            metrics=(Metric("msgs_per_s", "msgs/s", "msgs/s", True),),
            kinds=("project", "upstream", "floor"),
        ),
        Scenario(
            "flood",
            f"one connection keeps {FLOOD_LINES:,} pipelined NOOP lines (about 1 MB) "
            f"unanswered while a bystander on its own connection does sequential NOOP "
            f"round trips for {flood_seconds:g} s: the bystander's round-trip time and the "
            "flood's NOOPs/s (two Python client processes)",
            sessions=2,
            messages=100_000,  # a bound only: the time ends the round trips
            per_connection=0,
            size=0,
            postfix_client=False,
            flood=FLOOD_LINES,
            seconds=flood_seconds,
            metrics=(
                Metric("rtt_median_ms", "bystander RTT median", "ms", False),
                Metric("rtt_p99_ms", "bystander RTT p99", "ms", False),
                Metric("flood_lines_per_s", "flood NOOPs/s", "lines/s", True),
            ),
            # The floor answers a whole read in one callback by design and
            # smtp-sink is C: neither says anything about aiosmtpd's
            # fairness (README).
            kinds=("project", "upstream"),
        ),
        Scenario(
            "fairness",
            f"4 clients each send ONE message of {fair_size // MIB:,} MiB with DATA at once "
            "(handler as large-stream, data_size_limit=None) while a fifth does lock-step "
            "1 KiB transactions on one connection until they are done: its latency (MAIL to "
            "the 250 after the message) and the server event loop's worst stall",
            sessions=4,
            messages=4,
            per_connection=0,
            size=fair_size,
            postfix_client=False,
            metrics=(
                Metric("small_p50_ms", "small transaction p50", "ms", False),
                Metric("small_p99_ms", "small transaction p99", "ms", False, limit=20, strict=True),
                Metric("max_stall_ms", "worst loop stall", "ms", False, limit=10, strict=True),
                Metric("mb_per_s", "big streams", "MB/s", True),
            ),
            kinds=("project", "upstream"),
            handler="stream",
            stream=True,
            size_limit=False,
            fairness=True,
            single_process=True,
        ),
    ]


@dataclass
class RunResult:
    scenario: str
    kind: str
    rep: int
    client: str
    ok: bool
    error: str = ""
    seconds: float = 0.0
    messages: int = 0
    payload_bytes: int = 0
    connections: int = 0
    server_cpu_s: float = 0.0
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    hwm_kib: int = 0
    client_wall_s: float = 0.0
    """From starting the client to its exit (includes its start-up)."""
    client_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    """Busy CPU time of everything else on the machine during the load."""
    wall_s: float = 0.0
    """The whole run: server start, warm-up, load, stop."""
    quiet_wait_s: float = 0.0
    """Time spent waiting for other work on the machine to calm down first."""
    flood: dict[str, float] = field(default_factory=dict)
    """The flood scenario's raw figures (bystander RTTs in ms, flood lines)."""
    fairness: dict[str, float] = field(default_factory=dict)
    """The fairness scenario's raw figures (small transactions' latencies in
    ms, the server loop's worst stall)."""
    delivered: list[int | None] = field(default_factory=list)
    """Streaming scenarios: the byte count each message's reply gave (the
    handler's count), None where the reply had none (the handler was not
    called: an aiosmtpd without handle_DATA_STREAM treats it like Sink)."""
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def _pin_client() -> None:
    launch.pin(launch.CLIENT_CPU)


def smtp_source_argv(scenario: Scenario, port: int) -> list[str] | None:
    tool = postfix_tool("smtp-source")
    if tool is None or not scenario.postfix_client or scenario.per_connection > 1:
        return None
    argv = [
        *tool.argv,
        "-s",
        str(scenario.sessions),
        "-m",
        str(scenario.messages),
        "-l",
        str(scenario.size),
        "-M",
        "client.bench.localhost",
        "-f",
        "sender@client.bench.localhost",
        "-t",
        "rcpt@bench.localhost",
    ]
    if scenario.per_connection == 0:
        argv.append("-d")
    return argv + [f"127.0.0.1:{port}"]


def loadgen_argv(scenario: Scenario, port: int, tls: TLSFiles | None) -> list[str]:
    argv = [sys.executable, str(LOADGEN), "--port", str(port), "--cpu", str(launch.CLIENT_CPU)]
    if scenario.idle:
        return argv + ["--idle", str(scenario.idle)]
    argv += [
        "--sessions",
        str(scenario.sessions),
        "--messages",
        str(scenario.messages),
        "--per-connection",
        str(scenario.per_connection),
        "--size",
        str(scenario.size),
    ]
    if scenario.bdat_chunk:
        argv += ["--bdat", str(scenario.bdat_chunk)]
    if scenario.stream:
        argv.append("--stream")
    if tls is not None:
        argv += ["--starttls", str(tls.ca)]
    return argv


def _client_run(
    scenario: Scenario, port: int, tls: TLSFiles | None, client: str
) -> tuple[str, float, dict[str, Any]]:
    """Drive the load; return (client name, seconds, what loadgen printed)."""
    source = smtp_source_argv(scenario, port) if client != "python" else None
    if source is not None:
        tool = postfix_tool("smtp-source")
        assert tool is not None
        start = time.perf_counter()
        proc = subprocess.run(
            source, env=tool.env, capture_output=True, preexec_fn=_pin_client, timeout=600
        )
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(
                f"smtp-source exit {proc.returncode}: "
                f"{proc.stderr.decode(errors='replace').strip()[-500:]}"
            )
        return "smtp-source", seconds, {}
    proc = subprocess.run(loadgen_argv(scenario, port, tls), capture_output=True, timeout=600)
    lines = proc.stdout.decode().strip().splitlines()
    result = json.loads(lines[-1]) if lines else {}
    if proc.returncode != 0 or "error" in result:
        raise RuntimeError(
            f"loadgen exit {proc.returncode}: {result.get('error', '')} "
            f"{proc.stderr.decode(errors='replace').strip()[-500:]}"
        )
    if result.get("messages") != scenario.messages:
        raise RuntimeError(f"loadgen sent {result.get('messages')} of {scenario.messages}")
    return "python", float(result["seconds"]), result


def _idle_run(scenario: Scenario, server: launch.Server) -> tuple[procstat.Sample, float]:
    """Hold the connections; return the server sample taken while they are held."""
    proc = subprocess.Popen(
        loadgen_argv(scenario, server.port, None),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        ready = json.loads(line) if line.strip() else {}
        if ready.get("ready") != scenario.idle:
            assert proc.stderr is not None
            raise RuntimeError(f"idle client: {ready or proc.stderr.read().decode()[-500:]}")
        held = procstat.sample_tree(server.pid)
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        proc.wait(60)
        return held, float(ready["seconds"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()


def _wait_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Wait for load generators that were told to stop; each must succeed."""
    for proc in procs:
        proc.wait(30)
        if proc.returncode != 0:
            raise RuntimeError(f"loadgen exit {proc.returncode}")


def _reap(procs: list[subprocess.Popen[bytes]]) -> None:
    """Kill what still runs (after a failure) and collect every process."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def _json_line(proc: subprocess.Popen[bytes], timeout: float, what: str) -> dict[str, Any]:
    """The next JSON line a loadgen process prints, waiting at most *timeout* s."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if not line.strip():
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=30)
        why = f"no answer in {timeout:g} s" if not ready else f"exit {proc.returncode}"
        raise RuntimeError(f"{what}: {why} {err.decode(errors='replace').strip()[-500:]}")
    data: dict[str, Any] = json.loads(line)
    if "error" in data:
        raise RuntimeError(f"{what}: {data['error']}")
    return data


def _flood_run(scenario: Scenario, port: int) -> dict[str, float]:
    """A bystander's NOOP round trips while another client floods the server.

    Two loadgen processes, each with its own connection: the bystander
    connects first (EHLO, a few unmeasured NOOPs), then the flood starts and
    keeps ``scenario.flood`` NOOP lines unanswered; once its first replies
    are back the bystander times its round trips for ``scenario.seconds``;
    then the flood stops.
    """
    base = [sys.executable, str(LOADGEN), "--port", str(port), "--cpu", str(launch.CLIENT_CPU)]
    bystander_argv = base + ["--bystander", str(scenario.messages)]
    bystander_argv += ["--max-seconds", str(scenario.seconds)]
    # The flood outlives the bystander by far unless told to stop; its own
    # bound only matters if this orchestrator dies.
    flood_argv = base + ["--flood", str(scenario.flood)]
    flood_argv += ["--max-seconds", str(scenario.seconds * 2 + 120)]
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        procs.append(proc)
        return proc

    try:
        bystander = start(bystander_argv)
        _json_line(bystander, 30, "bystander")
        flood = start(flood_argv)
        ready = _json_line(flood, 30, "flood")
        assert bystander.stdin is not None and flood.stdin is not None
        bystander.stdin.write(b"\n")
        bystander.stdin.flush()
        # A round trip started just before the time is up may take long.
        timed = _json_line(bystander, scenario.seconds + 90, "bystander")
        flood.stdin.write(b"\n")
        flood.stdin.flush()
        flooded = _json_line(flood, 30, "flood")
        _wait_all(procs)
    finally:
        _reap(procs)
    if flooded.get("stopped_by") != "stdin":
        raise RuntimeError(f"the flood stopped before the bystander was done: {flooded}")
    rtt = timed["rtt_ms"]
    return {
        "round_trips": timed["round_trips"],
        "bystander_seconds": timed["seconds"],
        **{f"rtt_{key}_ms": float(value) for key, value in rtt.items()},
        "flood_lines": flooded["lines"],
        "flood_seconds": flooded["seconds"],
        "flood_in_flight_at_start": ready["ready"],
        "flood_in_flight_mean": flooded["in_flight_mean"],
        "bystander_cpu_s": timed["cpu_s"],
        "flood_cpu_s": flooded["cpu_s"],
    }


def check_delivered(result: RunResult, loadgen: dict[str, Any]) -> None:
    """The handler's byte counts against what the client sent.

    A count that differs is an error (bytes lost or added); no count at all
    means the handler was not called, which an aiosmtpd without the streaming
    hook does (it treats a handler without handle_DATA like Sink): noted, so
    the figures are not taken for the streaming hook's.
    """
    delivered = loadgen.get("delivered", [])
    expected = loadgen.get("message_bytes")
    result.delivered = list(delivered)
    wrong = [n for n in delivered if n is not None and n != expected]
    if wrong:
        raise RuntimeError(f"the handler counted {wrong} bytes, the client sent {expected}")
    if None in delivered:
        result.notes.append(
            f"{delivered.count(None)} of {len(delivered)} replies gave no byte count: the "
            "streaming handler was not called (this aiosmtpd has no handle_DATA_STREAM?), "
            "so these are Sink's figures"
        )


class StallMonitor:
    """The server's event-loop stall monitor (server.py --stall-file), read
    through SIGUSR1: each ``mark()`` returns the worst stall since the
    previous one and starts the next span."""

    def __init__(self, pid: int, path: Path) -> None:
        self.pid = pid
        self.path = path

    def mark(self, timeout: float = 120.0) -> dict[str, float]:
        self.path.unlink(missing_ok=True)
        os.kill(self.pid, signal.SIGUSR1)
        # The loop writes the file when it gets to the signal: after a stall
        # under way, which may be long for a server holding a big message.
        deadline = time.monotonic() + timeout
        while not self.path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stall monitor did not answer in {timeout:g} s")
            time.sleep(0.005)
        data: dict[str, float] = json.loads(self.path.read_text())
        return data


def _fairness_run(
    scenario: Scenario, port: int, monitor: StallMonitor
) -> tuple[dict[str, float], dict[str, Any]]:
    """Big streams at once, small transactions beside them, the loop's stall.

    Two loadgen processes on the client CPU: the small client (one
    connection, EHLO and 3 unmeasured transactions) and the big senders
    (``scenario.sessions`` connections, each up to the 354 after DATA).
    Then the stall monitor starts its span, both get go, the small client
    loops until every big message has its 250, and the monitor is read.
    """
    base = [sys.executable, str(LOADGEN), "--port", str(port), "--cpu", str(launch.CLIENT_CPU)]
    small_argv = base + ["--small-loop", "--size", str(KIB), "--max-seconds", "900"]
    big_argv = base + ["--stream", "--go-on-stdin", "--sessions", str(scenario.sessions)]
    big_argv += ["--size", str(scenario.size)]
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        procs.append(proc)
        return proc

    def tell(proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(b"\n")
        proc.stdin.flush()

    try:
        small = start(small_argv)
        _json_line(small, 30, "small client")
        big = start(big_argv)
        _json_line(big, 60, "big senders")
        monitor.mark()
        tell(small)
        tell(big)
        streamed = _json_line(big, 900, "big senders")
        tell(small)
        timed = _json_line(small, 120, "small client")
        stall = monitor.mark()
        _wait_all(procs)
    finally:
        _reap(procs)
    if timed.get("stopped_by") != "stdin":
        raise RuntimeError(f"the small client stopped before the big messages were done: {timed}")
    latency = timed["latency_ms"]
    return {
        "small_transactions": timed["transactions"],
        "small_seconds": timed["seconds"],
        "small_min_ms": latency["min"],
        "small_p50_ms": latency["p50"],
        "small_p90_ms": latency["p90"],
        "small_p99_ms": latency["p99"],
        "small_max_ms": latency["max"],
        "small_alone_p50_ms": timed["alone_p50_ms"],
        "big_seconds": streamed["seconds"],
        "max_stall_ms": stall["worst_stall_ms"],
        "stall_ticks": stall["ticks"],
        "stall_ticks_late_over_1ms": stall["ticks_late_over_1ms"],
        "stall_span_s": stall["seconds"],
        "small_cpu_s": timed["cpu_s"],
        "big_cpu_s": streamed["cpu_s"],
    }, streamed


def compute_metrics(scenario: Scenario, r: RunResult) -> dict[str, float]:
    out: dict[str, float] = {}
    if scenario.idle:
        out["kib_per_conn"] = (r.rss_after_kib - r.rss_before_kib) / scenario.idle
        return out
    # Shares of the client's whole lifetime, the span the CPU samples cover.
    utilisation = {
        "server_cpu_util": r.server_cpu_s / r.client_wall_s,
        "client_cpu_util": r.client_cpu_s / r.client_wall_s,
        "background_cpus": r.other_cpu_s / r.client_wall_s,
    }
    if scenario.flood:
        f = r.flood
        out["rtt_median_ms"] = f["rtt_median_ms"]
        out["rtt_p99_ms"] = f["rtt_p99_ms"]
        out["rtt_max_ms"] = f["rtt_max_ms"]
        out["round_trips"] = f["round_trips"]
        out["flood_lines_per_s"] = f["flood_lines"] / f["flood_seconds"]
        out["peak_rss_mib"] = r.hwm_kib / 1024
        return out | utilisation
    if scenario.fairness:
        f = r.fairness
        for key in ("small_p50_ms", "small_p99_ms", "small_max_ms", "max_stall_ms"):
            out[key] = f[key]
        out["small_transactions"] = f["small_transactions"]
        out["mb_per_s"] = r.payload_bytes / r.seconds / 1e6
        out["peak_rss_mib"] = r.hwm_kib / 1024
        out["rss_growth_mib"] = (r.hwm_kib - r.rss_before_kib) / 1024
        return out | utilisation
    out["msgs_per_s"] = r.messages / r.seconds
    out["mb_per_s"] = r.payload_bytes / r.seconds / 1e6
    out["cpu_us_per_msg"] = r.server_cpu_s / r.messages * 1e6
    out["peak_rss_mib"] = r.hwm_kib / 1024
    out["rss_growth_mib"] = (r.hwm_kib - r.rss_before_kib) / 1024
    return out | utilisation


def run_one(
    scenario: Scenario,
    kind: str,
    rep: int,
    tls: TLSFiles | None,
    client: str = "auto",
    profile: Path | None = None,
) -> RunResult:
    """Fresh server, warm-up transaction, measured load, stop."""
    started = time.perf_counter()
    result = RunResult(scenario.name, kind, rep, client="", ok=False)
    if scenario.variant and launch.kind_variant(kind) is None:
        kind += "+" + scenario.variant
    scratch = tempfile.TemporaryDirectory(prefix="aiosmtpd-bench-") if scenario.fairness else None
    stall_file = Path(scratch.name) / "stall.json" if scratch is not None else None
    try:
        server = launch.start(
            kind,
            tls if scenario.tls else None,
            profile,
            scenario.handler,
            size_limit=scenario.size_limit,
            stall_file=stall_file,
        )
    except (launch.LaunchError, OSError) as exc:
        result.error = f"start: {exc}"
        if scratch is not None:
            scratch.cleanup()
        return result
    try:
        if not scenario.tls:
            # With workers, enough connections that each likely gets one.
            workers = launch.parse_kind(kind)[1]
            for _ in range(1 if workers == 1 else 4 * workers):
                launch.transaction(server.port)
        before = procstat.sample_tree(server.pid)
        result.rss_before_kib = before.rss_kib
        if scenario.idle:
            held, seconds = _idle_run(scenario, server)
            result.client = "python"
            result.seconds = seconds
            result.connections = scenario.idle
            result.rss_after_kib = held.rss_kib
            result.hwm_kib = held.hwm_kib
            result.server_cpu_s = held.cpu_seconds - before.cpu_seconds
        else:
            busy = procstat.system_busy_seconds()
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            client_started = time.perf_counter()
            if scenario.flood:
                result.client = "python"
                result.flood = _flood_run(scenario, server.port)
                result.seconds = result.flood["bystander_seconds"]
                result.messages = int(result.flood["round_trips"])
            elif scenario.fairness:
                assert stall_file is not None
                result.client = "python"
                result.fairness, streamed = _fairness_run(
                    scenario, server.port, StallMonitor(server.pid, stall_file)
                )
                check_delivered(result, streamed)
                result.seconds = result.fairness["big_seconds"]
                result.messages = scenario.messages
                result.payload_bytes = scenario.messages * scenario.size
            else:
                result.client, result.seconds, loadgen = _client_run(
                    scenario, server.port, tls if scenario.tls else None, client
                )
                if scenario.stream:
                    check_delivered(result, loadgen)
                result.messages = scenario.messages
                result.payload_bytes = scenario.messages * scenario.size
            result.client_wall_s = time.perf_counter() - client_started
            after = procstat.sample_tree(server.pid)
            busy = procstat.system_busy_seconds() - busy
            children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            result.client_cpu_s = (children_after.ru_utime - children.ru_utime) + (
                children_after.ru_stime - children.ru_stime
            )
            result.other_cpu_s = max(
                0.0, busy - result.client_cpu_s - (after.cpu_seconds - before.cpu_seconds)
            )
            result.server_cpu_s = after.cpu_seconds - before.cpu_seconds
            result.rss_after_kib = after.rss_kib
            result.hwm_kib = after.hwm_kib
        if not server.alive():
            raise RuntimeError(f"server exited with {server.proc.returncode}")
        result.metrics = compute_metrics(scenario, result)
        result.ok = True
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        result.error = str(exc)
    finally:
        server.stop()
        if scratch is not None:
            scratch.cleanup()
        result.wall_s = time.perf_counter() - started
    return result
