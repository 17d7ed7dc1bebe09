"""Several worker processes serving one address: ``aiosmtpd --workers N``.

An asyncio server uses one CPU. To use more, a *supervisor* process binds the
listening sockets, then forks N *workers* that each run their own event loop
on them; the kernel spreads the incoming connections over the workers.

From Python: :func:`bind_sockets`, then :func:`run_workers` with a function
that serves one worker's sockets (:func:`create_server` helps); see
``docs/workers.rst`` for an example.

How it works:

* :func:`bind_sockets` binds before anything else, so that a privileged port
  works and privileges can be dropped before the first worker exists. Where
  the kernel balances connections between sockets bound with
  ``SO_REUSEPORT`` (Linux), each worker gets its own sockets; elsewhere all
  workers share one listening socket and take turns accepting.
* :func:`run_workers` forks the workers and supervises them. A worker that
  dies is logged (WARNING, logger ``mail.log.workers``) and restarted on the
  same sockets, which the supervisor keeps open meanwhile so that no
  connection is refused; one that keeps dying early is restarted after a
  growing delay (0.1 s doubling up to 10 s). Each SIGTERM or SIGINT the
  supervisor receives is passed on to every worker; it then closes its copies
  of the sockets, waits for every worker to exit and returns. Each worker
  runs in a process group of its own, so that Ctrl-C in a terminal (or a
  signal to the supervisor's process group) reaches the workers once, through
  the supervisor, not twice. A worker whose supervisor disappears (even by
  SIGKILL) sends itself SIGTERM.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mmap
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from argparse import ArgumentTypeError
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional

from aiosmtpd.metrics import STORAGE_BYTES

if TYPE_CHECKING:  # pragma: no cover
    from argparse import Namespace

__all__ = ["REUSE_PORT", "bind_sockets", "create_server", "run_workers"]

log = logging.getLogger("mail.log.workers")

REUSE_PORT: bool = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
"""Whether :func:`bind_sockets` gives each worker sockets of its own by
default: only where the kernel balances connections between ``SO_REUSEPORT``
sockets (Linux; macOS and most BSDs hand them all to one socket)."""

STABLE_AFTER = 1.0
"""A worker that lived this long (seconds) before dying is restarted at once."""
FIRST_DELAY = 0.1
MAX_DELAY = 10.0

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_BIND_ATTEMPTS = 5  # port 0 on several addresses: the port may be taken on one


def _worker_count(text: str) -> int:
    """argparse type of ``--workers``: a whole number of 1 or more."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ArgumentTypeError(f"must be a whole number, 1 or more, not {text!r}")
    if count > 1 and not hasattr(os, "fork"):
        raise ArgumentTypeError("more than 1 needs os.fork(), which this platform lacks")
    return count


