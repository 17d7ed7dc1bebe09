"""The source distribution is a complete source release; the wheel is only
the library.

The sdist is built from a copy of this tree (the checkout, or an unpacked
sdist: both must give the same contents), without network access
(``--no-isolation``: ``build`` and ``setuptools`` come with the ``test`` extra).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import aiosmtpd

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Tool state and build output that a checkout may hold and a release must not.
JUNK = (
    ".git", ".tox", ".nox", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__",
    "*.py[cod]", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", ".benchmarks",
    "_build",
)  # fmt: skip
# Everything under these directories goes into the sdist.
WHOLE_DIRS = ("tests", "docs", "benchmarks")
TOP_FILES = ("CHANGES.rst", "README.rst", "LICENSE", "NOTICE", "tox.ini", "pyproject.toml")


def source_files(src: Path, top: str) -> set[str]:
    return {
        path.relative_to(src).as_posix()
        for path in (src / top).rglob("*")
        if path.is_file()
    }


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(source copy, sdist, wheel built from that sdist)."""
    if importlib.util.find_spec("build") is None:
        pytest.skip("build is not installed (python3 -m pip install -e '.[test]')")
    # The build-system requirement of pyproject.toml, which --no-isolation
    # leaves to this environment.
    try:
        setuptools_major = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        setuptools_major = 0
    if setuptools_major < 77:
        pytest.skip("setuptools>=77 is not installed (python3 -m pip install -e '.[test]')")
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    # A copy: building writes aiosmtpd.egg-info next to the sources.
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*JUNK))
    out = tmp / "dist"
    # Without --sdist/--wheel, build makes the sdist, then the wheel from it.
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"python -m build failed:\n{proc.stdout}\n{proc.stderr}"
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return src, sdist, wheel


def sdist_names(sdist: Path) -> set[str]:
    prefix = f"aiosmtpd-{aiosmtpd.__version__}/"
    with tarfile.open(sdist) as tar:
        names = {member.name for member in tar.getmembers() if member.isfile()}
    assert all(name.startswith(prefix) for name in names), sorted(names)
    return {name[len(prefix):] for name in names}


def test_sdist_is_a_complete_source_release(dists: tuple[Path, Path, Path]) -> None:
    src, sdist, _ = dists
    assert sdist.name == f"aiosmtpd-{aiosmtpd.__version__}.tar.gz"
    names = sdist_names(sdist)
    for top in WHOLE_DIRS:
        wanted = source_files(src, top)
        assert wanted, top
        assert sorted(wanted - names) == [], f"missing from the sdist under {top}/"
    # The helpers the test modules import, named explicitly: a rule that
    # took only test_*.py files would still pass the loop above on its own.
    for helper in ("tests/_server.py", "tests/_hostile.py", "tests/_postfix.py",
                   "tests/conftest.py", "tests/README.md", "docs/conf.py"):
        assert helper in names
    assert sorted(set(TOP_FILES) - names) == []
    assert source_files(src, "aiosmtpd") <= names
    assert [name for name in names if "__pycache__" in name or name.endswith(".pyc")] == []


def test_wheel_holds_only_the_package(dists: tuple[Path, Path, Path]) -> None:
    _, _, wheel = dists
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    dist_info = f"aiosmtpd-{aiosmtpd.__version__}.dist-info/"
    assert [n for n in names if not n.startswith(("aiosmtpd/", dist_info))] == []
    assert "aiosmtpd/py.typed" in names
    assert "aiosmtpd/testing/plugin.py" in names
