"""The pytest plugin (aiosmtpd.testing.plugin), tested the way users use it.

Every test writes a small test module, runs it with ``pytester`` and checks
the outcome; the inner tests talk to the fixtures' servers with real clients
(smtplib, aiosmtplib) over loopback.
"""

from __future__ import annotations

import gc
import socket
import threading

import pytest

import aiosmtpd.testing._server  # noqa: F401
from aiosmtpd.testing import MissingExtraError, certificates

pytest_plugins = ["pytester"]

# In-process runs drop the modules they imported when they end; cryptography
# (under trustme) cannot be imported twice in one process, so it is imported
# here, once, outside of them.
try:
    certificates()
except MissingExtraError:  # pragma: no cover - the TLS tests will say so
    pass

# Hypothesis's plugin costs seconds per in-process run and is not needed
# here; pytest-benchmark's, where installed, warns in xdist workers (the
# runs with -W error must see only the warnings under test); smtpdfix's
# plugin ("smtpd", in the test extra) would take the smtpd fixture, see
# tests/test_plugin_smtpdfix.py; pytest-asyncio is turned on only where it
# is tested (not with "-p asyncio": that name is also the standard library's
# module, and pytest warns that it cannot rewrite it).
BASE = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark",
        "-p", "no:smtpd")
QUIET = (*BASE, "-p", "no:asyncio")


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = int(_has_ipv6())


def run(
    pytester: pytest.Pytester, source: str, *args: str, quiet: tuple[str, ...] = QUIET,
    **outcomes: int,
) -> pytest.RunResult:
    pytester.makepyfile(source)
    if "error" in args:
        # With -W error, garbage an earlier test of this process left (an
        # unclosed socket) must not be collected, and reported, in the run.
        gc.collect()
    result = pytester.runpytest(*quiet, *args)
    result.assert_outcomes(**outcomes)
    return result


# -- smtpd: the plain fixture ------------------------------------------------------


def test_smtpd_captures_parsed_messages_with_their_envelope(pytester: pytest.Pytester) -> None:
    run(pytester, """
        import smtplib
        from email.message import EmailMessage

        def test_capture(smtpd):
            assert smtpd.hostname == "127.0.0.1" and smtpd.port > 0
            with smtplib.SMTP(smtpd.hostname, smtpd.port) as client:
                local = client.sock.getsockname()
                client.sendmail("alice@example.org", ["bob@example.org", "carol@example.org"],
                                "Subject: hello\\r\\nTo: bob@example.org\\r\\n\\r\\n.dot\\r\\n")
            [captured] = smtpd.messages
            assert isinstance(captured.message, EmailMessage)
            assert captured["Subject"] == "hello"
            assert captured.mail_from == "alice@example.org"
            assert captured.rcpt_tos == ("bob@example.org", "carol@example.org")
            assert captured.peer[:2] == local[:2]
            assert captured.raw.endswith(b"\\r\\n\\r\\n.dot\\r\\n")
            assert captured.body() == ".dot\\n"
            assert not captured.tls and captured.login is None

        def test_clear_forgets_messages_and_transcript(smtpd):
            with smtpd.client() as client:
                client.sendmail("a@example.org", ["b@example.org"], "Subject: x\\r\\n\\r\\nx\\r\\n")
            assert len(smtpd.messages) == 1 and len(smtpd.transcript) > 0
            smtpd.clear()
            assert smtpd.messages == [] and len(smtpd.transcript) == 0
            with smtpd.client() as client:
                client.sendmail("a@example.org", ["b@example.org"], "Subject: y\\r\\n\\r\\ny\\r\\n")
            assert [m.subject for m in smtpd.messages] == ["y"]

        def test_each_server_gets_its_own_free_port(smtpd, smtpd_factory):
            other = smtpd_factory()
            assert other.port not in (0, smtpd.port)
    """, passed=3)


