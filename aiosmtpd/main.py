"""The command-line program: ``python -m aiosmtpd`` / ``aiosmtpd``."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import ssl
import sys
import weakref
from argparse import ArgumentParser, Namespace
from contextlib import suppress
from functools import partial
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from aiosmtpd import __version__, workers
from aiosmtpd._loop import get_or_new_eventloop
from aiosmtpd._metrics_http import shared_metrics, start_metrics_server
from aiosmtpd._process import (
    _configure_logging,
    _drop_privileges,
    _lookup_nobody,
    _preload,
)
from aiosmtpd._xclient import trusted_networks
from aiosmtpd.metrics import Metrics, render
from aiosmtpd.operations import Operations
from aiosmtpd.smtp import DATA_SIZE_DEFAULT as DATA_SIZE_DEFAULT  # re-exported for user code
from aiosmtpd.smtp import SMTP

if TYPE_CHECKING:  # pragma: no cover
    import socket
    from collections.abc import Awaitable, Sequence

__all__ = ["main"]

log = logging.getLogger("mail.log")

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 8025
DEFAULT_CLASS = "aiosmtpd.handlers.Debugging"

# Computed once at import, as upstream does: the console script shows its own
# path, ``python -m aiosmtpd`` shows a friendly name.
PROGRAM = "aiosmtpd" if "__main__.py" in sys.argv[0] else sys.argv[0]


def _parser(operations: bool = True) -> ArgumentParser:
    """The command line; ``operations=False``: only 1.4.6's options."""
    parser = ArgumentParser(prog=PROGRAM, description="An RFC 5321 SMTP server with extensions.")
    parser.add_argument("-v", "--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-n",
        "--nosetuid",
        dest="setuid",
        default=True,
        action="store_false",
        help=(
            "Keep running as the invoking user. Without this option the server "
            'switches to the "nobody" user after binding its socket, which '
            "only works when started as root."
        ),
    )
    parser.add_argument(
        "-c",
        "--class",
        dest="classpath",
        metavar="CLASSPATH",
        default=DEFAULT_CLASS,
        help=(
            "Dotted import path of the handler class, e.g. "
            f"aiosmtpd.handlers.Sink. Default: {DEFAULT_CLASS}"
        ),
    )
    parser.add_argument(
        "-s",
        "--size",
        metavar="SIZE",
        type=int,
        help=(
            "Largest accepted message, in bytes (RFC 1870 SIZE). "
            "Default: no limit, and SIZE is not advertised; 0 also means no limit."
        ),
    )
    parser.add_argument(
        "-u",
        "--smtputf8",
        default=False,
        action="store_true",
        help="Offer the SMTPUTF8 extension (RFC 6531). Off by default.",
    )
    parser.add_argument(
        "-d",
        "--debug",
        default=0,
        action="count",
        help=(
            "More logging on stderr: -d for INFO, -dd for DEBUG, "
            "-ddd also turns on asyncio debug mode."
        ),
    )
    parser.add_argument(
        "-l",
        "--listen",
        metavar="[HOST][:PORT]",
        nargs="?",
        help=(
            f"Address to listen on. HOST defaults to {DEFAULT_HOST} and PORT to "
            f"{DEFAULT_PORT}. Write IPv6 addresses in brackets, e.g. [::1]:2525."
        ),
    )
    parser.add_argument(
        "--smtpscert",
        metavar="CERTFILE",
        help="Certificate for implicit TLS (SMTPS); needs --smtpskey.",
    )
    parser.add_argument(
        "--smtpskey",
        metavar="KEYFILE",
        help="Private key for implicit TLS (SMTPS); needs --smtpscert.",
    )
    parser.add_argument(
        "--tlscert",
        metavar="CERTFILE",
        help="Certificate enabling STARTTLS; needs --tlskey.",
    )
    parser.add_argument(
        "--tlskey",
        metavar="KEYFILE",
        help="Private key for STARTTLS; needs --tlscert.",
    )
    parser.add_argument(
        "--no-requiretls",
        dest="requiretls",
        default=True,
        action="store_false",
        help=(
            "With STARTTLS configured, let clients send mail without "
            "STARTTLS (by default they must use it first)."
        ),
    )
    parser.add_argument(
        "classargs",
        metavar="CLASSARGS",
        nargs="*",
        help=(
            "Extra arguments passed to the handler class's from_cli(). "
            "Put -- before arguments that start with a dash."
        ),
    )
    if operations:
        # The usage synopsis stays 1.4.6's, which scripts and docs quote
        # (docs/cli.rst); the options added since are listed in --help.
        synopsis = _parser(operations=False).format_usage()
        parser.usage = synopsis.split(" ", 1)[1].rstrip("\n").replace(PROGRAM, "%(prog)s", 1)
        _operations_arguments(parser)
        _extension_arguments(parser)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


