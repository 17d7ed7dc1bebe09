"""docs/testing.rst keeps its promises.

The page's pytest examples (code blocks that start with a ``# <file>.py``
line) are run with pytest as the files they name, and every test the
feature table cites as proof exists in the plugin's test modules.
"""

from __future__ import annotations

import gc
import importlib.util
import re
import textwrap
from pathlib import Path

import pytest

import aiosmtpd.testing._server  # noqa: F401
from aiosmtpd.testing import MissingExtraError, certificates

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "testing.rst"

# See tests/test_plugin.py: cryptography must be imported outside pytester's
# in-process runs.
try:
    certificates()
except MissingExtraError:  # pragma: no cover
    pass


def examples() -> dict[str, str]:
    """``{relative path: source}`` of the page's runnable examples."""
    found: dict[str, str] = {}
    blocks = re.finditer(
        r"^\.\. code-block:: python\n\n((?:(?:    .*)?\n)+)", PAGE.read_text(), re.MULTILINE
    )
    for block in blocks:
        source = textwrap.dedent(block.group(1))
        first, _, rest = source.partition("\n")
        name = re.fullmatch(r"# ([\w/]+\.py)", first.strip())
        if name is not None:
            found[name.group(1)] = source
    return found


def test_the_page_has_the_examples_we_expect() -> None:
    assert set(examples()) == {
        "test_welcome.py",
        "test_tls.py",
        "test_configuration.py",
        "tests/mail/conftest.py",
        "tests/mail/test_defaults.py",
        "test_transcript.py",
        "test_retry.py",
        "test_async.py",
        "test_own_name.py",
    }


def test_pytest_examples_pass(pytester: pytest.Pytester) -> None:
    # -W error: the examples must not warn (pytest-asyncio's strict mode, its
    # default, warns about async fixtures not declared to it); pytest-benchmark,
    # where installed, warns in xdist workers.  smtpdfix's plugin, in the test
    # extra, would take the smtpd fixture: the page's examples are for a
    # project without it.
    args = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark",
            "-p", "no:smtpd", "-W", "error"]
    expected = 14
    for path, source in examples().items():
        target = pytester.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source)
    if importlib.util.find_spec("pytest_asyncio") and importlib.util.find_spec("aiosmtplib"):
        args += ["-o", "asyncio_mode=strict",
                 "-o", "asyncio_default_fixture_loop_scope=function"]
    else:  # pragma: no cover - the [test] extra has both
        args += ["--ignore", "test_async.py"]
        expected -= 1
    gc.collect()  # an earlier test's garbage must not warn in the -W error run
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=expected, warnings=0)


def test_every_feature_row_cites_an_existing_test() -> None:
    table = PAGE.read_text().split("Compared with other plugins", 1)[1].split("Reference\n", 1)[0]
    rows = re.findall(r"^   \* - (.+?)\n((?:     - .*\n|       .*\n)+)", table, re.MULTILINE)
    assert len(rows) > 20
    defined = set()
    for module in ROOT.glob("tests/test_plugin*.py"):
        defined |= set(re.findall(r"^def (test_\w+)\(", module.read_text(), re.MULTILINE))
    header, *features = rows
    assert header[0] == "Feature"
    for feature, cells in features:
        ours = re.findall(r"^     - (.*)$", cells, re.MULTILINE)[0]
        assert ours not in ("—", "no"), f"{feature}: not offered by us?"
        cited = re.findall(r"``(test_\w+)``", cells)
        assert cited, f"{feature}: no test cited"
        missing = set(cited) - defined
        assert not missing, f"{feature}: cites missing tests {missing}"
