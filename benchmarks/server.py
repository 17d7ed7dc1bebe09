"""Run one benchmark server on a free loopback port until told to stop.

    python server.py {project,upstream,floor} [--tls CERT KEY] [--cpu N]
                     [--profile OUT.pstats] [--handler {sink,hook,stream}]
                     [--workers N] [--no-size-limit] [--stall-file PATH]

Standalone on purpose (stdlib only, no import from the benchmarks package):
the orchestrator runs it with the repo's interpreter for ``project`` and
``floor`` and with the throwaway venv's interpreter (``python -I``) for
``upstream``, so the very same lines build both aiosmtpd servers.

Once listening it prints one JSON line on stdout: ``{"port": ..., "pid":
..., "impl": ...}``.  It stops on SIGTERM/SIGINT or when stdin reaches EOF
(so it never outlives a crashed orchestrator).

``--stall-file PATH`` starts a monitor of the event loop's stalls (a
``call_at`` chain every 2 ms that notes how late each tick ran).  On
SIGUSR1 it writes the worst lateness since the previous SIGUSR1 (or the
start) to PATH as one JSON object (through a temporary file and a rename, so
a reader never sees half of it) and starts over.

``--workers N`` (project only, N >= 2) serves with N worker processes
through ``aiosmtpd.workers``, worker i pinned to CPU i when ``--cpu -1``; the
JSON line then gives the supervisor's pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import ssl
import sys
from collections.abc import Callable
from typing import Any

HOSTNAME = "bench.localhost"
DATA_SIZE_LIMIT = 64 * 1024 * 1024
END_OF_DATA = b"\r\n.\r\n"


class FloorProtocol(asyncio.Protocol):
    """The least work a pure-Python SMTP sink can do: canned replies, and a
    search for CRLF.CRLF in DATA.  No grammar, no state checks, no storage.
    Its throughput is the ceiling for pure Python on this machine."""

    def __init__(self, tls_context: ssl.SSLContext | None) -> None:
        self.tls_context = tls_context
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.in_data = False
        # In DATA, the previous chunk's last 4 bytes, so a marker split across
        # two reads is still found.  Starts as CRLF: "." alone on the first
        # line ends an empty message.
        self.tail = b"\r\n"
        self.upgrading = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 " + HOSTNAME.encode() + b" ESMTP floor\r\n")

    def data_received(self, data: bytes) -> None:
        if self.upgrading:
            # Decrypted bytes can arrive before loop.start_tls() returns the
            # new transport; replying now would go out in plaintext.
            self.buffer += data
            return
        if self.in_data:
            self._data_chunk(data)
        else:
            self.buffer += data
            self._commands()

    def _data_chunk(self, data: bytes) -> None:
        assert self.transport is not None
        # A marker straddling the previous chunk comes before any inside data.
        edge = (self.tail + data[:4]).find(END_OF_DATA)
        if edge >= 0:
            rest = data[edge + len(END_OF_DATA) - len(self.tail) :]
        else:
            end = data.find(END_OF_DATA)
            if end < 0:
                self.tail = (self.tail + data)[-4:]
                return
            rest = data[end + len(END_OF_DATA) :]
        self.in_data = False
        self.tail = b"\r\n"
        self.transport.write(b"250 OK\r\n")
        if rest:
            self.buffer += rest
            self._commands()

    def _commands(self) -> None:
        assert self.transport is not None
        while not self.in_data:
            eol = self.buffer.find(b"\n")
            if eol < 0:
                return
            line, self.buffer = self.buffer[:eol], self.buffer[eol + 1 :]
            verb = line[:4].upper()
            if verb == b"EHLO":
                tls = b"250-STARTTLS\r\n" if self.tls_context else b""
                self.transport.write(
                    b"250-" + HOSTNAME.encode() + b"\r\n250-SIZE 67108864\r\n"
                    b"250-8BITMIME\r\n" + tls + b"250 HELP\r\n"
                )
            elif verb == b"DATA":
                self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                self.in_data = True
                if self.buffer:
                    rest, self.buffer = self.buffer, b""
                    self._data_chunk(rest)
            elif verb == b"QUIT":
                self.transport.write(b"221 Bye\r\n")
                self.transport.close()
                return
            elif verb == b"STAR" and self.tls_context is not None:
                self.transport.write(b"220 Ready to start TLS\r\n")
                self.upgrading = True
                asyncio.ensure_future(self._start_tls(self.tls_context))
                return
            else:
                self.transport.write(b"250 OK\r\n")

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        new = await loop.start_tls(self.transport, self, context, server_side=True)
        assert isinstance(new, asyncio.Transport)
        self.transport = new
        self.upgrading = False
        self._commands()


class HookHandler:
    """A handler with handle_DATA: the server builds envelope.content for it."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        assert isinstance(envelope.content, bytes)
        return "250 OK"


