"""Find Postfix's ``smtp-source`` / ``smtp-sink`` test programs, or fetch them.

Both are small standalone C programs shipped in Debian's ``postfix`` package.
We never install that package (it would start a mail daemon); instead
``fetch()`` downloads the .deb with ``apt-get download`` and unpacks it with
``dpkg -x`` into a cache folder outside the repo.  Postfix's private shared
libraries live in ``usr/lib/postfix`` inside the package, so the tools run
with ``LD_LIBRARY_PATH`` pointing there (plus any Debian library the machine
lacks, fetched the same way).

API (keep it small, other tests use it)::

    from tests._postfix import postfix_tool

    tool = postfix_tool("smtp-sink")      # None when unavailable
    if tool is None:
        pytest.skip("Postfix smtp-sink not available (python3 tests/_postfix.py --fetch)")
    argv = [*tool.argv, *tool.root_args, "127.0.0.1:PORT", "100"]
    subprocess.Popen(argv, env=tool.env)

``tool.root_args`` is ``["-u", "nobody"]`` when running as root, because
``smtp-sink`` refuses to start as root without ``-u``; it is empty otherwise
(and for ``smtp-source``, which has no ``-u``).

Command line (CI calls the first form once before the tests)::

    python3 tests/_postfix.py --fetch   # fetch if missing; exit 0 when usable
    python3 tests/_postfix.py           # report what is found; never fetches

The cache folder is ``$AIOSMTPD_POSTFIX_CACHE`` or ``~/.cache/aiosmtpd-postfix``.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

__all__ = ["PostfixTool", "cache_dir", "fetch", "postfix_tool"]

TOOLS = ("smtp-source", "smtp-sink")


class PostfixTool(NamedTuple):
    argv: list[str]
    """The program path, as an argv prefix."""
    env: dict[str, str]
    """A full environment for ``subprocess`` (os.environ plus LD_LIBRARY_PATH)."""
    root_args: list[str]
    """Extra arguments needed when running as root (``-u nobody`` for smtp-sink)."""


def cache_dir() -> Path:
    env = os.environ.get("AIOSMTPD_POSTFIX_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "aiosmtpd-postfix"


def _library_dirs(root: Path) -> list[str]:
    patterns = ("usr/lib/postfix", "usr/lib/*-linux-gnu*", "lib/*-linux-gnu*")
    found: list[str] = []
    for pattern in patterns:
        found.extend(sorted(glob.glob(str(root / pattern))))
    return [d for d in found if os.path.isdir(d)]


def _env_with_libs(lib_dirs: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    if lib_dirs:
        old = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs + ([old] if old else []))
    return env


def _runs(argv: list[str], env: dict[str, str]) -> bool:
    """True when the dynamic loader finds every library the program needs.

    Run without arguments, both tools print a usage line and exit non-zero;
    a missing library makes the loader exit 127 before ``main``.
    """
    try:
        proc = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode != 127 and b"error while loading shared" not in proc.stderr


def _root_args(name: str) -> list[str]:
    if name == "smtp-sink" and hasattr(os, "geteuid") and os.geteuid() == 0:
        return ["-u", "nobody"]
    return []


@functools.cache
def postfix_tool(name: str) -> PostfixTool | None:
    """Return how to run *name* (``smtp-source`` or ``smtp-sink``), or None.

    Looks at an installed Postfix first (PATH, /usr/sbin), then at the cache
    folder filled by ``fetch()``.  Never downloads anything.
    """
    if name not in TOOLS:
        raise ValueError(f"unknown Postfix tool {name!r}; expected one of {TOOLS}")
    candidates: list[tuple[str, list[str]]] = []
    installed = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if installed:
        candidates.append((installed, []))
    root = cache_dir() / "root"
    cached = root / "usr" / "sbin" / name
    if cached.is_file():
        candidates.append((str(cached), _library_dirs(root)))
    for path, lib_dirs in candidates:
        env = _env_with_libs(lib_dirs)
        if _runs([path], env):
            return PostfixTool([path], env, _root_args(name))
    return None


def _apt_download(package: str, dest: Path) -> Path:
    """Download *package*'s .deb into *dest*; run ``apt-get update`` once if needed."""

    def attempt() -> subprocess.CompletedProcess[bytes]:
        # apt drops privileges to _apt for downloads; a world-writable
        # directory avoids its "unsandboxed" warning and permission errors.
        dest.chmod(0o777)
        return subprocess.run(
            ["apt-get", "download", "-q", package],
            cwd=dest,
            capture_output=True,
            timeout=300,
        )

    proc = attempt()
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600)
        proc = attempt()
    if proc.returncode != 0:
        raise RuntimeError(
            f"apt-get download {package} failed: {proc.stderr.decode(errors='replace')}"
        )
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {package} produced no .deb")
    return debs[-1]


def _missing_libraries(programs: list[Path], env: dict[str, str]) -> list[str]:
    missing: set[str] = set()
    for program in programs:
        proc = subprocess.run(
            ["ldd", str(program)], env=env, capture_output=True, text=True, timeout=30
        )
        for line in proc.stdout.splitlines():
            if "not found" in line:
                missing.add(line.split()[0])
    return sorted(missing)


def _uninstalled_library_depends(package: str) -> list[str]:
    proc = subprocess.run(
        ["apt-cache", "depends", "--important", package],
        capture_output=True,
        text=True,
        timeout=60,
    )
    wanted: list[str] = []
    for line in proc.stdout.splitlines():
        parts = line.strip().lstrip("|").split()
        if len(parts) == 2 and parts[0] == "Depends:" and parts[1].startswith("lib"):
            status = subprocess.run(
                ["dpkg-query", "-W", "-f=${Status}", parts[1]],
                capture_output=True,
                text=True,
            )
            if "install ok installed" not in status.stdout:
                wanted.append(parts[1])
    return wanted


def fetch(verbose: bool = False) -> bool:
    """Make both tools available in the cache folder; return True on success."""
    if all(postfix_tool(name) for name in TOOLS):
        return True
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        if verbose:
            print("apt-get/dpkg not found: cannot fetch Postfix", file=sys.stderr)
        return False
    root = cache_dir() / "root"
    root.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="aiosmtpd-postfix-") as tmp:
            deb = _apt_download("postfix", Path(tmp))
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True, timeout=300)
            # Benchmarks quote the version; the .deb name is the cheapest source.
            (cache_dir() / "VERSION").write_text(deb.name.split("_")[1] + "\n")
            programs = [root / "usr" / "sbin" / name for name in TOOLS]
            env = _env_with_libs(_library_dirs(root))
            if _missing_libraries(programs, env):
                for lib_package in _uninstalled_library_depends("postfix"):
                    lib_deb = _apt_download(lib_package, Path(tmp))
                    subprocess.run(["dpkg", "-x", str(lib_deb), str(root)], check=True, timeout=300)
            still_missing = _missing_libraries(programs, _env_with_libs(_library_dirs(root)))
            if still_missing and verbose:
                print(f"still missing libraries: {still_missing}", file=sys.stderr)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        if verbose:
            print(f"fetching Postfix failed: {exc}", file=sys.stderr)
        return False
    postfix_tool.cache_clear()
    return all(postfix_tool(name) for name in TOOLS)


def _main(args: list[str]) -> int:
    if args and args[0] not in ("--fetch",):
        print(__doc__)
        return 2
    ok = fetch(verbose=True) if args else all(postfix_tool(n) for n in TOOLS)
    for name in TOOLS:
        tool = postfix_tool(name)
        print(f"{name}: {' '.join(tool.argv) if tool else 'not available'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
