"""The one command: ``python3 -m benchmarks [--quick]`` (see benchmarks/README.md)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import launch, procstat, report
from benchmarks.postfix import cache_dir, fetch, postfix_tool
from benchmarks.scenarios import RunResult, Scenario, run_one, scenarios
from benchmarks.tlscert import make_tls_files

RESULTS = Path(__file__).resolve().parent / "results"
DOCS_CHART = launch.REPO / "docs" / "_static" / "performance.png"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    names = [s.name for s in scenarios(quick=False)]
    p = argparse.ArgumentParser(
        prog="python3 -m benchmarks",
        description="Side-by-side SMTP server benchmark: project vs upstream 1.4.6 "
        "vs a pure-Python floor vs Postfix smtp-sink.",
    )
    p.add_argument("--quick", action="store_true", help="small workloads, 1 repetition (< 1 min)")
    p.add_argument("--reps", type=int, help="repetitions (default: 5 full, 1 quick)")
    p.add_argument(
        "--kinds",
        default=",".join(launch.KINDS),
        help="comma-separated server kinds (default: %(default)s); also "
        "project-wN: the project server with N >= 2 worker processes",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(names),
        help="comma-separated scenarios (default: %(default)s)",
    )
    p.add_argument(
        "--client",
        choices=["auto", "python"],
        default="auto",
        help="auto: smtp-source where it can drive the scenario; python: ours only",
    )
    p.add_argument(
        "--no-fetch",
        action="store_true",
        help="do not apt-get download Postfix when smtp-source is missing",
    )
    p.add_argument("--json", type=Path, help="results file (default: benchmarks/results/MODE.json)")
    p.add_argument(
        "--chart",
        type=Path,
        help="PNG path (default: docs/_static/performance.png for a full run of "
        "everything, else benchmarks/results/MODE.png)",
    )
    p.add_argument("--no-chart", action="store_true")
    p.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="niceness change for the orchestrator, servers and clients "
        "(default: %(default)s when permitted; 0 to leave it)",
    )
    p.add_argument(
        "--realtime",
        action="store_true",
        help="run orchestrator, servers and clients in the SCHED_RR real-time class "
        "(root only): far less noise on a busy machine, at the expense of other work",
    )
    p.add_argument(
        "--no-docs",
        action="store_true",
        help="do not write a full run's table into docs/performance.rst",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        help="before each run, wait up to this many seconds for other work on the "
        "machine to stop (default: 10 full, 0 quick; at most 150 s in all)",
    )
    p.add_argument(
        "--profile",
        choices=["project", "floor"],
        metavar="KIND",
        help="instead of benchmarking, run one scenario against KIND under "
        "cProfile and write .pstats plus a top-30 text",
    )
    p.add_argument("--profile-scenario", default="persistent", choices=names)
    args = p.parse_args(argv)
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    for kind in args.kinds:
        if not launch.known_kind(kind):
            p.error(
                f"unknown kind {kind!r}; choose from {', '.join(launch.KINDS)}, project-wN"
            )
    for name in args.scenarios:
        if name not in names:
            p.error(f"unknown scenario {name!r}; choose from {', '.join(names)}")
    if args.reps is None:
        args.reps = 1 if args.quick else 5
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 10.0
    return args


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=launch.REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "aiosmtpd"],
        cwd=launch.REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    version_file = cache_dir() / "VERSION"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "project_commit": commit + ("+dirty" if dirty else ""),
        "postfix": version_file.read_text().strip() if version_file.exists() else "?",
        "server_cpu": launch.SERVER_CPU,
        "client_cpu": launch.CLIENT_CPU,
        "niceness": os.nice(0),
        "scheduler": "SCHED_RR" if os.sched_getscheduler(0) == os.SCHED_RR else "normal",
    }


def _available_kinds(wanted: list[str]) -> tuple[list[str], list[str]]:
    kinds, notes = [], []
    for kind in wanted:
        if launch.parse_kind(kind)[0] == "project" and not launch.project_available():
            notes.append(
                "project skipped: `from aiosmtpd.smtp import SMTP; "
                "from aiosmtpd.handlers import Sink` fails"
            )
            continue
        if kind == "upstream":
            try:
                launch.ensure_upstream_python()
            except (launch.LaunchError, subprocess.CalledProcessError) as exc:
                notes.append(f"upstream skipped: {exc}")
                continue
        if kind == "smtp-sink" and postfix_tool("smtp-sink") is None:
            notes.append("smtp-sink skipped: Postfix not available")
            continue
        kinds.append(kind)
    return kinds, notes


def _describe(r: RunResult) -> str:
    if not r.ok:
        return f"FAILED after {r.wall_s:.1f} s: {r.error}"
    m = r.metrics
    if "kib_per_conn" in m:
        return f"{m['kib_per_conn']:.2f} KiB/conn (rss {r.rss_before_kib}->{r.rss_after_kib} KiB)"
    if "max_stall_ms" in m:
        text = f"small transactions p50 {m['small_p50_ms']:.2f} ms p99 {m['small_p99_ms']:.2f} ms"
        text += f" max {m['small_max_ms']:.2f} ms ({m['small_transactions']:,.0f};"
        text += f" alone p50 {r.fairness['small_alone_p50_ms']:.2f} ms);"
        text += f" worst loop stall {m['max_stall_ms']:.1f} ms; big streams {m['mb_per_s']:.1f}"
        text += f" MB/s (server {m['server_cpu_util']:.0%} client {m['client_cpu_util']:.0%}"
        text += f" other {m['background_cpus']:.0%}) hwm {r.hwm_kib / 1024:.1f} MiB"
        text += f" growth {m['rss_growth_mib']:.1f} MiB"
        return text + "".join(f" NOTE: {n}" for n in r.notes) + f" [{r.client}, {r.wall_s:.1f} s]"
    if "rtt_p99_ms" in m:
        text = f"bystander RTT median {m['rtt_median_ms']:.2f} ms p99 {m['rtt_p99_ms']:.2f} ms"
        text += f" max {m['rtt_max_ms']:.2f} ms ({m['round_trips']:,.0f} round trips)"
        text += f"; flood {m['flood_lines_per_s']:,.0f} NOOPs/s"
        text += f", {r.flood['flood_in_flight_mean']:,.0f} in flight (server"
        text += f" {m['server_cpu_util']:.0%} client {m['client_cpu_util']:.0%}"
        text += f" other {m['background_cpus']:.0%})"
        return text + f" hwm {r.hwm_kib / 1024:.1f} MiB [{r.client}, {r.wall_s:.1f} s]"
    text = f"{m['msgs_per_s']:,.0f} msgs/s {m['mb_per_s']:.1f} MB/s"
    text += f" cpu {m['cpu_us_per_msg']:.0f} us/msg (server {m['server_cpu_util']:.0%}"
    text += f" client {m['client_cpu_util']:.0%} other {m['background_cpus']:.0%})"
    text += f" hwm {r.hwm_kib / 1024:.1f} MiB"
    if r.delivered:
        text += f" growth {m['rss_growth_mib']:.1f} MiB"
    text += "".join(f" NOTE: {n}" for n in r.notes)
    return text + f" [{r.client}, {r.wall_s:.1f} s]"


def _profile(args: argparse.Namespace) -> int:
    scenario = next(s for s in scenarios(args.quick) if s.name == args.profile_scenario)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"profile-{args.profile}-{scenario.name}.pstats"
    with tempfile.TemporaryDirectory(prefix="aiosmtpd-bench-") as tmp:
        tls = make_tls_files(Path(tmp)) if scenario.tls else None
        result = run_one(scenario, args.profile, 0, tls, args.client, profile=out)
    _log(f"{scenario.name} {args.profile}: {_describe(result)}")
    text = Path(str(out) + ".txt")
    if not result.ok or not text.exists():
        _log("profiling failed")
        return 1
    print(text.read_text())
    _log(f"wrote {out} and {text} (under cProfile: figures are slower than real)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    launch.pin(launch.CLIENT_CPU)  # keep the orchestrator off the server's CPU
    if args.realtime:
        try:
            # Round-robin real-time class, inherited like niceness.  On a busy
            # machine a woken lock-step server or client otherwise waits for
            # the running task's time slice to end, every round trip.
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
        except (OSError, AttributeError) as exc:
            _log(f"--realtime not possible ({exc}): running at normal priority")
    if args.nice:
        try:
            # Inherited by every server and client we start, so all kinds get
            # the same head start over unrelated work on a shared machine.
            os.nice(args.nice)
        except OSError:
            _log(f"could not renice by {args.nice} (needs root): running at normal priority")
    if postfix_tool("smtp-source") is None and not args.no_fetch and args.client == "auto":
        _log("fetching Postfix smtp-source/smtp-sink (apt-get download; no daemon) ...")
        if not fetch(verbose=True):
            _log("Postfix unavailable: the Python load generator drives every scenario")
    if args.profile:
        return _profile(args)

    # Only a full run of everything stands for the docs page and its chart.
    complete = list(args.kinds) == list(launch.KINDS) and args.scenarios == [
        s.name for s in scenarios(quick=False)
    ]
    mode = "quick" if args.quick else ("full" if complete else "partial")
    wanted = set(args.scenarios)
    for scenario in scenarios(args.quick):
        for metric in scenario.metrics if scenario.name in wanted else ():
            if metric.relative_to is not None and metric.relative_to not in wanted:
                # A goal against another scenario needs its figure from this run.
                _log(
                    f"{scenario.name}'s {metric.label} goal compares with "
                    f"{metric.relative_to}: running {metric.relative_to} too"
                )
                wanted.add(metric.relative_to)
    chosen = [s for s in scenarios(args.quick) if s.name in wanted]
    kinds, notes = _available_kinds(args.kinds)
    for note in notes:
        _log(note)
    if not kinds:
        _log("no server kind available")
        return 1

    started = time.monotonic()
    quiet_budget = min(args.quiet_wait * 30, 150.0)
    runs: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="aiosmtpd-bench-") as tmp:
        tls = make_tls_files(Path(tmp)) if any(s.tls for s in chosen) else None
        # Interleaved: every kind runs each scenario once per repetition, in an
        # order rotated per repetition, so drift (thermal, other load) spreads
        # over all kinds instead of biasing the one measured last.
        for rep in range(args.reps):
            order = kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]
            for scenario in chosen:
                for kind in order:
                    base, workers = launch.parse_kind(kind)
                    if base not in scenario.kinds or (scenario.single_process and workers > 1):
                        continue
                    waited = 0.0
                    if quiet_budget > 0:
                        waited = procstat.wait_for_quiet(min(args.quiet_wait, quiet_budget))
                        quiet_budget -= waited
                    result = run_one(scenario, kind, rep, tls, args.client)
                    result.quiet_wait_s = waited
                    runs.append(result)
                    step = f"[{rep + 1}/{args.reps}] {scenario.name:<12} {kind:<9}"
                    _log(f"{step} {_describe(result)}")
        tls_maker = tls.made_by if tls else None
    elapsed = time.monotonic() - started

    rows = report.summarise(chosen, kinds, runs)
    table = report.markdown_table(rows, kinds)
    meta = _machine()
    meta.update(
        {
            "mode": mode,
            "reps": args.reps,
            "elapsed_s": round(elapsed, 1),
            "tls_cert": tls_maker,
            "notes": notes,
        }
    )
    print(f"\n## aiosmtpd benchmark ({mode}, {args.reps} reps, {elapsed:.0f} s, {meta['date']})\n")
    print(
        f"Machine: {meta['cpu']}, {meta['cpus']} CPUs, Linux {meta['kernel']}, "
        f"Python {meta['python']}; server on CPU {launch.SERVER_CPU}, client on CPU "
        f"{launch.CLIENT_CPU}. Cells: median (min-max).\n"
    )
    print(table)
    print()
    for scenario in chosen:
        clients = sorted({r.client for r in runs if r.scenario == scenario.name and r.ok})
        print(f"- `{scenario.name}` ({', '.join(clients) or 'no client ran'}): {scenario.what}")
    background = [r.metrics["background_cpus"] for r in runs if "background_cpus" in r.metrics]
    if background:
        busy = statistics.median(background)
        meta["background_cpus_median"] = round(busy, 3)
        print(
            f"\nOther work on the machine during the measurements: median {busy:.2f} CPUs "
            f"(max {max(background):.2f})."
        )
        waited = sum(r.quiet_wait_s for r in runs)
        if waited >= 1:
            print(f"Waited {waited:.0f} s in all for quiet moments before runs.")
        if busy > 0.25:
            print("WARNING: the machine was busy; absolute figures are low and ratios noisy.")
    for r in runs:
        for note in r.notes:
            print(f"- NOTE {r.scenario}/{r.kind} rep {r.rep + 1}: {note}")
    failures = [r for r in runs if not r.ok]
    for r in failures:
        print(f"- FAILED {r.scenario}/{r.kind} rep {r.rep + 1}: {r.error}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = args.json or RESULTS / f"{mode}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(
        json.dumps(
            {
                "meta": meta,
                "scenarios": [_scenario_json(s) for s in chosen],
                "summary": report.rows_as_json(rows),
                "runs": [asdict(r) for r in runs],
            },
            indent=1,
        )
        + "\n"
    )
    rst_path = json_path.with_suffix(".rst")
    rst_path.write_text(report.rst_table(rows, kinds) + "\n")
    _log(f"wrote {json_path} and {rst_path}")
    if mode == "full" and not args.no_docs and args.json is None:
        _log(_update_docs(meta, rows, kinds))
    if not args.no_chart:
        chart_path = args.chart or (DOCS_CHART if mode == "full" else RESULTS / f"{mode}.png")
        title = (
            f"aiosmtpd benchmark, {meta['date'][:10]}: {meta['cpu']}, {args.reps} interleaved runs"
        )
        why_not = report.chart(rows, kinds, chart_path, title)
        _log(why_not or f"wrote {chart_path}")
    return 1 if failures and len(failures) == len(runs) else 0


DOCS_PAGE = launch.REPO / "docs" / "performance.rst"
START, END = ".. benchmark-results-start", ".. benchmark-results-end"


def _update_docs(meta: dict[str, Any], rows: list[report.Row], kinds: list[str]) -> str:
    """Put this run's table between the markers of docs/performance.rst."""
    try:
        page = DOCS_PAGE.read_text()
        head, rest = page.split(START, 1)
        _, tail = rest.split(END, 1)
    except (OSError, ValueError):
        return f"{DOCS_PAGE} has no {START} / {END} markers: not updated"
    busy = meta.get("background_cpus_median")
    lines = [
        f"Full run of {meta['date'][:10]} ({meta['reps']} interleaved repetitions, "
        f"{meta['elapsed_s']:.0f} s) on {meta['cpu']} with {meta['cpus']} CPUs, Linux "
        f"{meta['kernel']}, Python {meta['python']}, project at commit "
        f"``{meta['project_commit']}``, Postfix {meta['postfix']}; "
        + (
            "servers and clients in the SCHED_RR real-time class (``--realtime``). "
            if meta.get("scheduler") == "SCHED_RR"
            else f"niceness {meta.get('niceness', 0)}. "
        )
        + "Cells: median (min-max).",
    ]
    if busy is not None:
        lines.append("")
        lines.append(
            f"Other work used a median {busy:.2f} CPUs of the machine during the "
            "measurements"
            + (
                "; the benchmark's own processes ran ahead of it in the real-time class, "
                "but absolute figures are still lower than on an idle machine: read the ratios."
                if busy > 0.25 and meta.get("scheduler") == "SCHED_RR"
                else ": absolute figures are low and spread widely; read the ratios."
                if busy > 0.25
                else "."
            )
        )
    block = "\n".join(lines) + "\n\n" + report.rst_table(rows, kinds) + "\n\n"
    DOCS_PAGE.write_text(head + START + "\n\n" + block + END + tail)
    return f"updated the results in {DOCS_PAGE}"


def _scenario_json(s: Scenario) -> dict[str, Any]:
    data = asdict(s)
    data["metrics"] = [asdict(m) for m in s.metrics]
    return data