def test_transcript_records_commands_and_replies_with_auth_secrets_masked(
    pytester: pytest.Pytester,
) -> None:
    run(pytester, """
        import base64
        import pytest

        @pytest.mark.smtpd(login="alice", password="s3cr3t-pw")
        def test_transcript(smtpd):
            with smtpd.client() as client:
                client.ehlo("client.example.org")
                client.user, client.password = "alice", "s3cr3t-pw"
                assert client.auth("LOGIN", client.auth_login, initial_response_ok=False)[0] == 235
                client.rset()
            with smtpd.client() as client:
                client.ehlo("client.example.org")
                client.login("alice", "s3cr3t-pw")  # AUTH PLAIN <initial response>
                client.sendmail("alice@example.org", ["bob@example.org"],
                                "Subject: t\\r\\n\\r\\nt\\r\\n")
            transcript = smtpd.transcript
            assert transcript.connections == 2
            first = transcript.connection(1)
            assert first.commands[:2] == ["ehlo client.example.org", "AUTH LOGIN"]
            assert first.commands[2:4] == ["********", "********"]  # user name, password
            assert first.replies[0].startswith("220 ")
            assert "250-AUTH LOGIN PLAIN" in first.replies
            assert "334 VXNlciBOYW1lAA==" in first.replies
            second = transcript.connection(2)
            assert "AUTH PLAIN ********" in second.commands
            assert "message data (17 bytes)" in second.events
            text = str(transcript)
            secrets = [b"s3cr3t-pw", b"alice\\0s3cr3t-pw", b"\\0alice\\0s3cr3t-pw"]
            for secret in secrets:
                assert secret.decode() not in text
                assert base64.b64encode(secret).decode() not in text
            assert "C: QUIT" in text and "S: 221 Bye" in text
    """, passed=1)


# -- TLS and AUTH variants ---------------------------------------------------------


def test_starttls_fixture_with_a_verifying_client_context(pytester: pytest.Pytester) -> None:
    run(pytester, """
        import smtplib
        import ssl

        def test_starttls(smtpd_starttls, smtpd_ssl_context):
            assert smtpd_ssl_context.verify_mode == ssl.CERT_REQUIRED
            assert smtpd_ssl_context.check_hostname
            with smtplib.SMTP(smtpd_starttls.hostname, smtpd_starttls.port) as client:
                client.starttls(context=smtpd_ssl_context)
                client.sendmail("a@example.org", ["b@example.org"], "Subject: s\\r\\n\\r\\ns\\r\\n")
            assert smtpd_starttls.messages[0].tls
            assert "TLS (STARTTLS)" in smtpd_starttls.transcript.events

        def test_untrusting_client_is_refused(smtpd_starttls):
            with smtplib.SMTP(smtpd_starttls.hostname, smtpd_starttls.port) as client:
                try:
                    client.starttls(context=ssl.create_default_context())
                except ssl.SSLCertVerificationError:
                    return
            raise AssertionError("a client without the test CA trusted the server")

        def test_require_starttls(smtpd_factory, smtpd_ssl_context):
            server = smtpd_factory(tls="starttls", require_starttls=True)
            with server.client() as client:
                client.ehlo("me")
                assert client.mail("a@example.org")[0] == 530
                client.starttls(context=smtpd_ssl_context)
                client.sendmail("a@example.org", ["b@example.org"], "Subject: r\\r\\n\\r\\nr\\r\\n")
            assert len(server.messages) == 1
    """, passed=3)


def test_implicit_tls_fixture(pytester: pytest.Pytester) -> None:
    run(pytester, """
        import smtplib
        import pytest

        def test_smtps(smtpd_tls):
            with smtplib.SMTP_SSL(smtpd_tls.hostname, smtpd_tls.port,
                                  context=smtpd_tls.client_context) as client:
                client.sendmail("a@example.org", ["b@example.org"], "Subject: i\\r\\n\\r\\ni\\r\\n")
            [captured] = smtpd_tls.messages
            assert captured.tls and captured.subject == "i"
            assert "TLS (implicit)" in smtpd_tls.transcript.events

        def test_plain_client_gets_nothing_useful(smtpd_tls):
            with socket_to(smtpd_tls) as sock:
                sock.sendall(b"EHLO me\\r\\n")
                assert not sock.recv(1024).startswith(b"220")

        def test_ipv6(smtpd_factory):
            import socket
            try:
                socket.socket(socket.AF_INET6).bind(("::1", 0))
            except OSError:
                pytest.skip("no IPv6 loopback")
            server = smtpd_factory(host="::1", tls="implicit")
            assert server.hostname == "::1"
            with server.client() as client:  # verifies the certificate for ::1
                client.sendmail("a@example.org", ["b@example.org"], "Subject: 6\\r\\n\\r\\n6\\r\\n")
            assert server.messages[0].peer[0] == "::1"

        def socket_to(server):
            import socket
            return socket.create_connection((server.hostname, server.port), timeout=10)
    """, passed=2 + HAS_IPV6, skipped=1 - HAS_IPV6)


