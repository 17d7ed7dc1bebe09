"""Read a server's CPU time and memory from /proc (Linux only)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    cpu_seconds: float
    """utime + stime of every thread of the process."""
    rss_kib: int
    """VmRSS: resident memory now."""
    hwm_kib: int
    """VmHWM: peak resident memory since the process started."""


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of *pid*, all threads.

    utime+stime in /proc/<pid>/stat counts clock ticks (10 ms), too coarse
    for short runs; /proc/<pid>/task/*/schedstat counts nanoseconds but only
    for live threads.  Use the precise figure unless threads that already
    exited make the tick count clearly larger.
    """
    ticks = _stat_cpu_seconds(pid)
    total_ns = 0
    found = False
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                fields = (task / "schedstat").read_text().split()
            except OSError:
                continue
            total_ns += int(fields[0])
            found = True
    except OSError:
        pass
    precise = total_ns / 1e9
    if found and ticks <= precise + 2 / _CLOCK_TICKS:
        return precise
    return ticks


def _stat_cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces; fields after ')' are fixed.
    after = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(after[11]), int(after[12])
    return (utime + stime) / _CLOCK_TICKS


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of *pid* in KiB."""
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return rss, hwm


def sample(pid: int) -> Sample:
    rss, hwm = memory_kib(pid)
    return Sample(cpu_seconds(pid), rss, hwm)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def sample_tree(pid: int) -> Sample:
    """``sample()`` summed over *pid* and its children (a supervisor and its
    workers); for one process, the same as ``sample()``.  The peak (VmHWM)
    is the sum of each process's own peak: an upper bound."""
    samples = [sample(pid)]
    for child in children(pid):
        try:
            samples.append(sample(child))
        except OSError:  # exited meanwhile
            pass
    return Sample(
        sum(s.cpu_seconds for s in samples),
        sum(s.rss_kib for s in samples),
        sum(s.hwm_kib for s in samples),
    )


def system_busy_seconds() -> float:
    """CPU time spent busy on the whole machine, all CPUs (from /proc/stat).

    Counts user, nice, system, irq, softirq and steal; not idle or iowait.
    Compared with our own server and client CPU, it shows how much other
    work (or a hypervisor) competed with the benchmark.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    user, nice, system, _idle, _iowait, irq, softirq = values[:7]
    steal = values[7] if len(values) > 7 else 0
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def wait_for_quiet(max_wait: float, threshold: float = 0.15, window: float = 0.25) -> float:
    """Wait (at most *max_wait* s) until the machine is nearly idle.

    On a shared machine other work comes in bursts; starting a measurement
    in a lull makes it far less noisy.  Returns the seconds waited.
    *threshold* is in CPUs busy (0.15 = 15 % of one CPU, all CPUs together).
    """
    start = time.monotonic()
    while True:
        busy = system_busy_seconds()
        began = time.monotonic()
        time.sleep(window)
        load = (system_busy_seconds() - busy) / (time.monotonic() - began)
        waited = time.monotonic() - start
        if load <= threshold or waited >= max_wait:
            return waited
