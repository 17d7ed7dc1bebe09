"""Fixtures shared by the tests/test_smtp_*.py modules (helpers: tests/_server.py).

A module that defines a fixture of the same name keeps its own.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from aiosmtpd.smtp import SMTP
from tests._exim import EXIM_SKIP_REASON, Exim, exim_binary
from tests._server import Certs, LoopThread, Server, ServerFactory, make_server_fixture


@pytest.fixture(scope="module")
def lt() -> Iterator[LoopThread]:
    """One event loop thread serves every server of a test module."""
    t = LoopThread()
    yield t
    t.close()


ENGINES = ("inline", "task")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every test_smtp_* test that starts a server runs on both ways of running
    # commands (docs/internals.rst, "Inline commands and the Task"), unless
    # it is about one of them (@pytest.mark.engine("inline")).
    if "engine" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("engine")
    if marker is not None:
        metafunc.parametrize("engine", marker.args, indirect=True)
    elif metafunc.module.__name__.rpartition(".")[2].startswith("test_smtp_"):
        metafunc.parametrize("engine", ENGINES, indirect=True)


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """How the servers of the test run commands: "inline" or in a "task"."""
    return getattr(request, "param", "inline")


@pytest.fixture
def start(lt: LoopThread, engine: str) -> Iterator[ServerFactory]:
    """Starts servers (``start(handler, **SMTP_options)``) closed after the test."""
    with contextlib.ExitStack() as stack:
        yield make_server_fixture(lt, stack, inline=engine == "inline")


@pytest.fixture
def server(start: ServerFactory) -> Server:
    return start()


@pytest.fixture
def serve(lt: LoopThread, start: ServerFactory) -> Callable[..., int]:
    """Like ``start``, but returns only the port (``smtp_class`` names the class)."""

    def serve(handler: Any, *, smtp_class: type[SMTP] = SMTP, **kwargs: Any) -> int:
        return start(handler, cls=smtp_class, loop=lt.loop, **kwargs).port

    return serve


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    pytest.importorskip("trustme")
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_contexts(certs: Certs) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context and a client context that trusts it."""
    return certs.server_context(), certs.client_context()


@pytest.fixture
def exim(tmp_path: Path) -> Iterator[Callable[..., Exim]]:
    """``exim(port, **options)``: a private Exim relaying every address to
    127.0.0.1:port (tests/_exim.py), closed after the test; skips without Exim."""
    if exim_binary() is None:
        pytest.skip(EXIM_SKIP_REASON)
    with contextlib.ExitStack() as stack:

        def make(port: int, **options: Any) -> Exim:
            return stack.enter_context(Exim(tmp_path, port, **options))

        yield make
