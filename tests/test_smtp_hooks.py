"""Handler hooks, exceptions and extension points (docs/smtp.rst, "Hooks") over
loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any, Optional

import pytest

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax
from tests._server import HOSTNAME, LoopThread, RawClient, ServerFactory

pytestmark = pytest.mark.timeout(30)

HELP_LIST = "AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY"


@contextlib.contextmanager
def recorded_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Record warnings from any thread (the server's loop runs in another)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def messages(caught: list[warnings.WarningMessage], category: type[Warning]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, category)]


def transaction(c: RawClient, content: bytes = b"x\r\n") -> str:
    c.cmd("HELO h")
    c.cmd("MAIL FROM:<a@b>")
    c.cmd("RCPT TO:<c@d>")
    assert c.cmd("DATA").startswith("354")
    c.send(content + b".\r\n")
    return c.text()


# -- Every hook with its arguments ----------------------------------------------------


class Everything:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def handle_HELO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str) -> str:
        self.calls.append(("HELO", hostname))
        session.host_name = hostname
        return "250 helo hook"

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        self.calls.append(("EHLO", hostname, list(responses)))
        session.host_name = hostname
        return [*responses[:-1], "250-X-CUSTOM", responses[-1]]

    async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope,
                          arg: Optional[str]) -> str:
        self.calls.append(("NOOP", arg))
        return "250 noop hook"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.calls.append(("QUIT",))
        return "221 quit hook"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.calls.append(("RSET",))
        return "250 rset hook"

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        self.calls.append(("MAIL", address, list(mail_options)))
        envelope.mail_from = address
        return "250 mail hook"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        self.calls.append(("RCPT", address, list(rcpt_options)))
        envelope.rcpt_tos.append(address)
        return "250 rcpt hook"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.calls.append(("DATA", envelope.content, envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 data hook"

    async def handle_VRFY(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str) -> str:
        self.calls.append(("VRFY", address))
        return "250 vrfy hook"


def test_every_hook(start: ServerFactory) -> None:
    h = Everything()
    srv = start(h)
    with srv.client() as c:
        assert c.cmd("HELO there") == "250 helo hook"
        assert c.multi("EHLO there") == [
            f"250-{HOSTNAME}", "250-SIZE 33554432", "250-8BITMIME", "250-X-CUSTOM", "250 HELP",
        ]
        assert c.cmd("NOOP") == "250 noop hook"
        assert c.cmd("NOOP  some arg ") == "250 noop hook"
        assert c.cmd("VRFY <v@w>") == "250 vrfy hook"
        assert c.cmd("MAIL FROM:<a@b> SIZE=5") == "250 mail hook"
        assert c.cmd("RCPT TO:<c@d>") == "250 rcpt hook"
        assert c.cmd("DATA") == "354 End data with <CR><LF>.<CR><LF>"
        assert c.cmd(".") == "250 data hook"
        assert c.cmd("RSET") == "250 rset hook"
        assert c.cmd("QUIT") == "221 quit hook"
        assert c.is_closed()
    assert h.calls == [
        ("HELO", "there"),
        ("EHLO", "there", [f"250-{HOSTNAME}", "250-SIZE 33554432", "250-8BITMIME", "250 HELP"]),
        ("NOOP", None),
        ("NOOP", "some arg"),
        ("VRFY", "v@w"),
        ("MAIL", "a@b", ["SIZE=5"]),
        ("RCPT", "c@d", []),
        ("DATA", b"", "a@b", ["c@d"]),
        ("RSET",),
        ("QUIT",),
    ]


def test_helo_hook_must_set_host_name(start: ServerFactory) -> None:
    class H:
        async def handle_HELO(self, *args: Any) -> str:
            return "250 ok but forgot"

    with start(H()).client() as c:
        assert c.cmd("HELO x") == "250 ok but forgot"
        assert c.cmd("MAIL FROM:<a@b>") == "503 Error: send HELO first"


class ReturnsMissing:
    async def _missing(self, *args: Any) -> Any:
        return MISSING

    handle_HELO = handle_NOOP = handle_QUIT = handle_RSET = _missing
    handle_MAIL = handle_RCPT = handle_DATA = handle_VRFY = _missing


def test_missing_means_default(start: ServerFactory) -> None:
    srv = start(ReturnsMissing())
    with srv.client() as c:
        assert c.cmd("HELO x") == f"250 {HOSTNAME}"
        assert c.cmd("NOOP") == "250 OK"
        assert c.cmd("VRFY a") == (
            "252 Cannot VRFY user, but will accept message and attempt delivery"
        )
        assert c.cmd("MAIL FROM:<a@b>") == "250 OK"
        assert c.cmd("RCPT TO:<c@d>") == "250 OK"
        env = srv.last.envelope
        assert (env.mail_from, env.rcpt_tos) == ("a@b", ["c@d"])
        assert c.cmd("DATA").startswith("354")
        assert c.cmd(".") == "250 OK"
        assert c.cmd("RSET") == "250 OK"
        assert c.cmd("QUIT") == "221 Bye"
    assert srv.last.session.host_name == "x"


@pytest.mark.parametrize(
    ("value", "type_name"), [(None, "NoneType"), (250, "int"), (["250 OK"], "list")]
)
def test_hook_returning_non_text(start: ServerFactory, value: Any, type_name: str) -> None:
    class H:
        async def handle_NOOP(self, *args: Any) -> Any:
            return value

    with start(H()).client() as c:
        # A deviation from 1.4.6 (CHANGES.rst: a hook returning non-str/bytes).
        assert c.cmd("NOOP") == (
            f"500 Error: (TypeError) push() argument must be str or bytes, not {type_name}"
        )
        assert c.cmd("NOOP") == c.cmd("NOOP")  # the session goes on


def test_hook_returning_bytes_and_multiline(start: ServerFactory) -> None:
    class H:
        async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope,
                              arg: Optional[str]) -> Any:
            if arg == "bytes":
                return b"250 from bytes"
            if arg == "pushed":
                await server.push("250-pushed by hook")
                return "250 final"
            return "250-first\r\n250 second"

    with start(H()).client() as c:
        assert c.cmd("NOOP bytes") == "250 from bytes"
        assert c.multi("NOOP") == ["250-first", "250 second"]
        assert c.multi("NOOP pushed") == ["250-pushed by hook", "250 final"]


def test_non_ascii_reply_without_smtputf8(start: ServerFactory) -> None:
    class H:
        async def handle_NOOP(self, *args: Any) -> str:
            return "250 café"

    with start(H()).client() as c:
        assert c.cmd("NOOP") == (
            "500 Error: (UnicodeEncodeError) 'ascii' codec can't encode character '\\xe9' "
            "in position 7: ordinal not in range(128)"
        )
    with start(H(), enable_SMTPUTF8=True).client() as c:
        assert c.cmd("NOOP") == "250 café"


def test_sync_hook_is_a_type_error(start: ServerFactory) -> None:
    class H:
        def handle_NOOP(self, *args: Any) -> str:
            return "250 sync"

    with start(H()).client() as c:
        assert c.cmd("NOOP") == (
            "500 Error: (TypeError) object str can't be used in 'await' expression"
        )


# -- Exceptions -------------------------------------------------------------------------


class Raises:
    async def handle_MAIL(self, *args: Any) -> str:
        raise ValueError("boom")

    async def handle_RCPT(self, *args: Any) -> str:
        raise KeyError("k")


def test_exception_default_reply(start: ServerFactory, caplog: Any) -> None:
    caplog.set_level(logging.ERROR, logger="mail.log")
    srv = start(Raises())
    with srv.client() as c:
        c.cmd("HELO x")
        assert c.cmd("MAIL FROM:<a@b>") == "500 Error: (ValueError) boom"
        assert c.cmd("NOOP") == "250 OK"
    records = [r for r in caplog.records if r.getMessage().endswith("SMTP session exception")]
    assert records and records[0].exc_info is not None


def test_exception_keeps_envelope(start: ServerFactory) -> None:
    class H:
        async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                              *args: Any) -> str:
            raise KeyError("k")

    srv = start(H())
    with srv.client() as c:
        c.cmd("HELO x")
        assert c.cmd("MAIL FROM:<a@b>") == "250 OK"
        assert c.cmd("RCPT TO:<c@d>") == "500 Error: (KeyError) 'k'"
        assert c.cmd("MAIL FROM:<a@b>") == "503 Error: nested MAIL command"


class Handled(Raises):
    def __init__(self, result: Any) -> None:
        self.result = result
        self.errors: list[BaseException] = []

    async def handle_exception(self, error: BaseException) -> Any:
        self.errors.append(error)
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def test_handle_exception_reply(start: ServerFactory) -> None:
    h = Handled("451 try later")
    with start(h).client() as c:
        c.cmd("HELO x")
        assert c.cmd("MAIL FROM:<a@b>") == "451 try later"
    assert isinstance(h.errors[0], ValueError)


def test_handle_exception_returning_none(start: ServerFactory, caplog: Any) -> None:
    caplog.set_level(logging.ERROR, logger="mail.log")
    with start(Handled(None)).client() as c:
        c.cmd("HELO x")
        # The default text, and the session goes on (CHANGES.rst:
        # handle_exception returning a non-string).
        assert c.cmd("MAIL FROM:<a@b>") == "500 Error: (ValueError) boom"
        assert c.cmd("NOOP") == "250 OK"
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def test_handle_exception_raising(start: ServerFactory, caplog: Any) -> None:
    caplog.set_level(logging.ERROR, logger="mail.log")
    with start(Handled(RuntimeError("inner"))).client() as c:
        c.cmd("HELO x")
        assert c.cmd("MAIL FROM:<a@b>") == "500 Error: (RuntimeError) inner"
        assert c.cmd("NOOP") == "250 OK"
    assert any(r.getMessage().endswith("Exception in handle_exception()") for r in caplog.records)


def test_handle_exception_undescribable(start: ServerFactory) -> None:
    class Mute(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    with start(Handled(Mute())).client() as c:
        c.cmd("HELO x")
        assert c.cmd("MAIL FROM:<a@b>") == "500 Error: Cannot describe error"


def test_sync_handle_exception(start: ServerFactory) -> None:
    class H(Raises):
        def handle_exception(self, error: BaseException) -> str:
            return "451 sync"

    with start(H()).client() as c:
        c.cmd("HELO x")
        assert c.cmd("MAIL FROM:<a@b>") == (
            "500 Error: (TypeError) object str can't be used in 'await' expression"
        )


def test_connection_reset_from_hook_closes_without_handle_exception(
    start: ServerFactory, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="mail.log")

    class H:
        called = False

        async def handle_NOOP(self, *args: Any) -> str:
            raise ConnectionResetError

        async def handle_exception(self, error: BaseException) -> str:
            H.called = True
            return "500 no"

    with start(H()).client() as c:
        c.send(b"NOOP\r\n")
        assert c.is_closed()
    assert not H.called
    assert any(
        r.getMessage().endswith("Connection lost during _handle_client()") for r in caplog.records
    )


# -- EHLO flavours and the deprecated server hooks --------------------------------------------


class OldEhlo:
    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str) -> str:
        session.host_name = hostname
        await server.push("250-EXTRA")
        return "250 FINAL"


def test_four_argument_ehlo_hook(start: ServerFactory) -> None:
    with recorded_warnings() as caught:
        srv = start(OldEhlo())
        with srv.client() as c:
            assert c.multi("EHLO x") == [
                f"250-{HOSTNAME}", "250-SIZE 33554432", "250-8BITMIME", "250-EXTRA", "250 FINAL",
            ]
            assert c.cmd("MAIL FROM:<a@b>") == "250 OK"
    assert (
        "Use the 5-argument handle_EHLO() hook instead of the 4-argument handle_EHLO() hook; "
        "support for the 4-argument handle_EHLO() hook will be removed in version 2.0"
    ) in messages(caught, DeprecationWarning)


def test_five_argument_ehlo_hook_must_set_host_name(start: ServerFactory) -> None:
    class H:
        async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                              hostname: str, responses: list[str]) -> list[str]:
            return ["250 only"]

    with start(H()).client() as c:
        assert c.cmd("EHLO x") == "250 only"
        assert c.cmd("MAIL FROM:<a@b>") == "503 Error: send HELO first"


class WithServerHooks(SMTP):
    async def ehlo_hook(self) -> None:
        await self.push("250-FROM-EHLO-HOOK")

    async def rset_hook(self) -> None:
        await self.push("250-FROM-RSET-HOOK")


def test_ehlo_hook_runs_before_final_line(start: ServerFactory) -> None:
    # Just before the final line, not before the first (CHANGES.rst: the
    # deprecated ehlo_hook()).
    with recorded_warnings() as caught:
        with start(cls=WithServerHooks).client() as c:
            assert c.multi("EHLO x") == [
                f"250-{HOSTNAME}", "250-SIZE 33554432", "250-8BITMIME",
                "250-FROM-EHLO-HOOK", "250 HELP",
            ]
            assert c.multi("RSET") == ["250-FROM-RSET-HOOK", "250 OK"]
    depr = messages(caught, DeprecationWarning)
    assert "Use handler.handle_EHLO() instead of .ehlo_hook()" in depr
    assert "Use handler.handle_RSET() instead of .rset_hook()" in depr


def test_ehlo_hook_with_four_argument_handler_hook(start: ServerFactory) -> None:
    with recorded_warnings(), start(OldEhlo(), cls=WithServerHooks).client() as c:
        assert c.multi("EHLO x") == [
            f"250-{HOSTNAME}", "250-SIZE 33554432", "250-8BITMIME",
            "250-FROM-EHLO-HOOK", "250-EXTRA", "250 FINAL",
        ]


def test_ehlo_hook_with_five_argument_handler_hook(start: ServerFactory) -> None:
    class H:
        async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                              hostname: str, responses: list[str]) -> list[str]:
            session.host_name = hostname
            return ["250-a", "250-b", "250 c"]

    with recorded_warnings(), start(H(), cls=WithServerHooks).client() as c:
        assert c.multi("EHLO x") == ["250-a", "250-b", "250-FROM-EHLO-HOOK", "250 c"]


def test_rset_hook_with_handler_hook(start: ServerFactory) -> None:
    class H:
        async def handle_RSET(self, *args: Any) -> str:
            return "250 handler"

    with recorded_warnings(), start(H(), cls=WithServerHooks).client() as c:
        assert c.multi("RSET") == ["250-FROM-RSET-HOOK", "250 handler"]


# -- Legacy process_message ---------------------------------------------------------------


def test_process_message_sync(start: ServerFactory) -> None:
    got: list[tuple[Any, ...]] = []

    class Legacy:
        def process_message(self, peer: Any, mail_from: str, rcpt_tos: list[str],
                            data: Any) -> Optional[str]:
            got.append((peer, mail_from, list(rcpt_tos), data))
            return None

    with recorded_warnings() as caught:
        with start(Legacy()).client() as c:
            assert transaction(c) == "250 OK"
            peer = c.sock.getsockname()
    assert got == [(peer, "a@b", ["c@d"], b"x\r\n")]
    assert "Use handler.handle_DATA() instead of .process_message()" in messages(
        caught, DeprecationWarning
    )


def test_process_message_async_with_reply(start: ServerFactory) -> None:
    class Legacy:
        async def process_message(self, *args: Any) -> str:
            return "554 rejected by legacy"

    with recorded_warnings(), start(Legacy(), decode_data=True).client() as c:
        assert transaction(c) == "554 rejected by legacy"


def test_handle_data_wins_over_process_message(start: ServerFactory) -> None:
    class Both:
        async def handle_DATA(self, *args: Any) -> str:
            return "250 new"

        def process_message(self, *args: Any) -> str:
            raise AssertionError("not called")

    with start(Both()).client() as c:
        assert transaction(c) == "250 new"


# -- Custom commands --------------------------------------------------------------------------


class Custom(SMTP):
    @syntax("PING [text]")
    async def smtp_PING(self, arg: Optional[str]) -> None:
        status = await self._call_handler_hook("PING", arg)
        await self.push("250 PONG" if status is MISSING else status)

    @syntax("SECRET", when="secret_enabled")
    async def smtp_SECRET(self, arg: Optional[str]) -> None:
        await self.push("250 secret")

    @syntax("XEXT", extended=" [more]")
    async def smtp_XEXT(self, arg: Optional[str]) -> None:
        await self.push("250 xext")

    async def smtp_HIDDEN(self, arg: Optional[str]) -> None:
        await self.push("250 hidden")

    async def smtp_lower(self, arg: Optional[str]) -> None:
        await self.push("250 unreachable")

    secret_enabled = False


def test_custom_commands(start: ServerFactory) -> None:
    with start(cls=Custom).client() as c:
        assert c.cmd("PING") == "250 PONG"
        assert c.cmd("SECRET") == "250 secret"
        assert c.cmd("HIDDEN") == "250 hidden"
        assert c.cmd("LOWER") == '500 Error: command "LOWER" not recognized'
        listing = "Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP PING QUIT RCPT RSET " \
                  "VRFY XEXT"
        assert c.cmd("HELP") == "250 " + listing
        assert c.cmd("HELP PING") == "250 Syntax: PING [text]"
        assert c.cmd("HELP SECRET") == "501 " + listing
        assert c.cmd("HELP HIDDEN") == "501 " + listing
        assert c.cmd("HELP XEXT") == "250 Syntax: XEXT"
        c.multi("EHLO x")
        assert c.cmd("HELP XEXT") == "250 Syntax: XEXT [more]"


def test_custom_command_when_enabled(start: ServerFactory) -> None:
    class Enabled(Custom):
        secret_enabled = True

    with start(cls=Enabled).client() as c:
        assert c.cmd("HELP SECRET") == "250 Syntax: SECRET"
        assert "SECRET" in c.cmd("HELP")


def test_custom_command_handler_hook(start: ServerFactory) -> None:
    class H:
        async def handle_PING(self, server: SMTP, session: Session, envelope: Envelope,
                              arg: Optional[str]) -> str:
            return f"250 pong {arg}"

    with start(H(), cls=Custom).client() as c:
        assert c.cmd("PING hello") == "250 pong hello"


def test_syntax_decorator_attributes() -> None:
    def f() -> None:
        pass

    assert syntax("X y", extended=" z", when="w")(f) is f
    assert f.__smtp_syntax__ == "X y"  # type: ignore[attr-defined]
    assert f.__smtp_syntax_extended__ == " z"  # type: ignore[attr-defined]
    assert f.__smtp_syntax_when__ == "w"  # type: ignore[attr-defined]


def test_override_builtin_command(start: ServerFactory) -> None:
    class MyNoop(SMTP):
        @syntax("NOOP [ignored]")
        async def smtp_NOOP(self, arg: Optional[str]) -> None:
            await self.push("250 overridden")

    with start(cls=MyNoop).client() as c:
        assert c.cmd("NOOP") == "250 overridden"


def test_hooks_captured_at_construction(start: ServerFactory, lt: LoopThread) -> None:
    class H:
        pass

    h = H()
    srv = start(h)
    with srv.client() as c:
        async def late(*args: Any) -> str:
            return "250 late"

        h.handle_NOOP = late  # type: ignore[attr-defined]
        assert c.cmd("NOOP") == "250 OK"
    with srv.client() as c:
        # A new connection builds a new protocol instance, which sees it.
        assert c.cmd("NOOP") == "250 late"


def test_slow_hook_does_not_block_other_connections(start: ServerFactory, lt: LoopThread) -> None:
    # Made in the server's loop: on Python 3.9 an asyncio.Event binds to the
    # current loop when it is created, and the test's thread has none.
    release = lt.call(asyncio.Event)

    class H:
        async def handle_VRFY(self, *args: Any) -> str:
            await release.wait()
            return "252 released"

        async def handle_NOOP(self, server: SMTP, *args: Any) -> str:
            release.set()
            return "250 OK"

    srv = start(H())
    with srv.client() as a, srv.client() as b:
        a.send(b"VRFY x\r\n")
        assert b.cmd("NOOP") == "250 OK"
        assert a.text() == "252 released"


def test_argument_forms(start: ServerFactory) -> None:
    """None without an argument, "" for spaces only (docs/decisions.rst,
    "Command arguments")."""
    seen: list[Optional[str]] = []

    class H:
        async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope,
                              arg: Optional[str]) -> str:
            seen.append(arg)
            return "250 OK"

    with start(H()).client() as c:
        for line in (b"NOOP", b"NOOP ", b"NOOP   ", b"NOOP \t x \t ", b"NOOP a  b", b"NOOP\r\r"):
            assert c.cmd(line) == "250 OK"
    assert seen == [None, None, "", "x", "a  b", None]