class CountingStream:
    """The streaming hook: the message arrives in chunks and is only counted,
    never held.  The reply gives the count, so the client can check that the
    handler saw every byte (and was called at all)."""

    async def handle_DATA_STREAM(self, server: Any, session: Any, envelope: Any, body: Any) -> str:
        n = 0
        async for chunk in body:
            n += len(chunk)
        return f"250 OK {n} bytes"


class LengthHook:
    """For servers without the streaming hook (upstream): handle_DATA takes
    the length of envelope.content, which the server has built in full."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return f"250 OK {len(envelope.content)} bytes"


def _handler(kind: str, name: str) -> Any:
    from aiosmtpd.handlers import Sink

    if name == "hook":
        return HookHandler()
    if name == "stream":
        # Upstream 1.4.6 has no streaming hook: the best it can do is hold
        # the whole message, which is what the comparison is about.
        return LengthHook() if kind == "upstream" else CountingStream()
    return Sink()


def normal_priority() -> None:
    """Leave the real-time class of ``--realtime`` (fairness only): a process
    that keeps its CPU busy for a second is throttled there for 50 ms
    (``/proc/sys/kernel/sched_rt_runtime_us``), which is exactly the kind of
    stall the scenario measures (benchmarks/README.md)."""
    if hasattr(os, "sched_setscheduler") and os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


class StallMonitor:
    """How late the event loop runs a callback due every *interval* seconds.

    The lateness of a tick is how long the loop was busy elsewhere (or not
    scheduled) past the tick's due time: the longest a ready connection could
    have waited.  Besides the tick chain it costs nothing; ``dump()`` (on
    SIGUSR1) writes the worst since the previous dump and starts over.
    """

    def __init__(self, path: str, interval: float = 0.002) -> None:
        self.path = path
        self.interval = interval
        self.loop = asyncio.get_running_loop()
        self._reset()
        self.due = self.loop.time() + interval
        self.loop.call_at(self.due, self._tick)

    def _reset(self) -> None:
        self.worst = 0.0
        self.ticks = 0
        self.late_1ms = 0
        self.since = self.loop.time()

    def _tick(self) -> None:
        now = self.loop.time()
        late = now - self.due
        self.ticks += 1
        if late > self.worst:
            self.worst = late
        if late > 0.001:
            self.late_1ms += 1
        self.due = now + self.interval
        self.loop.call_at(self.due, self._tick)

    def dump(self) -> None:
        # The tick under way may have been due before the dump: count its
        # lateness so far too, so a stall still going on is not lost.
        pending = max(0.0, self.loop.time() - self.due)
        data = {
            "worst_stall_ms": max(self.worst, pending) * 1000,
            "ticks": self.ticks,
            "ticks_late_over_1ms": self.late_1ms,
            "seconds": self.loop.time() - self.since,
            "interval_ms": self.interval * 1000,
        }
        tmp = self.path + ".tmp"
        with open(tmp, "w") as out:
            json.dump(data, out)
        os.replace(tmp, self.path)
        self._reset()


# The opt-in features a project+VARIANT kind turns on (benchmarks/launch.py).
VARIANT_OPTIONS: dict[str, Callable[[], dict[str, Any]]] = {
    "pipelining": lambda: {"enable_PIPELINING": True},
    "chunking": lambda: {"enable_CHUNKING": True},
    # Limits that never bite and every counter on: their cost alone.
    "ops": lambda: {"operations": _operations()},
}
_variant: str | None = None


def _operations() -> Any:
    from aiosmtpd.operations import Operations

    return Operations(max_connections=100_000, max_connections_per_ip=100_000, metrics=True)


def _aiosmtpd_factory(
    tls_context: ssl.SSLContext | None,
    handler_name: str,
    kind: str = "project",
    size_limit: int | None = DATA_SIZE_LIMIT,
) -> tuple[Callable[[], Any], str]:
    import aiosmtpd
    from aiosmtpd.smtp import SMTP

    handler = _handler(kind, handler_name)
    # Made once: an Operations is shared by every connection.
    options = VARIANT_OPTIONS[_variant]() if _variant else {}

    def factory() -> Any:
        # An explicit hostname keeps getfqdn() (a DNS look-up) out of the
        # measurement; the size limit makes 10 MiB messages legal (None:
        # no limit, for the streaming scenarios' 1 GiB and 200 MiB).
        return SMTP(
            handler,
            data_size_limit=size_limit,
            hostname=HOSTNAME,
            tls_context=tls_context,
            **options,
        )

    impl = f"aiosmtpd {getattr(aiosmtpd, '__version__', '?')} at {aiosmtpd.__file__}"
    return factory, impl


async def serve(
    kind: str,
    tls_context: ssl.SSLContext | None,
    profiler: Any = None,
    handler: str = "sink",
    size_limit: int | None = DATA_SIZE_LIMIT,
    stall_file: str | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    if kind == "floor":

        def floor_factory() -> asyncio.Protocol:
            return FloorProtocol(tls_context)

        factory: Callable[[], Any] = floor_factory
        impl = "floor (benchmarks/server.py)"
    else:
        factory, impl = _aiosmtpd_factory(tls_context, handler, kind, size_limit)
    # A deep backlog: the idle scenario opens thousands of connections.
    server = await loop.create_server(factory, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    stopped = loop.create_future()

    def stop() -> None:
        if not stopped.done():
            stopped.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)

    def stdin_ready() -> None:
        if not os.read(0, 4096):
            loop.remove_reader(0)
            stop()

    loop.add_reader(0, stdin_ready)
    if stall_file is not None:
        monitor = StallMonitor(stall_file)
        loop.add_signal_handler(signal.SIGUSR1, monitor.dump)
        normal_priority()
    if profiler is not None:
        # Imports and start-up are not what we want to see in the profile.
        profiler.enable()
    print(json.dumps({"port": port, "pid": os.getpid(), "impl": impl}), flush=True)
    await stopped
    if profiler is not None:
        profiler.disable()
    server.close()


def serve_workers(
    tls_context: ssl.SSLContext | None,
    handler: str,
    workers: int,
    cpu: int,
    size_limit: int | None = DATA_SIZE_LIMIT,
) -> None:
    """The project server in ``workers`` processes (aiosmtpd.workers); with
    ``cpu`` -1 worker i is pinned to CPU i (modulo the CPU count)."""
    from aiosmtpd.workers import bind_sockets, create_server, run_workers

    factory, impl = _aiosmtpd_factory(tls_context, handler, "project", size_limit)
    groups = bind_sockets("127.0.0.1", 0, workers, backlog=4096)

    def worker(sockets: list[Any]) -> None:
        if cpu < 0 and hasattr(os, "sched_setaffinity"):
            # Worker i on CPU i: one worker shares the client's CPU on a
            # 2-CPU machine (the kernel, left alone, sometimes put both there).
            index = next(i for i, group in enumerate(groups) if group[0] is sockets[0])
            os.sched_setaffinity(0, {index % (os.cpu_count() or 1)})

        async def main() -> None:
            loop = asyncio.get_running_loop()
            server = await create_server(factory, sockets, backlog=4096)
            stopped = asyncio.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stopped.set)

            def stdin_ready() -> None:
                if not os.read(0, 4096):
                    loop.remove_reader(0)
                    # The orchestrator is gone: stop every worker, not just
                    # this one (the supervisor would restart it). Usually
                    # its SIGTERM came first and is being handled already.
                    if not stopped.is_set():
                        os.kill(os.getppid(), signal.SIGTERM)

            loop.add_reader(0, stdin_ready)
            await stopped.wait()
            server.close()

        asyncio.run(main())

    port = groups[0][0].getsockname()[1]
    info = {"port": port, "pid": os.getpid(), "impl": f"{impl}, {workers} workers"}
    print(json.dumps(info), flush=True)
    run_workers(worker, groups)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["project", "upstream", "floor"])
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin to (-1: every CPU)")
    parser.add_argument("--profile", metavar="OUT.pstats")
    parser.add_argument("--handler", choices=["sink", "hook", "stream"], default="sink")
    parser.add_argument(
        "--no-size-limit", action="store_true", help="data_size_limit=None (aiosmtpd kinds)"
    )
    parser.add_argument(
        "--stall-file", metavar="PATH", help="monitor event-loop stalls, dump on SIGUSR1"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (project)")
    parser.add_argument(
        "--variant", choices=sorted(VARIANT_OPTIONS), help="opt-in features (project)"
    )
    args = parser.parse_args()
    global _variant
    _variant = args.variant
    if args.workers > 1 and (args.kind != "project" or args.profile or args.stall_file):
        parser.error("--workers is for the project server, without --profile or --stall-file")
    size_limit = None if args.no_size_limit else DATA_SIZE_LIMIT

    if hasattr(os, "sched_setaffinity"):
        # -1: undo the orchestrator's pinning, which the server inherits.
        cpus = range(os.cpu_count() or 1) if args.cpu < 0 else {args.cpu}
        os.sched_setaffinity(0, cpus)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    tls_context = None
    if args.tls:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(*args.tls)

    if args.workers > 1:
        serve_workers(tls_context, args.handler, args.workers, args.cpu, size_limit)
        return 0

    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    asyncio.run(serve(args.kind, tls_context, profiler, args.handler, size_limit, args.stall_file))
    if profiler is not None:
        import pstats

        profiler.dump_stats(args.profile)
        with open(args.profile + ".txt", "w") as out:
            for order in ("tottime", "cumulative"):
                out.write(f"=== top 30 by {order} ===\n")
                pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