def _addresses(host: Optional[str], port: int) -> list[tuple[Any, ...]]:
    # As loop.create_server() resolves: "" or None is every interface.
    infos = socket.getaddrinfo(
        host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    unique: list[tuple[Any, ...]] = []
    for family, kind, proto, _, address in infos:
        if (family, kind, proto, address) not in unique:
            unique.append((family, kind, proto, address))
    return unique


def _bind_all(
    infos: list[tuple[Any, ...]], port: int, copies: int, reuse_port: bool, backlog: int
) -> list[list[socket.socket]]:
    groups: list[list[socket.socket]] = []
    made: list[socket.socket] = []
    try:
        for _ in range(copies):
            group: list[socket.socket] = []
            for family, kind, proto, address in infos:
                sock = socket.socket(family, kind, proto)
                made.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                # Port 0: the first socket gets an ephemeral port, every
                # other socket binds that same port.
                address = (address[0], port, *address[2:])
                try:
                    sock.bind(address)
                except OSError as exc:
                    # The wording of loop.create_server()'s bind errors.
                    raise OSError(
                        exc.errno,
                        f"error while attempting to bind on address {address!r}: "
                        f"{(exc.strerror or str(exc)).lower()}",
                    ) from None
                if port == 0:
                    port = sock.getsockname()[1]
                sock.listen(backlog)
                sock.setblocking(False)
                group.append(sock)
            groups.append(group)
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return groups


def bind_sockets(
    host: Optional[str],
    port: int,
    workers: int,
    *,
    reuse_port: Optional[bool] = None,
    backlog: int = 100,
) -> list[list[socket.socket]]:
    """Bind and listen on ``host:port`` for ``workers`` worker processes.

    ``host`` is resolved as :meth:`asyncio.loop.create_server` does: every
    address it stands for is bound (``""`` or ``None``: every interface),
    with ``SO_REUSEADDR``, and IPv6 sockets are IPv6-only. With ``port`` 0
    the first socket gets an ephemeral port and every other one binds that
    port (``result[0][0].getsockname()[1]`` tells it).

    Returns one list of listening, non-blocking sockets per worker, one
    socket per address, for :func:`run_workers`. With ``reuse_port``
    (default: :data:`REUSE_PORT`) every worker's sockets are its own, bound
    with ``SO_REUSEPORT``; otherwise every entry is the same list.

    Raises :exc:`OSError` if an address cannot be bound, :exc:`ValueError`
    for ``workers`` below 1 or ``reuse_port=True`` without ``SO_REUSEPORT``.
    """
    if workers < 1:
        raise ValueError(f"workers must be 1 or more, not {workers!r}")
    if reuse_port is None:
        reuse_port = REUSE_PORT
    elif reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("SO_REUSEPORT is not available on this platform")
    infos = _addresses(host, port)
    attempts = _BIND_ATTEMPTS if port == 0 and (len(infos) > 1 or reuse_port) else 1
    for attempt in range(1, attempts + 1):
        try:
            groups = _bind_all(infos, port, workers if reuse_port else 1, reuse_port, backlog)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or attempt == attempts:
                raise
            continue
        return groups if reuse_port else groups * workers
    raise AssertionError("unreachable")  # pragma: no cover


class _ServerGroup(asyncio.AbstractServer):
    """Several servers (one per listening socket) closed and awaited as one."""

    def __init__(self, servers: list[asyncio.Server]) -> None:
        self._servers = servers

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(sock for server in self._servers for sock in server.sockets)

    def __repr__(self) -> str:
        return f"<_ServerGroup {self._servers!r}>"

    def close(self) -> None:
        for server in self._servers:
            server.close()

    def close_clients(self) -> None:  # Python 3.13+
        for server in self._servers:
            server.close_clients()  # type: ignore[attr-defined,unused-ignore]

    def abort_clients(self) -> None:  # Python 3.13+
        for server in self._servers:
            server.abort_clients()  # type: ignore[attr-defined,unused-ignore]

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._servers[0].get_loop()

    def is_serving(self) -> bool:
        return any(server.is_serving() for server in self._servers)

    async def start_serving(self) -> None:
        for server in self._servers:
            await server.start_serving()

    async def serve_forever(self) -> None:
        await asyncio.gather(*(server.serve_forever() for server in self._servers))

    async def wait_closed(self) -> None:
        for server in self._servers:
            await server.wait_closed()


async def create_server(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    sockets: Sequence[socket.socket],
    **kwargs: Any,
) -> asyncio.AbstractServer:
    """``loop.create_server(protocol_factory, sock=...)`` for several sockets.

    Serves every socket of ``sockets`` (what :func:`run_workers` passes to a
    worker) on the running loop and returns them as one server: its
    ``close()`` and ``wait_closed()`` cover them all. ``kwargs`` go to each
    :meth:`~asyncio.loop.create_server` call (``ssl=``, ``backlog=``...).
    With one socket the :class:`asyncio.Server` itself is returned.
    """
    if not sockets:
        raise ValueError("no socket to serve")
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    try:
        for sock in sockets:
            servers.append(await loop.create_server(protocol_factory, sock=sock, **kwargs))
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers[0] if len(servers) == 1 else _ServerGroup(servers)


def _restart_delay(failures: int) -> float:
    """Seconds to wait before restarting a worker that died early
    ``failures`` times in a row: none the first time, then from
    :data:`FIRST_DELAY` doubling up to :data:`MAX_DELAY`."""
    if failures <= 1:
        return 0.0
    return float(min(MAX_DELAY, FIRST_DELAY * 2 ** (failures - 2)))


def _describe(status: Optional[int]) -> str:
    if status is None:
        return "exited (status unknown)"
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "?"
        return f"was killed by signal {-code} ({name})"
    return f"exited with status {code}"


def _readable(fd: int, timeout: Optional[float]) -> bool:
    """Wait until ``fd`` is readable or ``timeout`` seconds have passed."""
    if hasattr(select, "poll"):  # no FD_SETSIZE limit on the fd number
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else timeout * 1000))
    ready, _, _ = select.select([fd], [], [], timeout)  # pragma: no cover
    return bool(ready)


