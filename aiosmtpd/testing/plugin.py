"""The pytest plugin: SMTP servers as fixtures for tests of mail-sending code.

pytest loads this module through the ``pytest11`` entry point of aiosmtpd.
It only defines fixtures, a marker and a few hooks: nothing runs, and
nothing beyond pytest itself is imported, until a test asks for one of the
fixtures.

Configuration, weakest first: the defaults, the ``AIOSMTPD_TEST_*``
environment variables, ``@pytest.mark.smtpd(...)`` markers (the closest
wins), and indirect parametrization of the fixture itself.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:  # pragma: no cover
    import ssl

    from aiosmtpd.testing import AsyncSMTPTestServer, ServerConfig, SMTPTestServer

MARKER_HELP = (
    "smtpd(**options): configure the aiosmtpd test server fixtures of this test, "
    "e.g. smtpd(tls='starttls', login='me', password='secret', data_size_limit=1000, "
    "faults=[...]); see 'Testing your mail code' in the aiosmtpd docs"
)


#: The servers a test used, for its failure report.
_SERVERS = pytest.StashKey["list[Any]"]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)


# Old-style hook wrappers throughout: the plugin is loaded by every pytest
# run of every project that has aiosmtpd installed, whatever its pytest.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        # What the server saw is usually the quickest way to see why a mail
        # test failed: show it next to the captured output.
        for server in item.stash.get(_SERVERS, []):
            report.sections.append(
                (f"smtpd transcript ({server.hostname}:{server.port})",
                 str(server.transcript) or "(no connection)")
            )


def _remember(request: pytest.FixtureRequest, server: Any) -> None:
    request.node.stash.setdefault(_SERVERS, []).append(server)


def _config_for(request: pytest.FixtureRequest, base: ServerConfig, **variant: Any) -> ServerConfig:
    config = base.evolve(**variant)
    param = getattr(request, "param", None)
    if param is not None:
        if not isinstance(param, dict):
            raise TypeError(
                f"parametrize {request.fixturename} (indirect=True) with dicts of "
                f"options, not {type(param).__name__}"
            )
        config = config.evolve(**param)
    return config


def _missing_extra(error: Exception) -> NoReturn:
    # Outside the except block, so the report is the hint alone, without
    # the chained ImportError.
    pytest.fail(str(error), pytrace=False)


def _new_server(config: ServerConfig) -> SMTPTestServer:
    from aiosmtpd.testing import MissingExtraError, SMTPTestServer

    try:
        return SMTPTestServer(config)
    except MissingExtraError as error:
        missing = error
    _missing_extra(missing)


def _serve(request: pytest.FixtureRequest, config: ServerConfig) -> Iterator[SMTPTestServer]:
    server = _new_server(config)
    server.start()
    _remember(request, server)
    try:
        yield server
    finally:
        # Runs however the test ended: a failed test must not leave a
        # thread, a port or a connection behind.
        server.stop()


@pytest.fixture
def smtpd_config(request: pytest.FixtureRequest) -> ServerConfig:
    """The configuration the ``smtpd*`` fixtures of this test start from.

    Override it in a ``conftest.py`` to change the defaults of a directory.
    """
    from aiosmtpd.testing import ServerConfig

    config = ServerConfig.from_env(os.environ)
    # iter_markers() yields the closest marker first; apply it last.
    for mark in reversed(list(request.node.iter_markers("smtpd"))):
        if mark.args:
            raise TypeError("@pytest.mark.smtpd takes keyword arguments only")
        config = config.evolve(**mark.kwargs)
    return config


@pytest.fixture
def smtpd(request: pytest.FixtureRequest, smtpd_config: ServerConfig) -> Iterator[SMTPTestServer]:
    """A threaded SMTP server on a free port that captures every message."""
    yield from _serve(request, _config_for(request, smtpd_config))


@pytest.fixture
def smtpd_starttls(
    request: pytest.FixtureRequest, smtpd_config: ServerConfig
) -> Iterator[SMTPTestServer]:
    """Like ``smtpd``, offering STARTTLS with a certificate made at run time."""
    yield from _serve(request, _config_for(request, smtpd_config, tls="starttls"))


@pytest.fixture
def smtpd_tls(
    request: pytest.FixtureRequest, smtpd_config: ServerConfig
) -> Iterator[SMTPTestServer]:
    """Like ``smtpd``, speaking implicit TLS (SMTPS) from the first byte."""
    yield from _serve(request, _config_for(request, smtpd_config, tls="implicit"))


@pytest.fixture
def smtpd_auth(
    request: pytest.FixtureRequest, smtpd_config: ServerConfig
) -> Iterator[SMTPTestServer]:
    """Like ``smtpd``, requiring AUTH with ``smtpd_auth.login``/``.password``."""
    variant: dict[str, Any] = {"auth_required": True}
    if not smtpd_config.credentials:
        variant["login"] = None  # the default account
    yield from _serve(request, _config_for(request, smtpd_config, **variant))


@pytest.fixture
def smtpd_factory(
    request: pytest.FixtureRequest, smtpd_config: ServerConfig
) -> Iterator[Callable[..., SMTPTestServer]]:
    """Start more servers in one test: ``smtpd_factory(tls="implicit")``.

    Every server it started is stopped when the test ends.
    """
    with ExitStack() as stack:

        def start(**options: Any) -> SMTPTestServer:
            server = _new_server(smtpd_config.evolve(**options))
            server.start()
            stack.callback(server.stop)
            _remember(request, server)
            return server

        yield start


@pytest.fixture
def smtpd_ssl_context() -> ssl.SSLContext:
    """A client SSL context that trusts the TLS test servers of this process."""
    from aiosmtpd.testing import MissingExtraError, certificates

    try:
        return certificates().client_context()
    except MissingExtraError as error:
        missing = error
    _missing_extra(missing)


@pytest.fixture
async def async_smtpd(
    request: pytest.FixtureRequest, smtpd_config: ServerConfig
) -> AsyncIterator[AsyncSMTPTestServer]:
    """An SMTP server in the test's own event loop (no thread).

    For ``async def`` tests run by pytest-asyncio or by anyio's plugin (with
    the asyncio backend).
    """
    import asyncio

    from aiosmtpd.testing import AsyncSMTPTestServer, MissingExtraError

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pytest.fail("async_smtpd needs an asyncio event loop (anyio: use the asyncio backend)",
                    pytrace=False)
    try:
        server = AsyncSMTPTestServer(_config_for(request, smtpd_config))
    except MissingExtraError as error:
        missing = error
        server = None
    if server is None:
        _missing_extra(missing)
    await server.start()
    _remember(request, server)
    try:
        yield server
    finally:
        await server.stop()


# pytest-asyncio in its default (strict) mode runs only the async fixtures it
# was told about; anyio runs any async fixture of a test that uses it.  So
# async_smtpd is a plain async fixture, handed to pytest-asyncio only when
# anyio is not the one running the test.
def _asyncio_fixture(func: Any) -> Any:
    async def asyncio_fixture(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async for value in func(*args, **kwargs):
            yield value

    asyncio_fixture.__signature__ = inspect.signature(func)  # type: ignore[attr-defined]
    # pytest-asyncio's own marker for the fixtures it should run.
    asyncio_fixture._force_asyncio_fixture = True  # type: ignore[attr-defined]
    asyncio_fixture._loop_scope = None  # type: ignore[attr-defined]
    return asyncio_fixture


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_fixture_setup(
    fixturedef: Any, request: pytest.FixtureRequest
) -> Generator[None, Any, None]:
    if fixturedef.argname != "async_smtpd" or getattr(
        fixturedef.func, "__module__", None
    ) != __name__:
        yield
        return
    if not inspect.iscoroutinefunction(getattr(request, "function", None)):
        pytest.fail(
            "async_smtpd serves from the test's own event loop, so only an "
            "'async def' test can use it; a plain test wants the smtpd fixture",
            pytrace=False,
        )
    if "anyio_backend" in request.fixturenames:
        yield
        return
    if not request.config.pluginmanager.has_plugin("asyncio"):
        pytest.fail(
            "async_smtpd needs an async test runner: install pytest-asyncio "
            "(and mark the test with @pytest.mark.asyncio) or use anyio's "
            "plugin (@pytest.mark.anyio)",
            pytrace=False,
        )
    original = fixturedef.func
    fixturedef.func = _asyncio_fixture(original)
    try:
        yield
    finally:
        fixturedef.func = original
