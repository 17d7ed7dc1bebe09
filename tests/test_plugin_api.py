"""The building blocks of the pytest plugin, without pytest in between."""

from __future__ import annotations

import smtplib

import pytest

from aiosmtpd.testing import Fault, FaultPlan, ServerConfig, SMTPTestServer
from aiosmtpd.testing._transcript import MASK, client_line


def test_config_from_env_reads_every_variable() -> None:
    config = ServerConfig.from_env({
        "AIOSMTPD_TEST_HOST": "::1",
        "AIOSMTPD_TEST_PORT": "2525",
        "AIOSMTPD_TEST_TLS": "smtps",
        "AIOSMTPD_TEST_LOGIN": "me",
        "AIOSMTPD_TEST_PASSWORD": "pw",
        "AIOSMTPD_TEST_AUTH_REQUIRED": "on",
        "AIOSMTPD_TEST_REQUIRE_STARTTLS": "0",
        "AIOSMTPD_TEST_SIZE_LIMIT": "0",
        "UNRELATED": "x",
    })
    assert (config.host, config.port, config.tls) == ("::1", 2525, "implicit")
    assert config.credentials == {"me": "pw"}
    assert config.auth_required and not config.require_starttls
    assert config.data_size_limit is None
    assert config.effective_auth_require_tls


def test_config_defaults_and_errors() -> None:
    config = ServerConfig.from_env({})
    assert config == ServerConfig()
    assert (config.host, config.port, config.tls, config.credentials) == ("127.0.0.1", 0, "off", {})
    assert not config.effective_auth_require_tls
    assert config.evolve(tls=True).tls == "starttls"
    assert config.evolve(password="pw").credentials == {"user": "pw"}
    with pytest.raises(ValueError, match="tls must be one of"):
        config.evolve(tls="sometimes")
    with pytest.raises(TypeError, match="unknown smtpd option"):
        config.evolve(hostname="x")
    with pytest.raises(TypeError, match="Fault objects"):
        config.evolve(faults=[("RCPT", "550")])


def test_fault_matching_and_counting() -> None:
    once = Fault.reply("rcpt", "550 5.1.1 No", match=r"^<bob@", times=1)
    always = Fault.delay("RCPT", 0.5)
    assert once.command == "RCPT"
    plan = FaultPlan([once, always])
    assert plan.covers("RCPT") and not plan.covers("MAIL")
    # The regex wants "<bob@" at the start; the delay matches anything.
    assert plan.take("RCPT", "TO:<bob@example.org>") is always
    assert plan.take("RCPT", "<BOB@example.org>") is once  # case-insensitive
    assert plan.take("RCPT", "<bob@example.org>") is always  # once was used up
    assert plan.take("MAIL", "<bob@example.org>") is None
    plan.clear()
    assert plan.faults == [] and not plan.covers("RCPT")
    assert Fault.reply("CONNECT", "421 4.3.2 Busy").close
    assert Fault.disconnect("DATA", reset=True).describe() == "fault at DATA, reset"


def test_client_lines_are_masked_in_auth_exchanges() -> None:
    assert client_line(b"AUTH PLAIN AGEAYg==", False) == "AUTH PLAIN ********"
    assert client_line(b"auth login dXNlcg==", False) == "auth login ********"
    assert client_line(b"dXNlcg==", True) == MASK
    assert client_line(b"*", True) == "*"
    assert client_line(b"MAIL FROM:<a@example.org>", False) == "MAIL FROM:<a@example.org>"


def test_server_without_pytest_and_twice_stopped() -> None:
    server = SMTPTestServer(server_hostname="mx.test")
    assert not server.running
    with server:
        assert server.running
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
        with smtplib.SMTP(server.hostname, server.port) as client:
            assert client.ehlo("me")[1].startswith(b"mx.test")
            assert not client.has_extn("auth")  # no credentials, no AUTH
        with pytest.raises(AttributeError, match="no AUTH credentials"):
            server.login  # noqa: B018
    server.stop()
    assert not server.running