def _ignore(signum: int, frame: object) -> None:
    """The supervisor's Python-level handler: the wake-up fd does the work."""


@dataclass
class _Slot:
    sockets: list[socket.socket]
    pid: int = 0
    """0: not running."""
    started: float = 0.0
    failures: int = 0
    """Consecutive deaths within STABLE_AFTER of starting."""
    restart_at: float = 0.0


# This process's index in run_workers() (see worker_index()).
_worker_index: Optional[int] = None

class _Supervisor:
    def __init__(
        self, serve: Callable[[list[socket.socket]], object], sockets: Sequence[list[socket.socket]]
    ) -> None:
        self.serve = serve
        self.slots = [_Slot(list(group)) for group in sockets]
        self.sockets: list[socket.socket] = []
        for group in sockets:
            for sock in group:
                if not any(sock is known for known in self.sockets):
                    self.sockets.append(sock)
        self.stopping: Optional[int] = None
        """The first stop signal received."""
        self.wake_r = self.wake_w = self.life_r = self.life_w = -1

    def run(self) -> int:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        # Never written: the workers see its end (EOF) when we are gone.
        self.life_r, self.life_w = os.pipe()
        previous: dict[int, Any] = {}
        old_wakeup = -1
        try:
            for signum in (*_STOP_SIGNALS, signal.SIGCHLD):
                previous[signum] = signal.signal(signum, _ignore)
            # The signal numbers arrive as bytes on wake_r, which select()
            # watches: no signal is lost between a check and the wait.
            old_wakeup = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
            now = time.monotonic()
            for slot in self.slots:
                slot.restart_at = now
            return self._supervise()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for number, handler in previous.items():
                signal.signal(number, handler)
            # On an error: the workers see the pipe's end and stop; wait for them.
            os.close(self.life_w)
            for slot in self.slots:
                if slot.pid:
                    with suppress(ChildProcessError, ProcessLookupError):
                        os.waitpid(slot.pid, 0)
                    slot.pid = 0
            for fd in (self.life_r, self.wake_r, self.wake_w):
                os.close(fd)
            self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()

    def _supervise(self) -> int:
        while True:
            self._reap()
            if self.stopping is not None:
                if not any(slot.pid for slot in self.slots):
                    return self.stopping
                timeout: Optional[float] = None
            else:
                now = time.monotonic()
                for slot in self.slots:
                    if not slot.pid and slot.restart_at <= now:
                        self._spawn(slot)
                waits = [slot.restart_at - now for slot in self.slots if not slot.pid]
                timeout = max(0.0, min(waits)) if waits else None
            if _readable(self.wake_r, timeout):
                self._signals(os.read(self.wake_r, 4096))

    def _signals(self, received: bytes) -> None:
        for signum in received:
            if signum not in _STOP_SIGNALS:
                continue  # SIGCHLD: the next _reap() collects
            if self.stopping is None:
                log.info(
                    "Received %s: stopping %d worker(s)",
                    signal.Signals(signum).name,
                    sum(1 for slot in self.slots if slot.pid),
                )
                self.stopping = signum
                # No restart from now on: the workers' copies are the last,
                # and the listeners go away as each worker closes its own.
                self._close_sockets()
            for slot in self.slots:
                if slot.pid:
                    with suppress(ChildProcessError, ProcessLookupError):
                        os.kill(slot.pid, signum)

    def _reap(self) -> None:
        for slot in self.slots:
            if not slot.pid:
                continue
            status: Optional[int]
            try:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else (SIGCHLD ignored)
                pid, status = slot.pid, None
            if pid == 0:
                continue
            slot.pid = 0
            now = time.monotonic()
            if self.stopping is not None:
                log.info("Worker %d %s", pid, _describe(status))
                continue
            if now - slot.started >= STABLE_AFTER:
                slot.failures = 0
            slot.failures += 1
            delay = _restart_delay(slot.failures)
            slot.restart_at = now + delay
            when = f"in {delay:.1f} s" if delay else "now"
            log.warning("Worker %d %s; restarting it %s", pid, _describe(status), when)

    def _spawn(self, slot: _Slot) -> None:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        # Blocked across fork(): a stop signal meant for the new worker waits
        # until it has its own handlers; one for us until we know its pid.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {*_STOP_SIGNALS, signal.SIGCHLD})
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child; measured in its own process
                self._child(slot, mask)
            # Also done by the child: whichever runs first, the group exists
            # before either goes on.
            with suppress(OSError):
                os.setpgid(pid, pid)
            slot.pid = pid
            slot.started = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        log.info("Worker %d started", pid)

    def _child(self, slot: _Slot, mask: Iterable[int]) -> NoReturn:  # pragma: no cover
        code = 1
        try:
            # A group of its own: a terminal's Ctrl-C (sent to the foreground
            # process group) must not reach the worker besides the copy the
            # supervisor passes on; with a drain, a second signal means "now".
            with suppress(OSError):
                os.setpgid(0, 0)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (self.wake_r, self.wake_w, self.life_w):
                os.close(fd)
            for sock in self.sockets:
                if not any(sock is mine for mine in slot.sockets):
                    sock.close()
            # Never the parent's loop: _loop.get_or_new_eventloop() and
            # asyncio.get_event_loop() make a new one.
            asyncio.set_event_loop(None)
            threading.Thread(
                target=_watch_supervisor, args=(self.life_r,), name="supervisor-watch", daemon=True
            ).start()
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            global _worker_index
            _worker_index = self.slots.index(slot)
            self.serve(list(slot.sockets))
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
        except KeyboardInterrupt:
            code = 128 + signal.SIGINT
        except BaseException:
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    if stream is not None:
                        stream.flush()
                except BaseException:
                    pass
            os._exit(code)