# argparse names the type in its error: "invalid number of seconds value: '0'".
_positive_int.__name__ = "positive integer"
_seconds.__name__ = "number of seconds"


def _operations_arguments(parser: ArgumentParser) -> None:
    """Limits, timeouts, drain and metrics (docs/operations.rst)."""
    group = parser.add_argument_group("operations")
    group.add_argument(
        "--max-connections", metavar="N", type=_positive_int,
        help="Serve at most N clients at once; more get 421 4.7.0. Default: no limit.",
    )
    group.add_argument(
        "--max-connections-per-ip", metavar="N", type=_positive_int,
        help="Serve at most N clients from one address at once. Default: no limit.",
    )
    group.add_argument(
        "--max-recipients", metavar="N", type=_positive_int,
        help="Accept at most N recipients per message (452 beyond). Default: no limit.",
    )
    group.add_argument(
        "--timeout", metavar="SECONDS", type=_seconds, default=300.0,
        help="Close a connection idle for this long. Default: 300.",
    )
    group.add_argument(
        "--data-timeout", metavar="SECONDS", type=_seconds,
        help="Longest DATA phase (421 4.4.2 after it). Default: only --timeout applies.",
    )
    group.add_argument(
        "--session-timeout", metavar="SECONDS", type=_seconds,
        help="Longest connection (421 4.4.2 after it). Default: no limit.",
    )
    group.add_argument(
        "--tls-handshake-timeout", metavar="SECONDS", type=_seconds,
        help="Longest TLS handshake. Default: --timeout, at most 60.",
    )
    group.add_argument(
        "--drain-timeout", metavar="SECONDS", type=float, default=30.0,
        help=(
            "On SIGTERM or SIGINT, stop accepting and let transactions in flight "
            "finish for up to this long (0: stop at once; a second signal too). "
            "Default: 30."
        ),
    )
    group.add_argument(
        "--metrics", metavar="HOST:PORT",
        help="Serve Prometheus metrics at http://HOST:PORT/metrics. Default: off.",
    )
    group.add_argument(
        "--workers", metavar="N", type=workers._worker_count, default=1,
        help=(
            "Serve with N worker processes sharing the listening address, "
            "restarted when they die (POSIX only). Default: 1, one process."
        ),
    )


def _extension_arguments(parser: ArgumentParser) -> None:
    """Opt-in ESMTP extensions (docs/extensions.rst)."""
    group = parser.add_argument_group("extensions")
    group.add_argument(
        "--pipelining", action="store_true",
        help="Offer PIPELINING (RFC 2920).",
    )
    group.add_argument(
        "--enhanced-status-codes", action="store_true",
        help="Offer ENHANCEDSTATUSCODES (RFC 2034) and put them in every reply.",
    )
    group.add_argument(
        "--dsn", action="store_true",
        help="Offer DSN (RFC 3461): accept RET, ENVID, NOTIFY and ORCPT.",
    )
    group.add_argument(
        "--chunking", action="store_true",
        help="Offer CHUNKING and BINARYMIME (RFC 3030): BDAT.",
    )
    group.add_argument(
        "--xclient-trusted", metavar="NETWORKS", type=_networks,
        help=(
            "Offer Postfix's XCLIENT to clients in these networks, "
            "comma-separated (e.g. 127.0.0.0/8,::1). Default: off."
        ),
    )


