#!/usr/bin/env python3
"""Run downstream projects' own test suites against this checkout.

    python3 tests/downstream.py [aiosmtplib|smtpdfix ...] [--against upstream]

For each project: fetch its sdist with pip (``--no-binary :all: --no-deps``),
make a throwaway venv for it under a cache directory outside the repository
(``$AIOSMTPD_DOWNSTREAM_CACHE``, else ``$XDG_CACHE_HOME/aiosmtpd-downstream``,
else ``~/.cache/aiosmtpd-downstream``), install the test requirements that the
sdist itself declares, install this checkout's ``aiosmtpd`` into it (a real,
non-editable wheel build), unpack the sdist afresh and run its pytest suite
there.  ``--against upstream`` installs ``aiosmtpd==1.4.6`` from PyPI instead,
for comparison.

A venv is reused while its inputs are the same (Python, requirements, this
script's ``HARNESS_REV``); this checkout is rebuilt into it only when
``aiosmtpd/`` or a top-level file changed, so a repeated run needs no network.

Exit status: 0 every test passed; 1 a test failed or errored, or the suite did
not run; 2 the harness itself failed (pip, venv); 77 skipped: the package
registry cannot be reached or the project's Python is not installed (the reason
is printed on a line starting with ``SKIPPED:``).  With several projects the
worst status wins (1 > 2 > 77 > 0).
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
# Bump to rebuild every cached venv (e.g. after changing how they are made).
HARNESS_REV = "2"
UPSTREAM = "aiosmtpd==1.4.6"
# Builds this checkout inside the venv without build isolation, so that a
# rebuild needs no network.
BUILD_REQUIREMENT = "setuptools>=77"

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_SKIPPED = 0, 1, 2, 77
SEVERITY = {EXIT_OK: 0, EXIT_SKIPPED: 1, EXIT_ERROR: 2, EXIT_FAILED: 3}
# A whole suite taking longer than this has hung.
SUITE_TIMEOUT = 900
PIP_TIMEOUT = 900
# Environment variables of an outer pytest run that must not leak into the
# downstream suite or its pip.
SCRUB_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTEST_ADDOPTS",
             "PYTEST_PLUGINS", "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER",
             "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "COV_CORE_SOURCE",
             "COV_CORE_CONFIG", "COV_CORE_DATAFILE")


class Skip(Exception):
    """The run cannot happen here (no registry, no such Python)."""


class HarnessError(Exception):
    """The harness failed before the suite could run."""


def _requirement_name(line: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else ""


def _keep(lines: list[str], drop: set[str]) -> list[str]:
    """Requirement lines, less comments, options and the names in ``drop``."""
    kept = []
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-") and _requirement_name(line) not in drop:
            kept.append(line)
    return kept


def _aiosmtplib_requirements(src: Path) -> list[str]:
    # requirements-dev.txt is what its CI installs to run the tests.
    lines = (src / "requirements-dev.txt").read_text().splitlines()
    return _keep(lines, {"aiosmtpd", "coverage", "pytest-cov"})


def _smtpdfix_requirements(src: Path) -> list[str]:
    # Its runtime requirements (it is a pytest plugin) plus the "testing"
    # extra, less the linters and coverage; aiosmtpd is the one under test.
    cfg = configparser.ConfigParser()
    cfg.read(src / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    lines += cfg["options.extras_require"]["testing"].splitlines()
    return _keep(lines, {"aiosmtpd", "flake8", "isort", "mypy", "pytest-cov"})


@dataclass(frozen=True)
class Project:
    name: str
    version: str
    python: str  # the X.Y this project is checked on
    expected: int  # tests that pass with upstream 1.4.6 on that Python
    requirements: Callable[[Path], list[str]]
    pytest_args: tuple[str, ...] = ()


PROJECTS = {
    p.name: p
    for p in (
        Project("aiosmtplib", "5.1.3", "3.13", 414, _aiosmtplib_requirements),
        Project("smtpdfix", "0.5.3", "3.11", 88, _smtpdfix_requirements),
    )
}


def cache_root() -> Path:
    explicit = os.environ.get("AIOSMTPD_DOWNSTREAM_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aiosmtpd-downstream"


def clean_env(venv: Optional[Path] = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env.setdefault("PIP_ROOT_USER_ACTION", "ignore")
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = str(venv / "bin") + os.pathsep + env.get("PATH", "")
    return env


def python_version(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return out.stdout.strip()


def find_python(wanted: str) -> str:
    """An interpreter for Python ``wanted`` (X.Y): on PATH, pyenv, or this one."""
    candidates = [shutil.which(f"python{wanted}")]
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    found = sorted(
        pyenv.glob(f"{wanted}.*/bin/python{wanted}"),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.parent.name)],
        reverse=True,
    )
    candidates += [str(p) for p in found]
    if "{}.{}".format(*sys.version_info[:2]) == wanted:
        candidates.append(sys.executable)
    for candidate in candidates:
        if not candidate:
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if python_version(candidate).rsplit(".", 1)[0] == wanted:
                return candidate
    raise Skip(f"Python {wanted} is not installed (looked on PATH and in {pyenv})")


def index_url() -> str:
    return os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"


def registry_reachable(project: str) -> bool:
    url = index_url().rstrip("/") + f"/{project}/"
    try:
        with urllib.request.urlopen(url, timeout=15) as reply:  # noqa: S310
            return 200 <= reply.status < 400
    except Exception:
        return False


def run_pip(python: str, args: list[str], project: str, env: dict[str, str]) -> None:
    """``python -m pip ARGS``; a failure is a Skip when the registry is unreachable."""
    cmd = [python, "-m", "pip", *args]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired:
        result = None
    if result is not None and result.returncode == 0:
        return
    if not registry_reachable(project):
        raise Skip(f"the package registry ({index_url()}) cannot be reached")
    output = "(timed out)" if result is None else (result.stdout + result.stderr)[-4000:]
    raise HarnessError(f"{' '.join(cmd)} failed:\n{output}")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise runs that share one venv (two pytest sessions, say)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_sdist(project: Project, python: str, cache: Path) -> Path:
    sdists = cache / "sdists"
    name = f"{project.name}-{project.version}.tar.gz"
    target = sdists / name
    if target.is_file():
        return target
    sdists.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=sdists) as tmp:
        run_pip(python, ["download", "--no-deps", "--no-binary", ":all:", "-d", tmp,
                         f"{project.name}=={project.version}"], project.name, clean_env())
        got = list(Path(tmp).glob("*.tar.gz"))
        if len(got) != 1:
            raise HarnessError(f"pip download left {[p.name for p in Path(tmp).iterdir()]}")
        got[0].replace(target)
    return target


def unpack(sdist: Path, into: Path) -> Path:
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # pragma: no cover - Pythons without extraction filters
            tar.extractall(into)  # noqa: S202
    (top,) = into.iterdir()
    return top


def checkout_inputs() -> list[Path]:
    """What a wheel of this checkout is built from: top-level files and aiosmtpd/."""
    files = [p for p in ROOT.iterdir() if p.is_file()]
    files += [p for p in (ROOT / "aiosmtpd").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return sorted(files)


def checkout_hash(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def install_checkout(python: str, env: dict[str, str], project: str) -> None:
    files = checkout_inputs()
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            dest = Path(tmp) / path.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        # Uninstall first rather than --force-reinstall, which would reinstall
        # (and so download) the dependencies too.
        subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "aiosmtpd"],
                       capture_output=True, env=env, timeout=PIP_TIMEOUT, check=False)
        run_pip(python, ["install", "-q", "--no-build-isolation", tmp], project, env)


def prepare_venv(project: Project, python: str, version: str, against: str,
                 requirements: list[str], sdist: Path, cache: Path) -> Path:
    """The project's venv, made or reused; this checkout installed and current."""
    key = {
        "harness": HARNESS_REV, "project": f"{project.name}=={project.version}",
        "python": [os.path.realpath(python), version], "against": against,
        "requirements": requirements,
    }
    venv = cache / f"{project.name}-{project.version}-py{version}-{against}"
    marker = venv / "downstream.json"
    state: dict[str, object] = {}
    if marker.is_file():
        with contextlib.suppress(ValueError):
            state = json.loads(marker.read_text())
    vpython = str(venv / "bin" / "python")
    env = clean_env(venv)
    if state.get("key") != key:
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True, capture_output=True,
                       timeout=PIP_TIMEOUT)
        extra = [UPSTREAM] if against == "upstream" else []
        run_pip(vpython, ["install", "-q", BUILD_REQUIREMENT, *requirements, *extra],
                project.name, env)
        # The project itself too (aiosmtplib's tests run `python -m aiosmtplib`);
        # --no-deps: the aiosmtpd it asks for is the one under test.
        run_pip(vpython, ["install", "-q", "--no-deps", str(sdist)], project.name, env)
        state = {"key": key}
        marker.write_text(json.dumps(state, indent=1))
    if against == "ours":
        digest = checkout_hash(checkout_inputs())
        if state.get("checkout") != digest:
            install_checkout(vpython, env, project.name)
            state["checkout"] = digest
            marker.write_text(json.dumps(state, indent=1))
    return venv


