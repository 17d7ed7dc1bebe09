"""The pytest plugin: SMTP servers as fixtures for tests of mail-sending code.

pytest loads this module through the ``pytest11`` entry point of aiosmtpd.
It only defines fixtures, a marker and a few hooks: nothing runs, and
nothing beyond pytest itself is imported, until a test asks for one of the
fixtures.

Configuration, weakest first: the defaults, the ``AIOSMTPD_TEST_*``
environment variables, ``@pytest.mark.smtpd(...)`` markers (the closest
wins), and indirect parametrization of the fixture itself.

The name ``smtpd`` is also the fixture of smtpdfix, another plugin, which
depends on aiosmtpd and so is often installed next to it.  Where smtpdfix's
plugin is active, ``smtpd`` stays smtpdfix's whatever the order the plugins
load in (its users must see no change), and ours is ``aiosmtpd_server``, a
name it always has.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, NoReturn, Optional

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


#: The name smtpdfix's plugin is registered under, when it is.
_SMTPDFIX = pytest.StashKey[str]()

#: What ``smtpd`` is registered under when it is ours.
_SMTPD_PLUGIN_NAME = "aiosmtpd-smtpd"


def _smtpdfix_plugin(config: pytest.Config) -> Optional[str]:
    """The name of smtpdfix's plugin if it is registered (by its entry point,
    ``-p`` or ``pytest_plugins``), else None."""
    for name, plugin in config.pluginmanager.list_name_plugin():
        module = getattr(plugin, "__name__", None)
        if isinstance(module, str) and module.partition(".")[0] == "smtpdfix":
            return name
    return None


def _is_smtpdfix(func: Any) -> bool:
    return str(getattr(func, "__module__", "")).partition(".")[0] == "smtpdfix"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    # Entry points, -p plugins and the root conftest's pytest_plugins are all
    # registered by now.  If smtpdfix is one of them, its smtpd is the only
    # one; if it came later still, the later registration wins anyway.
    other = _smtpdfix_plugin(config)
    if other is not None:
        config.stash[_SMTPDFIX] = other
        return
    from aiosmtpd.testing import _smtpd_name

    if not config.pluginmanager.is_registered(_smtpd_name):
        config.pluginmanager.register(_smtpd_name, _SMTPD_PLUGIN_NAME)


def pytest_report_header(config: pytest.Config) -> Optional[str]:
    other = config.stash.get(_SMTPDFIX, None)
    if other is None or config.getoption("verbose", 0) <= 0:
        return None
    return (f"aiosmtpd: smtpd is smtpdfix's fixture (plugin {other!r}); "
            "aiosmtpd's is aiosmtpd_server")


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


def _plain_server(
    request: pytest.FixtureRequest, smtpd_config: ServerConfig
) -> Iterator[SMTPTestServer]:
    """A threaded SMTP server on a free port that captures every message.

    Named ``smtpd``, unless smtpdfix is installed (its ``smtpd`` wins), and
    ``aiosmtpd_server`` always.
    """
    yield from _serve(request, _config_for(request, smtpd_config))


# The short name is registered from aiosmtpd.testing._smtpd_name, and only
# when smtpdfix is not there (pytest_configure); this one is always ours.
aiosmtpd_server = pytest.fixture(name="aiosmtpd_server")(_plain_server)


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


async def _async_smtpd(
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


# pytest-asyncio, in its default (strict) mode, runs only the async fixtures
# declared with @pytest_asyncio.fixture, and warns (an error under -W error)
# when an asyncio test asks for another one.  So async_smtpd is declared the
# same way, by the attributes that decorator sets, without importing it.
# anyio's plugin runs every async fixture of its tests by itself: for those,
# pytest_fixture_setup hands over an undeclared copy instead.
_async_smtpd.__dict__.update(_force_asyncio_fixture=True, _loop_scope=None)
async_smtpd = pytest.fixture(name="async_smtpd")(_async_smtpd)


def _undeclared(func: Any) -> Any:
    """``func`` without pytest-asyncio's declaration, for anyio to run."""
    accepted = set(inspect.signature(func).parameters)

    async def anyio_fixture(**kwargs: Any) -> AsyncIterator[Any]:
        # Older pytest-asyncio releases add their event_loop fixture to the
        # arguments of the fixtures declared to them.
        generator = func(**{name: kwargs[name] for name in accepted & set(kwargs)})
        try:
            async for value in generator:
                yield value
        finally:
            await generator.aclose()

    anyio_fixture.__signature__ = inspect.signature(func)  # type: ignore[attr-defined]
    return anyio_fixture


def _configures_our_server(request: pytest.FixtureRequest) -> Optional[str]:
    """How the test configures aiosmtpd's server, if it does."""
    if isinstance(getattr(request, "param", None), dict):
        return "indirect parameters"
    for mark in request.node.iter_markers("smtpd"):
        if mark.args or mark.kwargs:
            return "@pytest.mark.smtpd options"
    return None


def _failing(message: str) -> Callable[..., NoReturn]:
    """A fixture function that fails the test's setup with ``message``.

    Failing from inside the fixture, not from the hook around it, lets
    pytest record the failure and tear down as for any fixture that failed.
    """

    def fail(**kwargs: Any) -> NoReturn:
        pytest.fail(message, pytrace=False)

    return fail


def _replacement(fixturedef: Any, request: pytest.FixtureRequest) -> Any:
    """What runs instead of ``fixturedef.func`` for this request, if anything."""
    if fixturedef.argname == "smtpd" and _is_smtpdfix(fixturedef.func):
        # smtpdfix's fixture would ignore them: the test was written for ours.
        how = _configures_our_server(request)
        if how is None:
            return None
        other = request.config.stash.get(_SMTPDFIX, "smtpd")
        return _failing(
            f"this test configures aiosmtpd's smtpd with {how}, but smtpd is "
            f"smtpdfix's fixture here (smtpdfix is installed and keeps that name); "
            f"ask for aiosmtpd_server instead, or switch smtpdfix off with -p no:{other}"
        )
    # Older pytest-asyncio releases replace the fixture functions declared
    # to them with wrappers once and for all, at collection.
    if fixturedef.argname != "async_smtpd" or _async_smtpd not in (
        fixturedef.func, getattr(fixturedef.func, "__wrapped__", None)
    ):
        return None
    if not inspect.iscoroutinefunction(getattr(request, "function", None)):
        return _failing(
            "async_smtpd serves from the test's own event loop, so only an "
            "'async def' test can use it; a plain test wants the smtpd fixture"
        )
    if "anyio_backend" in request.fixturenames:
        return _undeclared(_async_smtpd)
    if not request.config.pluginmanager.has_plugin("asyncio"):
        return _failing(
            "async_smtpd needs an async test runner: install pytest-asyncio "
            "(and mark the test with @pytest.mark.asyncio) or use anyio's "
            "plugin (@pytest.mark.anyio)"
        )
    return None  # pytest-asyncio runs it, as declared


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_fixture_setup(
    fixturedef: Any, request: pytest.FixtureRequest
) -> Generator[None, Any, None]:
    # Outermost (tryfirst): the other plugins' wrappers, anyio's and
    # pytest-asyncio's, see the replacement.
    replacement = _replacement(fixturedef, request)
    if replacement is None:
        yield
        return
    original = fixturedef.func
    fixturedef.func = replacement
    try:
        yield
    finally:
        fixturedef.func = original