def _networks(text: str) -> list[str]:
    networks = [part.strip() for part in text.split(",")]
    trusted_networks(networks)  # ValueError: argparse's usage error
    return networks


_networks.__name__ = "network list"


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _port(text: str) -> int:
    if not text:
        return DEFAULT_PORT
    # int() rather than a digit check: upstream accepts " 2525" and "-1" here
    # and leaves range errors to bind().
    return int(text)


def parse_listen(value: Optional[str]) -> tuple[str, int]:
    """Split a ``-l`` value into host and port.

    Raises ``ValueError`` whose text is the offending port string.
    """
    if value is None:
        return DEFAULT_HOST, DEFAULT_PORT
    if value.startswith("[") and "]" in value:
        host, _, rest = value[1:].partition("]")
        if rest == "" or rest.startswith(":"):
            try:
                return host, _port(rest[1:])
            except ValueError:
                raise ValueError(rest[1:]) from None
    elif value.count(":") >= 2:
        # Several colons and no brackets: an IPv6 literal, possibly followed
        # by :PORT. Only split when both halves make sense, so every value
        # upstream could use keeps its meaning (e.g. fe80::1:2525).
        addr, _, port = value.rpartition(":")
        if port.isascii() and port.isdigit() and _is_ipv6(addr):
            return addr, int(port)
        return value, DEFAULT_PORT
    host, colon, port = value.rpartition(":")
    if not colon:
        return value, DEFAULT_PORT
    try:
        return host or DEFAULT_HOST, _port(port)
    except ValueError:
        raise ValueError(port) from None


def _load_class(classpath: str) -> Any:
    # rpartition: a dotless path gives an empty module name, which
    # import_module rejects with "Empty module name", as upstream reports.
    module_path, _, class_name = classpath.rpartition(".")
    module = import_module(module_path)
    return getattr(module, class_name)


def parseargs(args: Optional[Sequence[str]] = None) -> tuple[ArgumentParser, Namespace]:
    """Parse and validate the command line; exits with status 2 on errors."""
    parser = _parser()
    parsed = parser.parse_args(args)
    if parsed.size is not None and parsed.size < 0:
        # Checked before the handler is built so that a bad size has no side
        # effects (a Mailbox handler creates its directory).
        parser.error(f"Invalid size: {parsed.size}")
    handler_class = _load_class(parsed.classpath)
    if hasattr(handler_class, "from_cli"):
        parsed.handler = handler_class.from_cli(parser, *parsed.classargs)
    elif parsed.classargs:
        # Names the module, not the class: kept from upstream on purpose.
        module_path = parsed.classpath.rpartition(".")[0]
        parser.error(f"Handler class {module_path} takes no arguments")
    else:
        parsed.handler = handler_class()
    try:
        parsed.host, parsed.port = parse_listen(parsed.listen)
    except ValueError as e:
        parser.error(f"Invalid port number: {e}")
    for kind in ("smtps", "tls"):
        cert = getattr(parsed, f"{kind}cert")
        key = getattr(parsed, f"{kind}key")
        if (cert is None) != (key is None):
            parser.error(f"--{kind}cert and --{kind}key must be specified together")
        if cert is not None and not Path(cert).exists():
            parser.error(f"Cert file {cert} not found")
        if key is not None and not Path(key).exists():
            parser.error(f"Key file {key} not found")
    if parsed.drain_timeout < 0:
        parser.error(f"Invalid drain timeout: {parsed.drain_timeout}")
    parsed.metrics_address = None
    if parsed.metrics is not None:
        try:
            host, port = parse_listen(parsed.metrics)
        except ValueError:
            host, port = "", -1
        if ":" not in parsed.metrics or not 0 <= port <= 65535:
            parser.error(f"Invalid --metrics address: {parsed.metrics} (use HOST:PORT)")
        parsed.metrics_address = (host, port)
    return parser, parsed


