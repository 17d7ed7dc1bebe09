"""Read a server's CPU time and memory from /proc (Linux only)."""

from __future__ import annotations

import os
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