def test_auth_fixture_requires_the_configured_credentials(pytester: pytest.Pytester) -> None:
    run(pytester, """
        import smtplib
        import pytest

        def test_auth(smtpd_auth):
            with smtpd_auth.client() as client:
                client.ehlo("me")
                assert client.has_extn("auth")
                assert client.mail("a@example.org")[0] == 530
                with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
                    client.login(smtpd_auth.login, "wrong")
                assert failed.value.smtp_code == 535
                client.login(smtpd_auth.login, smtpd_auth.password)
                client.sendmail("a@example.org", ["b@example.org"], "Subject: a\\r\\n\\r\\na\\r\\n")
            assert smtpd_auth.messages[0].login == smtpd_auth.login == "user"

        @pytest.mark.smtpd(credentials={"ann": "pw1", "bob": "pw2"})
        def test_several_accounts(smtpd_auth):
            for login, password in smtpd_auth.credentials.items():
                with smtpd_auth.client() as client:
                    client.login(login, password)
                    client.sendmail("a@example.org", ["b@example.org"],
                                    "Subject: a\\r\\n\\r\\na\\r\\n")
            assert [m.login for m in smtpd_auth.messages] == ["ann", "bob"]

        @pytest.mark.smtpd(tls="starttls", login="tls-user", password="pw")
        def test_auth_over_starttls_only(smtpd_auth):
            with smtpd_auth.client() as client:
                client.ehlo("me")
                assert not client.has_extn("auth")
                client.starttls(context=smtpd_auth.client_context)
                client.login("tls-user", "pw")
                client.sendmail("a@example.org", ["b@example.org"], "Subject: a\\r\\n\\r\\na\\r\\n")
            assert smtpd_auth.messages[0].tls
    """, passed=3)


# -- The async variant ---------------------------------------------------------------


ASYNC_TEST = """
    import asyncio
    import threading
    import aiosmtplib
    import pytest

    MESSAGE = "From: a@example.org\\r\\nTo: b@example.org\\r\\nSubject: async\\r\\n\\r\\nhi\\r\\n"

    @MARK
    async def test_async(async_smtpd):
        await aiosmtplib.send(MESSAGE, sender="a@example.org", recipients=["b@example.org"],
                              hostname=async_smtpd.hostname, port=async_smtpd.port)
        [captured] = async_smtpd.messages
        assert captured.subject == "async" and captured.rcpt_tos == ("b@example.org",)
        # No server thread: the connections ran on the test's own loop.
        assert not [t for t in threading.enumerate() if t.name.endswith("(_run)")]
        assert async_smtpd.loop is asyncio.get_running_loop()

    @MARK
    async def test_async_stop_does_not_wait_for_a_delayed_reply(async_smtpd):
        from aiosmtpd.testing import Fault

        async_smtpd.inject(Fault.delay("MAIL", 3600))
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await aiosmtplib.send(MESSAGE, sender="a@example.org", recipients=["b@example.org"],
                                  hostname=async_smtpd.hostname, port=async_smtpd.port,
                                  timeout=0.5)
        assert "fault at MAIL, delay 3600s" in async_smtpd.transcript.events

    @MARK
    @pytest.mark.parametrize("async_smtpd", [{"tls": "implicit"}], indirect=True)
    async def test_async_tls(async_smtpd):
        await aiosmtplib.send(MESSAGE, sender="a@example.org", recipients=["b@example.org"],
                              hostname=async_smtpd.hostname, port=async_smtpd.port, use_tls=True,
                              tls_context=async_smtpd.client_context)
        assert async_smtpd.messages[0].tls
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_async_fixture_with_pytest_asyncio(pytester: pytest.Pytester, mode: str) -> None:
    pytest.importorskip("pytest_asyncio")
    pytest.importorskip("aiosmtplib")
    # In strict mode, pytest-asyncio's default, it runs only the async
    # fixtures declared to it, and warns about the others: -W error makes
    # that warning fail the tests.
    run(pytester, ASYNC_TEST.replace("MARK", "pytest.mark.asyncio"),
        "-o", f"asyncio_mode={mode}", "-o", "asyncio_default_fixture_loop_scope=function",
        "-W", "error", quiet=BASE, passed=3, warnings=0)


def test_async_fixture_with_anyio(pytester: pytest.Pytester) -> None:
    pytest.importorskip("anyio")
    pytest.importorskip("aiosmtplib")
    source = ASYNC_TEST.replace("MARK", "pytest.mark.anyio") + """
    @pytest.fixture
    def anyio_backend():
        return "asyncio"
    """
    run(pytester, source, "-p", "anyio", "-W", "error", passed=3, warnings=0)


def test_async_fixture_with_anyio_and_pytest_asyncio_strict(pytester: pytest.Pytester) -> None:
    # Both plugins active (the test extra has both): pytest-asyncio (strict)
    # must leave the anyio tests' fixture to anyio, and run its own tests'.
    pytest.importorskip("anyio")
    pytest.importorskip("pytest_asyncio")
    pytest.importorskip("aiosmtplib")
    source = ASYNC_TEST.replace("MARK", "pytest.mark.anyio") + """
    @pytest.fixture
    def anyio_backend():
        return "asyncio"

    @pytest.mark.asyncio
    async def test_asyncio_too(async_smtpd):
        await aiosmtplib.send(MESSAGE, sender="a@example.org", recipients=["b@example.org"],
                              hostname=async_smtpd.hostname, port=async_smtpd.port)
        assert async_smtpd.loop is asyncio.get_running_loop()
        assert len(async_smtpd.messages) == 1
    """
    run(pytester, source, "-p", "anyio", "-o", "asyncio_mode=strict",
        "-o", "asyncio_default_fixture_loop_scope=function", "-W", "error",
        quiet=BASE, passed=4, warnings=0)


def test_async_fixture_in_a_plain_test_fails_clearly(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
        def test_sync(async_smtpd):
            pass
    """, errors=1)
    result.stdout.fnmatch_lines(["*only an 'async def' test can use it*"])