def _server_tls_context(cert: Optional[str], key: Optional[str]) -> Optional[ssl.SSLContext]:
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.check_hostname = False
    context.load_cert_chain(cert, key)
    return context


def _run(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any]) -> bool:
    """Run ``loop`` until ``fut`` is done; return whether it is.

    Unlike ``run_until_complete``, a stopped loop is not an error: this
    returns ``False`` when a callback called ``loop.stop()`` (code embedding
    ``main()`` may do that) or raised ``KeyboardInterrupt`` before ``fut``
    was done.
    """
    if fut.done():
        return True
    active = True

    def done(_: object) -> None:
        # Guarded: if fut completes in the same loop pass as someone else's
        # loop.stop(), this call is still queued and must not stop a later run.
        if active:
            loop.stop()

    fut.add_done_callback(done)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        active = False
        fut.remove_done_callback(done)
    return fut.done()


def _complete(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any]) -> Any:
    """Run ``loop`` until ``fut`` is done whatever stops the loop meanwhile."""
    while not _run(loop, fut):
        pass
    return fut.result()


def _shutdown(
    loop: asyncio.AbstractEventLoop,
    server: asyncio.AbstractServer,
    sessions: weakref.WeakSet[SMTP],
) -> None:
    server.close()
    log.debug("Completed asyncio loop")
    # Since Python 3.12 wait_closed() waits for every client; dropping the
    # connections keeps Ctrl-C prompt whatever the clients do.
    for protocol in list(sessions):
        transport = protocol.transport
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        elif transport is not None:
            transport.close()
    _complete(loop, asyncio.ensure_future(server.wait_closed(), loop=loop))
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        _complete(loop, asyncio.gather(*pending, return_exceptions=True))
    loop.close()


def _drain(
    loop: asyncio.AbstractEventLoop,
    operations: Operations,
    timeout: float,
    forced: asyncio.Future[None],
) -> None:
    """Let the transactions in flight finish (docs/operations.rst, "Drain"),
    unless a second signal (``forced``) or the loop's stop comes first."""
    draining = asyncio.ensure_future(operations.drain(timeout), loop=loop)
    either = asyncio.ensure_future(
        asyncio.wait({draining, forced}, return_when=asyncio.FIRST_COMPLETED), loop=loop
    )
    _run(loop, either)
    if not draining.done():
        log.warning("Stopping without waiting for the drain to end")
    draining.cancel()


def _start_metrics(
    loop: asyncio.AbstractEventLoop,
    address: Optional[tuple[str, int]],
    operations: Operations,
) -> Optional[asyncio.Server]:
    """The ``--metrics`` endpoint, bound before privileges are dropped."""
    if address is None:
        return None
    metrics = operations.metrics
    assert metrics is not None
    server: asyncio.Server = _complete(
        loop,
        asyncio.ensure_future(
            start_metrics_server(*address, lambda: render([metrics.snapshot()])), loop=loop
        ),
    )
    port = server.sockets[0].getsockname()[1] if server.sockets else address[1]
    log.info("Metrics at http://%s:%s/metrics", address[0], port)
    return server


def main(args: Optional[Sequence[str]] = None) -> None:
    """Run the SMTP server from the command line (``args`` default: sys.argv)."""
    _, parsed = parseargs(args)
    nobody = _lookup_nobody() if parsed.setuid else None

    # Key files are read and the port is bound before giving up root, so
    # root-only keys and privileged ports work.
    tls_context = _server_tls_context(parsed.tlscert, parsed.tlskey)
    smtps_context = _server_tls_context(parsed.smtpscert, parsed.smtpskey)

    if parsed.workers > 1:
        # Binds, drops privileges, then runs _serve() in each worker process.
        serve = partial(_serve, parsed, None, tls_context, smtps_context)
        workers._supervise_cli(parsed, nobody, serve)
        return
    _serve(parsed, nobody, tls_context, smtps_context)