def _watch_supervisor(fd: int) -> None:  # pragma: no cover - runs in a worker
    """In a worker: wait for the supervisor to be gone, then stop as on SIGTERM."""
    while True:
        try:
            if os.read(fd, 1):
                continue
        except OSError:
            return
        os.kill(os.getpid(), signal.SIGTERM)
        return


def run_workers(
    serve: Callable[[list[socket.socket]], object],
    sockets: Sequence[list[socket.socket]],
) -> int:
    """Run ``serve(sockets[i])`` in one forked worker process per entry.

    ``sockets`` is what :func:`bind_sockets` returns. Each worker starts with
    the default handlers of SIGTERM (terminate) and SIGINT
    (``KeyboardInterrupt``), no current event loop, and only its own sockets
    open; ``serve`` should make a new event loop, serve the sockets until
    SIGTERM or SIGINT, shut down and return. The worker then exits with status
    0 (1 with a traceback printed if ``serve`` raised; ``sys.exit(n)``: n).

    The calling process supervises: a worker that exits or is killed while
    the supervisor runs is logged at WARNING and restarted on its sockets,
    at once, or after a delay growing from 0.1 s to 10 s while it keeps dying
    within a second of starting. Every SIGTERM and SIGINT the supervisor
    receives is passed on to each worker; at the first one the supervisor
    closes its copies of the sockets and restarts nothing more, and once
    every worker has exited ``run_workers()`` returns that first signal's
    number. Each worker runs in a process group of its own, so that a
    signal to the supervisor's group (Ctrl-C in a terminal) reaches it only
    once, through the supervisor.

    Call it from the main thread of a POSIX process (it installs signal
    handlers, restored on return) that runs no other thread, since it
    forks. It takes the sockets over: they are closed when it returns.
    """
    if not hasattr(os, "fork"):
        raise RuntimeError("run_workers() needs os.fork(), which this platform lacks")
    if not sockets:
        raise ValueError("no worker to run")
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("run_workers() must be called from the main thread")
    return _Supervisor(serve, sockets).run()