@dataclass
class Result:
    rc: int
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    bad: tuple[str, ...] = ()  # "FAILED test-id: message", one per bad test


def pytest_id(src: Path, classname: str, name: str) -> str:
    """pytest's id for a JUnit test case (whose classname is dotted)."""
    parts = classname.split(".")
    for i in range(len(parts), 0, -1):
        module = "/".join(parts[:i]) + ".py"
        if (src / module).is_file():
            return "::".join([module, *parts[i:], name])
    return f"{classname}::{name}"


def read_junit(path: Path, src: Path) -> Result:
    result = Result(0)
    bad = []
    for case in ET.parse(path).iter("testcase"):
        outcome = {child.tag: child for child in case}
        cid = pytest_id(src, case.get("classname") or "", case.get("name") or "")
        for tag, label in (("error", "ERROR"), ("failure", "FAILED")):
            if tag in outcome:
                message = (outcome[tag].get("message") or "").splitlines()
                bad.append(f"{label} {cid}: {message[0][:300] if message else ''}")
                if tag == "error":
                    result.errors += 1
                else:
                    result.failed += 1
                break
        else:
            if "skipped" in outcome:
                result.skipped += 1
            else:
                result.passed += 1
    result.bad = tuple(bad)
    return result


def run_suite(project: Project, venv: Path, src: Path, workers: int, log: Path,
              verbose: bool) -> Result:
    junit = src.parent / "junit.xml"
    cmd = [str(venv / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider", "-q",
           "-rfE", f"--junitxml={junit}", *project.pytest_args]
    if workers > 1:
        cmd += ["-n", str(workers)]
    with open(log, "w") as out:
        try:
            proc = subprocess.run(cmd, cwd=src, env=clean_env(venv), stdin=subprocess.DEVNULL,
                                  stdout=None if verbose else out,
                                  stderr=subprocess.STDOUT if not verbose else None,
                                  timeout=SUITE_TIMEOUT)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            out.write(f"\n(timed out after {SUITE_TIMEOUT} s)\n")
            rc = -1
    result = read_junit(junit, src) if junit.is_file() else Result(rc)
    result.rc = rc
    return result


def check(name: str, against: str, python_override: Optional[str], workers: int,
          verbose: bool) -> int:
    project = PROJECTS[name]
    cache = cache_root()
    started = time.monotonic()
    try:
        python = python_override or find_python(project.python)
        version = python_version(python)
        with locked(cache / f"{name}.lock"):
            sdist = fetch_sdist(project, python, cache)
            with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
                src = unpack(sdist, Path(tmp))
                requirements = project.requirements(src)
                venv = prepare_venv(project, python, version, against, requirements, sdist,
                                    cache)
                log = cache / f"{name}-{against}.log"
                result = run_suite(project, venv, src, workers, log, verbose)
    except Skip as why:
        print(f"SKIPPED: {name}: {why}", flush=True)
        return EXIT_SKIPPED
    except (HarnessError, OSError, subprocess.SubprocessError) as error:
        print(f"ERROR: {name}: {error}", flush=True)
        return EXIT_ERROR

    target = "aiosmtpd 1.4.6 (upstream)" if against == "upstream" else f"aiosmtpd from {ROOT}"
    on_target = version.rsplit(".", 1)[0] == project.python
    expected = f" (expected {project.expected})" if on_target else ""
    if not verbose:
        shown = list(result.bad)
        if result.rc and not shown:
            # The suite did not run (a conftest that fails to import): say why.
            shown = log.read_text(errors="replace").splitlines()[-15:]
        for line in shown[:200]:
            print("  " + line)
        print(f"  (full output: {log})")
    ok = (result.rc == 0 and result.failed == result.errors == 0 and result.passed > 0
          and (not on_target or result.passed == project.expected))
    if result.rc != 0 and not (result.failed or result.errors):
        print(f"  pytest exited with status {result.rc}")
    print(f"{name} {project.version} on Python {version} against {target}: "
          f"{result.passed} passed, {result.failed} failed, {result.errors} errors, "
          f"{result.skipped} skipped{expected} in {time.monotonic() - started:.1f} s",
          flush=True)
    return EXIT_OK if ok else EXIT_FAILED


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("projects", nargs="*", metavar="PROJECT",
                        help=f"{' or '.join(PROJECTS)} (default: all)")
    parser.add_argument("--against", choices=["ours", "upstream"], default="ours",
                        help="the aiosmtpd to test with: this checkout (default) or "
                             f"{UPSTREAM} from PyPI")
    parser.add_argument("--python", help="interpreter to build the venvs with "
                                          "(default: each project's own X.Y)")
    parser.add_argument("-n", "--workers", type=int, default=1,
                        help="pytest-xdist workers, for suites that use it (aiosmtplib)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the suites' whole output")
    args = parser.parse_args(argv)
    unknown = set(args.projects) - set(PROJECTS)
    if unknown:
        parser.error(f"unknown project(s): {', '.join(sorted(unknown))}")
    codes = [
        check(name, args.against, args.python,
              args.workers if name == "aiosmtplib" else 1, args.verbose)
        for name in args.projects or PROJECTS
    ]
    return max(codes, key=SEVERITY.__getitem__)


if __name__ == "__main__":
    sys.exit(main())