def _serve(
    parsed: Namespace,
    nobody: Any,
    tls_context: Optional[ssl.SSLContext],
    smtps_context: Optional[ssl.SSLContext],
    sockets: Optional[list[socket.socket]] = None,
) -> None:
    """Serve until stopped: binds ``parsed.host:port``, or serves ``sockets``
    (already bound and listening: a worker of ``--workers``).

    ``nobody``: the user to switch to once bound, or ``None``.
    """
    loop = get_or_new_eventloop()
    _configure_logging(parsed.debug, loop)

    sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
    # With --workers, each worker counts into its slot of a table the
    # supervisor shares, and a process of its own serves the sum.
    shared = getattr(parsed, "metrics_shared", None)
    metrics: Union[bool, Metrics] = parsed.metrics_address is not None
    if shared is not None:
        metrics = shared_metrics(shared, workers.worker_index() or 0)
    operations = Operations(
        max_connections=parsed.max_connections,
        max_connections_per_ip=parsed.max_connections_per_ip,
        metrics=metrics,
    )

    def factory() -> SMTP:
        protocol = SMTP(
            parsed.handler,
            data_size_limit=parsed.size,
            enable_SMTPUTF8=parsed.smtputf8,
            tls_context=tls_context,
            require_starttls=parsed.requiretls,
            timeout=parsed.timeout,
            max_recipients=parsed.max_recipients,
            data_timeout=parsed.data_timeout,
            session_timeout=parsed.session_timeout,
            tls_handshake_timeout=parsed.tls_handshake_timeout,
            # A port scanner must not fill the log with tracebacks.
            brief_tls_errors=True,
            enable_PIPELINING=parsed.pipelining,
            enable_ENHANCEDSTATUSCODES=parsed.enhanced_status_codes,
            enable_DSN=parsed.dsn,
            enable_CHUNKING=parsed.chunking,
            xclient_trusted=parsed.xclient_trusted,
            operations=operations,
        )
        sessions.add(protocol)
        return protocol

    # The loop is stopped by SIGINT (through this future), by a
    # KeyboardInterrupt out of a callback, or by loop.stop() from code that
    # embeds main(); whichever comes first, the listener is closed and the
    # loop closed before main() returns. A stop while the socket is being
    # bound lets the bind finish, then shuts down at once.
    stop: asyncio.Future[None] = loop.create_future()

    # A second signal during the drain stops at once.
    forced: asyncio.Future[None] = loop.create_future()
    received: list[int] = []

    def request_stop(signum: int = signal.SIGINT) -> None:
        received.append(signum)
        if not stop.done():
            stop.set_result(None)
        elif not forced.done():
            forced.set_result(None)

    # Not available on Windows nor outside the main thread; there Ctrl-C
    # arrives as KeyboardInterrupt instead.
    with suppress(NotImplementedError, RuntimeError):
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, request_stop, signum)

    log.debug("Attempting to start server on %s:%s", parsed.host, parsed.port)
    listening: Awaitable[asyncio.AbstractServer]
    if sockets is None:
        listening = loop.create_server(
            factory, host=parsed.host, port=parsed.port, ssl=smtps_context
        )
    else:
        listening = workers.create_server(factory, sockets, ssl=smtps_context)
    binding = asyncio.ensure_future(listening, loop=loop)
    if not _run(loop, binding):
        request_stop()
    server: asyncio.AbstractServer = _complete(loop, binding)
    metrics_server = None
    if shared is None:
        metrics_server = _start_metrics(loop, parsed.metrics_address, operations)
    if nobody is not None:
        _preload()
        _drop_privileges(nobody)
    log.debug("server_loop = %r", server)
    log.info("Server is listening on %s:%s", parsed.host, parsed.port)

    log.debug("Starting asyncio loop")
    _run(loop, stop)
    if metrics_server is not None:
        metrics_server.close()
    if parsed.drain_timeout > 0 and not loop.is_closed():
        server.close()
        _drain(loop, operations, parsed.drain_timeout, forced)
    _shutdown(loop, server, sessions)
    if received and received[0] == signal.SIGTERM:
        # Drained and closed; now end as 1.4.6 ended on SIGTERM (killed by
        # it), which is what service managers expect to see.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