# -- Configuration ------------------------------------------------------------------


def test_markers_configure_the_server_and_the_closest_wins(pytester: pytest.Pytester) -> None:
    run(pytester, """
        import smtplib
        import pytest

        pytestmark = pytest.mark.smtpd(data_size_limit=2000, server_hostname="mx.test")

        @pytest.mark.smtpd(data_size_limit=100)
        def test_size_limit(smtpd):
            with smtpd.client() as client:
                assert client.ehlo("me")[1].startswith(b"mx.test")
                assert client.esmtp_features["size"] == "100"
                with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                    client.sendmail("a@example.org", ["b@example.org"], "x" * 200)
                assert refused.value.smtp_code == 552
            assert smtpd.messages == []

        def test_module_marker(smtpd):
            with smtpd.client() as client:
                client.ehlo("me")
                assert client.esmtp_features["size"] == "2000"

        @pytest.mark.smtpd(no_such_option=1)
        def test_unknown_option(smtpd):
            pass
    """, passed=2, errors=1).stdout.fnmatch_lines(["*unknown smtpd option(s): no_such_option*"])


def test_indirect_parametrization(pytester: pytest.Pytester) -> None:
    run(pytester, """
        import pytest

        @pytest.mark.parametrize(
            "smtpd", [{"tls": "off"}, {"tls": "starttls"}, {"tls": "implicit"}], indirect=True
        )
        def test_modes(smtpd):
            with smtpd.client() as client:
                if smtpd.tls == "starttls":
                    client.starttls(context=smtpd.client_context)
                client.sendmail("a@example.org", ["b@example.org"], "Subject: m\\r\\n\\r\\nm\\r\\n")
            assert smtpd.messages[0].tls == (smtpd.tls != "off")
    """, passed=3)


def test_aiosmtpd_server_is_smtpd_under_a_name_of_its_own(pytester: pytest.Pytester) -> None:
    # The name no other plugin uses (smtpd is smtpdfix's when it is installed):
    # the same fixture, configured the same ways.
    run(pytester, """
        import pytest

        def test_same_fixture(smtpd, aiosmtpd_server):
            assert type(smtpd) is type(aiosmtpd_server)
            assert smtpd.port != aiosmtpd_server.port

        @pytest.mark.smtpd(server_hostname="mx.test")
        @pytest.mark.parametrize("aiosmtpd_server", [{"tls": "implicit"}], indirect=True)
        def test_configured(aiosmtpd_server):
            assert aiosmtpd_server.tls == "implicit"
            with aiosmtpd_server.client() as client:
                assert client.ehlo("me")[1].startswith(b"mx.test")
                client.sendmail("a@example.org", ["b@example.org"], "Subject: s\\r\\n\\r\\ns\\r\\n")
            assert aiosmtpd_server.messages[0].tls
            assert "C: QUIT" in str(aiosmtpd_server.transcript)
    """, "-v", passed=2).stdout.no_fnmatch_line("aiosmtpd: *")


