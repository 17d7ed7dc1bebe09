"""Our plugin next to smtpdfix's, which also defines a fixture named ``smtpd``.

smtpdfix depends on aiosmtpd, so its users have both plugins once they
install this aiosmtpd. Whatever order the plugins load in: ``smtpd`` is
smtpdfix's (its users see no change, not even a warning), ours is
``aiosmtpd_server``, and a test that configures ``smtpd`` the way only ours
understands fails with an explanation instead of being silently ignored.

smtpdfix is in the test extra (pinned: 0.5.3 depends on any aiosmtpd, so pip
keeps ours); without it these tests skip.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

pytest.importorskip(
    "smtpdfix",
    reason="smtpdfix is not installed: python3 -m pip install -e '.[test]' brings it",
)

pytest_plugins = ["pytester"]

# Not QUIET of tests/test_plugin.py, which switches smtpdfix off; -W error
# shows any warning we would add to smtpdfix's users' runs (pytest-benchmark,
# where installed, warns in xdist workers).
ARGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark",
        "-p", "no:asyncio", "-W", "error")

# The plugins by module, for runs that load them in a chosen order.
SMTPDFIX = "smtpdfix.fixture"
OURS = "aiosmtpd.testing.plugin"

BOTH = """
    import smtplib

    def test_smtpd_is_smtpdfix(smtpd):
        assert type(smtpd).__module__.startswith("smtpdfix."), type(smtpd)
        with smtplib.SMTP(smtpd.hostname, smtpd.port) as client:
            client.sendmail("a@example.org", ["b@example.org"], "Subject: fix\\r\\n\\r\\nx\\r\\n")
        assert [m["Subject"] for m in smtpd.messages] == ["fix"]

    def test_ours_under_its_own_name(aiosmtpd_server):
        assert type(aiosmtpd_server).__module__ == "aiosmtpd.testing._server"
        with aiosmtpd_server.client() as client:
            client.sendmail("a@example.org", ["b@example.org"], "Subject: ours\\r\\n\\r\\nx\\r\\n")
        assert aiosmtpd_server.messages[0].subject == "ours"
        assert "C: QUIT" in str(aiosmtpd_server.transcript)

    def test_our_other_fixtures_are_untouched(smtpd_factory, smtpd_config):
        server = smtpd_factory(server_hostname="other.test")
        with server.client() as client:
            assert client.ehlo("me")[1].startswith(b"other.test")
"""


@pytest.fixture(autouse=True)
def _isolate() -> Iterator[None]:
    # With -W error, garbage an earlier test of this process left (an
    # unclosed socket) must not be collected, and reported, in the run.
    gc.collect()
    # smtpdfix's fixture stores the path of its certificate in os.environ,
    # which in-process runs share with this process.
    saved = os.environ.copy()
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_smtpd_stays_smtpdfix_with_the_installed_plugins(pytester: pytest.Pytester) -> None:
    # Both loaded by their entry points, as for any user who has both.
    pytester.makepyfile(BOTH)
    result = pytester.runpytest(*ARGS)
    result.assert_outcomes(passed=3, warnings=0)
    result.stdout.no_fnmatch_line("aiosmtpd: *")  # nothing to see at this verbosity


@pytest.mark.parametrize("order", [(SMTPDFIX, OURS), (OURS, SMTPDFIX)], ids=["fix-first",
                                                                              "ours-first"])
def test_smtpd_stays_smtpdfix_whatever_the_load_order(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, order: tuple[str, str]
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(BOTH)
    first, second = order
    result = pytester.runpytest(*ARGS, "-p", first, "-p", second)
    result.assert_outcomes(passed=3, warnings=0)


def test_smtpd_stays_smtpdfix_when_a_conftest_loads_it(pytester: pytest.Pytester) -> None:
    # As smtpdfix's users without plugin autoloading do (registered under
    # the name "smtpdfix" then, not "smtpd").
    pytester.makeconftest('pytest_plugins = ["smtpdfix"]')
    pytester.makepyfile(BOTH)
    result = pytester.runpytest(*ARGS, "-p", "no:smtpd", "-v")
    result.assert_outcomes(passed=3, warnings=0)
    result.stdout.fnmatch_lines([
        "aiosmtpd: smtpd is smtpdfix's fixture (plugin 'smtpdfix'); aiosmtpd's is aiosmtpd_server"
    ])


def test_verbose_header_tells_whose_smtpd_it_is(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*ARGS, "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "aiosmtpd: smtpd is smtpdfix's fixture (plugin 'smtpd'); aiosmtpd's is aiosmtpd_server"
    ])


def test_switching_smtpdfix_off_gives_smtpd_back_to_us(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_ours(smtpd):
            assert type(smtpd).__module__ == "aiosmtpd.testing._server"
            assert smtpd.transcript is not None
    """)
    result = pytester.runpytest(*ARGS, "-p", "no:smtpd", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("aiosmtpd: *")


def test_configuring_smtpdfix_smtpd_as_ours_fails_with_an_explanation(
    pytester: pytest.Pytester,
) -> None:
    # smtpdfix's fixture would ignore both: the tests were written for ours.
    pytester.makepyfile("""
        import pytest

        @pytest.mark.smtpd(tls="implicit")
        def test_marker(smtpd):
            pass

        @pytest.mark.parametrize("smtpd", [{"tls": "implicit"}], indirect=True)
        def test_parameters(smtpd):
            pass

        @pytest.mark.smtpd
        def test_bare_marker_is_not_configuration(smtpd):
            assert type(smtpd).__module__.startswith("smtpdfix.")
    """)
    result = pytester.runpytest(*ARGS)
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines([
        "*this test configures aiosmtpd's smtpd with @pytest.mark.smtpd options, but smtpd is"
        " smtpdfix's fixture here*ask for aiosmtpd_server instead, or switch smtpdfix off"
        " with -p no:smtpd",
        "*this test configures aiosmtpd's smtpd with indirect parameters*",
    ])
