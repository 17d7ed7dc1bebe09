"""Build the documentation as part of the test suite.

The doctest builder runs every example in docs/ against this checkout; the
HTML build catches broken markup, toctree entries and cross-references.
Warnings are errors in both.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.lint, pytest.mark.slow, pytest.mark.timeout(300)]


def sphinx_build(builder: str, out: Path) -> None:
    if importlib.util.find_spec("sphinx") is None:
        pytest.skip("sphinx is not installed (python3 -m pip install -e '.[test]')")
    command = [
        sys.executable, "-m", "sphinx",
        "-b", builder,
        "-q", "-W", "--keep-going", "-E",
        "-d", str(out / "doctrees"),
        "docs", str(out / builder),
    ]  # fmt: skip
    # The examples import aiosmtpd; make sure they get this checkout.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, (
        f"`sphinx-build -b {builder}` exited with {proc.returncode}:\n"
        f"{proc.stdout}\n{proc.stderr}"
    )


def test_doctests(tmp_path: Path) -> None:
    sphinx_build("doctest", tmp_path)


def test_html_build(tmp_path: Path) -> None:
    sphinx_build("html", tmp_path)
