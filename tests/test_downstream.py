"""Downstream projects' own test suites pass against this checkout.

aiosmtplib (its suite drives an aiosmtpd server: subclasses ``SMTP``,
overrides and patches ``smtp_*`` methods and ``_handle_client``, reads
``_tls_protocol``, ``_reader``, ``_writer``) and smtpdfix (a pytest plugin
built on ``Controller`` with its own ``smtp_STARTTLS``) are installed from
their sdists into throwaway venvs by ``tests/downstream.py``, with this
checkout's aiosmtpd, and their suites run there.  Every test must pass, as
with upstream 1.4.6.

The venvs live outside the repository and are reused while their inputs are
unchanged, so only the first run needs the package registry; without it (or
without the project's Python) the test skips and says why.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.downstream import EXIT_OK, EXIT_SKIPPED, PROJECTS, SUITE_TIMEOUT

SCRIPT = Path(__file__).resolve().with_name("downstream.py")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.external,
    # The first run makes the venvs (pip downloads); later ones take seconds.
    pytest.mark.timeout(2 * SUITE_TIMEOUT),
]


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """The selected suites start at once: smtpdfix's mostly waits, so they overlap."""
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(SCRIPT), name],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )
        for name in sorted(selected)
    }
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize("name", sorted(PROJECTS))
def test_downstream_suite_passes(name: str, runs: dict[str, subprocess.Popen[str]]) -> None:
    output, _ = runs[name].communicate(timeout=2 * SUITE_TIMEOUT)
    rc = runs[name].returncode
    if rc == EXIT_SKIPPED:
        reasons = [line for line in output.splitlines() if line.startswith("SKIPPED:")]
        pytest.skip(reasons[-1] if reasons else output.strip()[-500:])
    assert rc == EXIT_OK, f"tests/downstream.py {name} exited {rc}:\n{output}"