def test_environment_variables(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOSMTPD_TEST_TLS", "starttls")
    monkeypatch.setenv("AIOSMTPD_TEST_LOGIN", "env-user")
    monkeypatch.setenv("AIOSMTPD_TEST_PASSWORD", "env-pw")
    monkeypatch.setenv("AIOSMTPD_TEST_SIZE_LIMIT", "4096")
    monkeypatch.setenv("AIOSMTPD_TEST_AUTH_REQUIRED", "yes")
    run(pytester, """
        import pytest

        def test_from_env(smtpd):
            assert smtpd.tls == "starttls"
            with smtpd.client() as client:
                client.starttls(context=smtpd.client_context)
                client.ehlo("me")
                assert client.esmtp_features["size"] == "4096"
                assert client.mail("a@example.org")[0] == 530
                client.login("env-user", "env-pw")
                client.sendmail("a@example.org", ["b@example.org"], "Subject: e\\r\\n\\r\\ne\\r\\n")
            assert smtpd.messages[0].login == "env-user"

        @pytest.mark.smtpd(tls="off", auth_required=False)
        def test_marker_beats_env(smtpd):
            assert smtpd.tls == "off"
    """, passed=2)


# -- Faults -------------------------------------------------------------------------


def test_fault_reply_to_one_recipient(pytester: pytest.Pytester) -> None:
    run(pytester, """
        import pytest
        from aiosmtpd.testing import Fault

        @pytest.mark.smtpd(faults=[Fault.reply("RCPT", "550 5.1.1 No such user", match="bad@")])
        def test_550(smtpd):
            with smtpd.client() as client:
                refused = client.sendmail("a@example.org", ["good@example.org", "bad@example.org"],
                                          "Subject: f\\r\\n\\r\\nf\\r\\n")
            assert refused == {"bad@example.org": (550, b"5.1.1 No such user")}
            assert smtpd.messages[0].rcpt_tos == ("good@example.org",)
    """, passed=1)


def test_fault_421_and_close_then_a_retry_succeeds(pytester: pytest.Pytester) -> None:
    run(pytester, """
        import smtplib
        import pytest
        from aiosmtpd.testing import Fault

        def test_421(smtpd):
            smtpd.inject(Fault.reply("MAIL", "421 4.3.2 Shutting down", close=True, times=1))
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                with smtpd.client() as client:
                    client.sendmail("a@example.org", ["b@example.org"],
                                    "Subject: 1\\r\\n\\r\\n1\\r\\n")
            assert refused.value.smtp_code == 421
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.noop()
            with smtpd.client() as client:  # the retry
                client.sendmail("a@example.org", ["b@example.org"], "Subject: 2\\r\\n\\r\\n2\\r\\n")
            assert [m.subject for m in smtpd.messages] == ["2"]
            event = "fault at MAIL, reply '421 4.3.2 Shutting down', close"
            assert event in smtpd.transcript.events
    """, passed=1)


def test_fault_452_on_data_and_451_after_the_message(pytester: pytest.Pytester) -> None:
    # Also: a canned multi-line reply, and a refused STARTTLS.
    run(pytester, """
        import smtplib
        import pytest
        from aiosmtpd.testing import Fault

        @pytest.mark.smtpd(faults=[Fault.reply("DATA", "452 4.3.1 Insufficient storage")])
        def test_452_on_data(smtpd):
            with smtpd.client() as client:
                with pytest.raises(smtplib.SMTPDataError) as failed:
                    client.sendmail("a@example.org", ["b@example.org"],
                                    "Subject: d\\r\\n\\r\\nd\\r\\n")
            assert failed.value.smtp_code == 452
            assert smtpd.messages == []

        @pytest.mark.smtpd(faults=[Fault.reply("EOM", "451 4.3.0 Try again", match="Subject: retry",
                                               times=1)])
        def test_451_at_end_of_message(smtpd):
            with smtpd.client() as client:
                with pytest.raises(smtplib.SMTPDataError) as failed:
                    client.sendmail("a@example.org", ["b@example.org"],
                                    "Subject: retry\\r\\n\\r\\n1\\r\\n")
                assert failed.value.smtp_code == 451
                client.sendmail("a@example.org", ["b@example.org"],
                                "Subject: retry\\r\\n\\r\\n2\\r\\n")
            assert [m.body() for m in smtpd.messages] == ["2\\n"]

        NO_TLS = Fault.reply("STARTTLS", "454 4.7.0 TLS not available")

        @pytest.mark.smtpd(tls="starttls", faults=[NO_TLS])
        def test_starttls_refused(smtpd):
            with smtpd.client() as client:
                with pytest.raises(smtplib.SMTPResponseException) as refused:
                    client.starttls(context=smtpd.client_context)
                assert refused.value.smtp_code == 454
                client.sendmail("a@example.org", ["b@example.org"], "Subject: p\\r\\n\\r\\np\\r\\n")
            assert not smtpd.messages[0].tls

        EHLO = "250-mx.test\\n250-PIPELINING\\n250 8BITMIME"

        @pytest.mark.smtpd(faults=[Fault.reply("EHLO", EHLO)])
        def test_multiline_canned_reply(smtpd):
            with smtpd.client() as client:
                client.ehlo("me")
                assert client.has_extn("pipelining") and not client.has_extn("size")
    """, passed=4)


def test_fault_connect_reply(pytester: pytest.Pytester) -> None:
    run(pytester, """
        import smtplib
        import pytest
        from aiosmtpd.testing import Fault

        @pytest.mark.smtpd(faults=[Fault.reply("CONNECT", "554 5.3.2 No service today", times=1)])
        def test_554_greeting(smtpd):
            with pytest.raises(smtplib.SMTPConnectError) as refused:
                smtpd.client()
            assert refused.value.smtp_code == 554
            with smtpd.client() as client:
                assert client.noop()[0] == 250
    """, passed=1)


def test_fault_delay(pytester: pytest.Pytester) -> None:
    # The delay outlasts the client's timeout: the client must give up, and
    # stopping the server must not wait for the pending reply.
    run(pytester, """
        import socket
        import smtplib
        import pytest
        from aiosmtpd.testing import Fault

        @pytest.mark.smtpd(faults=[Fault.delay("MAIL", 3600)])
        def test_slow_mail(smtpd):
            client = smtpd.client(timeout=0.5)
            with pytest.raises((socket.timeout, smtplib.SMTPServerDisconnected)):
                client.sendmail("a@example.org", ["b@example.org"], "Subject: s\\r\\n\\r\\ns\\r\\n")
            client.close()
            assert "fault at MAIL, delay 3600s" in smtpd.transcript.events

        @pytest.mark.smtpd(faults=[Fault.delay("NOOP", 0.01, times=1)])
        def test_delay_then_normal_reply(smtpd):
            with smtpd.client() as client:
                assert client.noop() == (250, b"OK")
                assert client.noop() == (250, b"OK")
            assert smtpd.transcript.events.count("fault at NOOP, delay 0.01s") == 1
    """, passed=2)


def test_fault_disconnect_at_chosen_points(pytester: pytest.Pytester) -> None:
    run(pytester, """
        import smtplib
        import pytest
        from aiosmtpd.testing import Fault

        SEND = ("a@example.org", ["b@example.org"], "Subject: x\\r\\n\\r\\nx\\r\\n")

        @pytest.mark.parametrize("point", ["CONNECT", "EHLO", "MAIL", "RCPT", "DATA", "EOM"])
        def test_drop(smtpd, point):
            smtpd.inject(Fault.disconnect(point))
            with pytest.raises(smtplib.SMTPServerDisconnected):
                with smtpd.client() as client:
                    client.sendmail(*SEND)
            assert smtpd.messages == []

        def test_reset(smtpd):
            smtpd.inject(Fault.disconnect("RCPT", reset=True))
            client = smtpd.client()
            client.ehlo("me")
            client.mail("a@example.org")
            with pytest.raises((ConnectionResetError, smtplib.SMTPServerDisconnected)) as dropped:
                client.rcpt("b@example.org")
                client.noop()
            client.close()
            assert "fault at RCPT, reset" in smtpd.transcript.events
    """, passed=7)


def test_fault_validation(pytester: pytest.Pytester) -> None:
    run(pytester, """
        import pytest
        from aiosmtpd.testing import Fault

        def test_bad_reply():
            with pytest.raises(ValueError, match="3-digit SMTP code"):
                Fault.reply("RCPT", "no code")

        def test_bad_times():
            with pytest.raises(ValueError, match="at least 1"):
                Fault.reply("RCPT", "550 no", times=0)

        @pytest.mark.smtpd(faults=["550 not a fault"])
        def test_not_a_fault(smtpd):
            pass
    """, passed=2, errors=1)


# -- Lifecycle and isolation -----------------------------------------------------------


def test_a_failing_test_still_stops_its_servers(pytester: pytest.Pytester, tmp_path) -> None:
    record = tmp_path / "servers.txt"
    result = run(pytester, f"""
        import socket
        import threading
        from aiosmtpd.testing import Fault

        def test_fails_with_a_busy_server(request, smtpd, smtpd_tls):
            smtpd.inject(Fault.delay("MAIL", 3600))
            busy = socket.create_connection((smtpd.hostname, smtpd.port))
            busy.sendall(b"EHLO me\\r\\nMAIL FROM:<a@example.org>\\r\\n")
            reader = busy.makefile("rb")
            while not reader.readline().startswith(b"250 "):  # the end of the EHLO reply
                pass
            idle = socket.create_connection((smtpd_tls.hostname, smtpd_tls.port))
            # Still connected when the servers stop; closed after the run, not
            # left for the garbage collector to warn about in a later test.
            for client in (busy, reader, idle):
                request.config.add_cleanup(client.close)
            threads = [t.ident for t in threading.enumerate() if t.name != "MainThread"]
            with open({str(record)!r}, "w") as out:
                out.write(f"{{smtpd.port}} {{smtpd_tls.port}}\\n")
                out.write(" ".join(map(str, threads)))
            assert False, "the test fails while clients are connected"
    """, failed=1)
    # The failure report shows what each server saw (the TLS one saw no
    # complete handshake, so no connection).
    result.stdout.fnmatch_lines([
        "*- smtpd transcript (127.0.0.1:*) -*",
        "C: EHLO me",
        "S: 250 HELP",
        "*- smtpd transcript (127.0.0.1:*) -*",
        "(no connection)",
    ])
    ports_line, threads_line = record.read_text().splitlines()
    live = {t.ident for t in threading.enumerate()}
    assert not live & {int(i) for i in threads_line.split()}
    for port in map(int, ports_line.split()):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_fixtures_cost_nothing_until_a_test_asks(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import sys

        def test_untouched():
            assert "aiosmtpd.testing.plugin" in sys.modules
            assert "aiosmtpd.smtp" not in sys.modules
            assert "aiosmtpd.controller" not in sys.modules
            assert "trustme" not in sys.modules

        def test_asks(smtpd):
            assert "aiosmtpd.smtp" in sys.modules
            assert "trustme" not in sys.modules  # no TLS asked for
    """)
    result = pytester.runpytest_subprocess(*QUIET)
    result.assert_outcomes(passed=2)


def test_tls_fixture_without_the_extra_names_it(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import sys
        sys.modules["trustme"] = None  # as if the "tls" extra were not installed
    """)
    pytester.makepyfile("""
        def test_starttls(smtpd_starttls):
            pass

        def test_context(smtpd_ssl_context):
            pass

        def test_plain_still_works(smtpd):
            assert smtpd.port
    """)
    result = pytester.runpytest_subprocess(*QUIET)
    result.assert_outcomes(passed=1, errors=2)
    hint = "*need trustme (aiosmtpd's 'tls' extra)*: pip install trustme"
    result.stdout.fnmatch_lines([hint] * 2)
    result.stdout.no_fnmatch_line("*During handling*")


def test_parallel_workers_do_not_share_ports_or_messages(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile("""
        import os
        import pytest

        @pytest.mark.parametrize("n", range(8))
        @pytest.mark.parametrize("variant", ["smtpd", "smtpd_tls"])
        def test_own_server(request, variant, n):
            server = request.getfixturevalue(variant)
            subject = f"{os.environ['PYTEST_XDIST_WORKER']}-{variant}-{n}"
            with server.client() as client:
                client.sendmail("a@example.org", ["b@example.org"],
                                f"Subject: {subject}\\r\\n\\r\\nx\\r\\n")
            assert [m.subject for m in server.messages] == [subject]
    """)
    result = pytester.runpytest_subprocess(*QUIET, "-n", "3")
    result.assert_outcomes(passed=16)
    result.stdout.fnmatch_lines(["*3 workers*"])
