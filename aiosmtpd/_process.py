"""What the command-line program does to its own process: logging, and giving
up root (``aiosmtpd.main`` and the supervisor of ``aiosmtpd.workers``)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any, NoReturn, Optional

try:
    import pwd
except ImportError:  # pragma: no cover - non-POSIX platforms
    pwd = None  # type: ignore[assignment]

log = logging.getLogger("mail.log")


def _setuid_failed() -> NoReturn:
    print('Cannot setuid "nobody"; try running with -n option.', file=sys.stderr)
    sys.exit(1)


def _lookup_nobody() -> Any:
    if pwd is None:  # pragma: no cover - non-POSIX platforms
        print('Cannot import module "pwd"; try running with -n option.', file=sys.stderr)
        sys.exit(1)
    return pwd.getpwnam("nobody")


def _preload() -> None:
    """Import now what serving would import lazily.

    After the drop, the Python installation may be unreadable (e.g. one
    installed under /root), and a lazy import would then fail on the first
    connection instead of at startup.
    """
    import email.feedparser  # noqa: F401 - message parsing in handlers
    import email.parser  # noqa: F401
    import encodings.idna  # noqa: F401 - socket.getfqdn()
    import mailbox  # noqa: F401 - handlers.Mailbox
    import smtplib  # noqa: F401 - handlers.Proxy


def _drop_privileges(nobody: Any) -> None:
    # Supplementary groups and the primary group first: once the uid is
    # gone we could no longer shed root's groups.
    try:
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    except PermissionError:
        _setuid_failed()


def _configure_logging(debug: int, loop: Optional[asyncio.AbstractEventLoop]) -> None:
    logging.basicConfig(level=logging.ERROR)
    if debug >= 1:
        log.setLevel(logging.INFO)
    if debug >= 2:
        log.setLevel(logging.DEBUG)
    if debug >= 3 and loop is not None:
        loop.set_debug(True)
