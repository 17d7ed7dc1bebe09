"""Static checks as tests, so the single README test command also covers them.

Each check runs the real tool in a subprocess over the checkout and fails with
the tool's own output.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A cold mypy run over the package takes far longer than a protocol test.
pytestmark = [pytest.mark.lint, pytest.mark.slow, pytest.mark.timeout(600)]


def run_tool(module: str, *args: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (python3 -m pip install -e '.[test]')")
    command = [sys.executable, "-m", module, *args]
    proc = subprocess.run(
        command,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, (
        f"`{' '.join(command[1:])}` exited with {proc.returncode}:\n"
        f"{proc.stdout}\n{proc.stderr}"
    )


def test_mypy_strict() -> None:
    run_tool("mypy", "--strict", "aiosmtpd")


def test_ruff_check() -> None:
    run_tool("ruff", "check", "--output-format=concise", ".")


# Private attributes of asyncio's classes the engine once used; they may
# change in any Python release (docs/internals.rst).
ASYNCIO_PRIVATES = ("_paused", "_drain_helper", "_get_close_waiter", "_drain_waiters")


def test_no_private_asyncio_attributes() -> None:
    import re

    pattern = re.compile(r"\.(" + "|".join(ASYNCIO_PRIVATES) + r")\b")
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "aiosmtpd").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "\n".join(found)