def _metrics_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, reuse_port=False)


def _serve_or_count(
    serve: Callable[[list[socket.socket]], object],
    metrics_sock: socket.socket,
    shared: mmap.mmap,
    workers: int,
    sockets: list[socket.socket],
) -> object:
    """A worker's body under ``--metrics``: the metrics process (the one
    given ``metrics_sock``) serves the sum, the others serve mail."""
    from aiosmtpd._metrics_http import serve_shared_metrics

    if sockets == [metrics_sock]:
        serve_shared_metrics(metrics_sock, shared, workers)
        return None
    return serve(sockets)


def worker_index() -> Optional[int]:
    """In a worker of :func:`run_workers`: its index in ``sockets`` (the same
    after a restart); ``None`` elsewhere."""
    return _worker_index


def _supervise_cli(
    parsed: Namespace, nobody: Any, serve: Callable[[list[socket.socket]], object]
) -> None:
    """``aiosmtpd --workers N`` (N > 1): bind, drop privileges, supervise.

    ``serve`` runs the single-process server on the given sockets. The
    supervisor drops privileges itself, before forking: every worker, and
    every restarted one, starts unprivileged, and nothing needs root after
    the bind (the sockets stay open, the TLS files are loaded). It ends as
    the single process does: status 0 after SIGINT, killed by SIGTERM after
    SIGTERM.
    """
    from aiosmtpd._process import _configure_logging, _drop_privileges, _preload
    main_log = logging.getLogger("mail.log")

    _configure_logging(parsed.debug, None)
    # A dying worker is news even without -d.
    if log.getEffectiveLevel() > logging.WARNING:
        log.setLevel(logging.WARNING)
    groups = bind_sockets(parsed.host, parsed.port, parsed.workers)
    # The workers log (and serve) the port actually bound.
    parsed.port = groups[0][0].getsockname()[1]
    if parsed.metrics_address is not None:
        # --metrics: the workers count into one shared table, a slot each,
        # and one more process, supervised like them, serves the sum.
        metrics_sock = _metrics_socket(*parsed.metrics_address)
        parsed.metrics_shared = shared = mmap.mmap(-1, STORAGE_BYTES * parsed.workers)
        groups = [*groups, [metrics_sock]]
        serve = partial(_serve_or_count, serve, metrics_sock, shared, parsed.workers)
        main_log.info(
            "Metrics at http://%s:%s/metrics", parsed.metrics_address[0],
            metrics_sock.getsockname()[1],
        )
    if nobody is not None:
        _preload()
        _drop_privileges(nobody)
    main_log.info("Server is listening on %s:%s", parsed.host, parsed.port)
    log.info(
        "Starting %d workers (%s)",
        parsed.workers,
        "a SO_REUSEPORT socket each" if groups[0] is not groups[1] else "one shared socket",
    )
    if run_workers(serve, groups) == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
