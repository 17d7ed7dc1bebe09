"""Commands answered inside data_received, and handler code moved into a Task.

The server runs a command's coroutine by hand as soon as its line arrives
(aiosmtpd/_inline.py).  These tests pin down what must not change for users:
handler code always runs in a Task, replies keep their order however the
commands arrive, a client that stops reading only slows the server down, and
subclasses that override coroutine methods keep the classic Task.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from tests._server import LoopThread, RawClient, ServerFactory, wait_for

BODY = b"Subject: inline\r\n\r\nhello\r\n.\r\n"


class TaskChecker:
    """Every hook notes whether it runs in a Task, and uses a Task-bound API."""

    def __init__(self) -> None:
        self.in_task: dict[str, bool] = {}

    async def _note(self, name: str) -> None:
        self.in_task[name] = asyncio.current_task() is not None
        # asyncio.wait_for() and asyncio.timeout() need the current Task.
        await asyncio.wait_for(asyncio.sleep(0), 5)

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, host: str
    ) -> str:
        await self._note("HELO")
        session.host_name = host
        return "250 helo"

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, host: str, lines: list[str]
    ) -> list[str]:
        await self._note("EHLO")
        session.host_name = host
        return lines

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        await self._note("MAIL")
        envelope.mail_from = address
        return "250 mail"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        await self._note("RCPT")
        envelope.rcpt_tos.append(address)
        return "250 rcpt"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self._note("DATA")
        return "250 data"

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        await self._note("NOOP")
        if arg == "boom":
            raise ValueError("boom")
        return "250 noop"

    async def handle_VRFY(
        self, server: SMTP, session: Session, envelope: Envelope, addr: str
    ) -> str:
        await self._note("VRFY")
        return "252 vrfy"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self._note("RSET")
        return "250 rset"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self._note("QUIT")
        return "221 quit"

    async def handle_exception(self, error: Exception) -> str:
        await self._note("exception")
        return "451 handled"

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        await self._note("auth")
        return AuthResult(success=True)


def test_handler_code_runs_in_a_task(start: ServerFactory) -> None:
    handler = TaskChecker()
    server = start(handler, auth_require_tls=False)
    with server.client() as c:
        assert c.cmd("HELO client") == "250 helo"
        assert c.multi("EHLO client")[-1] == "250 HELP"
        assert c.cmd("AUTH PLAIN AHVzZXIAcGFzcw==").startswith("235")
        assert c.cmd("MAIL FROM:<a@example.com>") == "250 mail"
        assert c.cmd("RCPT TO:<b@example.com>") == "250 rcpt"
        assert c.cmd("NOOP") == "250 noop"
        assert c.cmd("NOOP boom") == "451 handled"
        assert c.cmd("VRFY <b@example.com>") == "252 vrfy"
        assert c.cmd("DATA").startswith("354")
        assert c.cmd(BODY[:-2]) == "250 data"
        assert c.cmd("RSET") == "250 rset"
        assert c.cmd("QUIT") == "221 quit"
    expected = ["HELO", "EHLO", "auth", "MAIL", "RCPT", "NOOP", "exception", "VRFY",
                "DATA", "RSET", "QUIT"]
    assert handler.in_task == dict.fromkeys(expected, True)


def test_process_message_runs_in_a_task(start: ServerFactory) -> None:
    seen: list[bool] = []

    class Legacy:
        async def process_message(self, peer: Any, mail_from: str, rcpt_tos: list[str],
                                  data: bytes) -> None:
            seen.append(asyncio.current_task() is not None)

    server = start(Legacy())
    with server.client() as c, pytest.warns(DeprecationWarning):
        c.multi("EHLO client")
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.com>")
        c.cmd("DATA")
        assert c.cmd(BODY[:-2]) == "250 OK"
    assert seen == [True]


class SlowRcpt:
    """A RCPT hook that gives the loop away a few times before answering."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        for _ in range(3):
            await asyncio.sleep(0)
        envelope.rcpt_tos.append(address)
        return f"250 hooked {address}"


def test_pipelined_replies_keep_their_order_around_a_hook(start: ServerFactory) -> None:
    server = start(SlowRcpt())
    with server.client() as c:
        c.multi("EHLO client")
        c.send(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nNOOP\r\n"
            b"RCPT TO:<c@example.com>\r\nDATA\r\n" + BODY + b"NOOP\r\nQUIT\r\n"
        )
        replies = [c.text() for _ in range(8)]
    assert replies == [
        "250 OK", "250 hooked b@example.com", "250 OK", "250 hooked c@example.com",
        "354 End data with <CR><LF>.<CR><LF>", "250 OK", "250 OK", "221 Bye",
    ]


@pytest.mark.engine("inline")
def test_idle_connection_holds_no_task(start: ServerFactory, lt: LoopThread) -> None:
    server = start(Sink())
    with server.client() as c:
        c.multi("EHLO client")
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.com>")
        c.cmd("DATA")
        assert c.cmd(BODY[:-2]) == "250 OK"
        assert lt.call(lambda: server.last._handler_coroutine) is None


@pytest.mark.engine("inline")
def test_task_ends_once_the_hook_is_answered(start: ServerFactory, lt: LoopThread) -> None:
    server = start(SlowRcpt())
    with server.client() as c:
        c.multi("EHLO client")
        c.cmd("MAIL FROM:<a@example.com>")
        assert c.cmd("RCPT TO:<b@example.com>") == "250 hooked b@example.com"
        assert wait_for(lambda: server.last._handler_coroutine.done(), lt)  # type: ignore[union-attr]
        assert c.cmd("NOOP") == "250 OK"


def test_subclass_with_a_coroutine_override_keeps_its_task(
    start: ServerFactory, lt: LoopThread
) -> None:
    class MySMTP(SMTP):
        async def smtp_NOOP(self, arg: str | None) -> None:
            await self.push("250 my noop")

    server = start(Sink(), cls=MySMTP)
    with server.client() as c:
        assert c.cmd("NOOP") == "250 my noop"
        task = lt.call(lambda: server.last._handler_coroutine)
        assert task is not None and not task.done()
    assert not server.last._inline


def test_client_that_stops_reading_gets_every_reply(
    start: ServerFactory, lt: LoopThread
) -> None:
    count = 30_000
    server = start(Sink())
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    c = RawClient.__new__(RawClient)
    c.sock, c._buf = sock, b""
    try:
        assert c.reply()[0].startswith(b"220")
        # Small kernel buffers on the server's side too, so that its replies
        # pile up in the transport and it must wait for the client.
        lt.call(lambda: server.last.transport.get_extra_info("socket").setsockopt(  # type: ignore[union-attr]
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096))
        c.send(b"NOOP\r\n" * count)  # fits in the kernel and server buffers
        # Not reading yet: the server's replies pile up until it must wait
        # for the client, which moves the commands into a Task.
        assert wait_for(lambda: server.last._handler_coroutine is not None, lt)
        replies = [c.line() for _ in range(count)]
        assert replies == [b"250 OK"] * count
        assert c.cmd("QUIT") == "221 Bye"
    finally:
        sock.close()


def test_commands_before_eof_are_answered(start: ServerFactory) -> None:
    server = start(Sink())
    with server.client() as c:
        c.send(b"NOOP\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        assert [c.text(), c.text()] == ["250 OK", "221 Bye"]
        assert c.is_closed()


def test_resume_hands_the_task_what_the_command_awaits() -> None:
    """A command started by hand continues in a Task: it gets the results of
    what it awaits, and the Task's cancellation."""
    from aiosmtpd._inline import HOP, Resume

    events: list[str] = []

    async def command(fut: asyncio.Future[str]) -> bool:
        await HOP
        events.append(await fut)
        try:
            await asyncio.get_running_loop().create_future()  # never done
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        return True

    async def resumed(coro: Any, first: Any) -> bool:
        return await Resume(coro, first)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        coro = command(fut)
        first = coro.send(None)  # what _drive() sees
        assert first is HOP
        task = loop.create_task(resumed(coro, first))
        await asyncio.sleep(0)
        fut.set_result("resumed")
        for _ in range(3):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert events == ["resumed", "cancelled"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_deprecated_instance_hooks_run_in_a_task(start: ServerFactory) -> None:
    # rset_hook and ehlo_hook set on the instance: the class adds no
    # coroutine method, so its commands run inline until user code is reached.
    seen: list[tuple[str, bool]] = []

    async def note(name: str) -> None:
        seen.append((name, asyncio.current_task() is not None))
        await asyncio.wait_for(asyncio.sleep(0), 5)

    class WithInstanceHooks(SMTP):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.rset_hook = lambda: note("rset")
            self.ehlo_hook = lambda: note("ehlo")

    server = start(Sink(), cls=WithInstanceHooks)
    with server.client() as c:
        assert c.multi("EHLO client")[-1] == "250 HELP"
        assert c.cmd("RSET") == "250 OK"
        assert c.cmd("QUIT") == "221 Bye"
    assert seen == [("ehlo", True), ("rset", True)]


def test_the_rule_for_running_commands_inline() -> None:
    from aiosmtpd._inline import runs_commands_inline
    from aiosmtpd.lmtp import LMTP

    async def smtp_XTRA(self: SMTP, arg: Any) -> None:
        await self.push("250 extra")

    assert runs_commands_inline(SMTP) and runs_commands_inline(LMTP)
    assert runs_commands_inline(type("Plain", (SMTP,), {}))
    assert not runs_commands_inline(type("Extra", (SMTP,), {"smtp_XTRA": smtp_XTRA}))
    # Decided by what the class is, not by the name of its module.
    disguised = type("Disguised", (SMTP,), {"smtp_XTRA": smtp_XTRA, "__module__": "aiosmtpd.smtp"})
    assert not runs_commands_inline(disguised)
    # A class may choose explicitly.
    assert not runs_commands_inline(type("InTask", (SMTP,), {"_inline_commands": False}))
    assert runs_commands_inline(
        type("Chosen", (SMTP,), {"smtp_XTRA": smtp_XTRA, "_inline_commands": True})
    )


def test_execution_state_moves_are_checked() -> None:
    from aiosmtpd._inline import NEXT, Run

    server = SMTP(Sink(), hostname="h", loop=asyncio.new_event_loop())
    try:
        assert server._run is Run.STARTING
        with pytest.raises(AssertionError, match="starting -> suspended"):
            server._to(Run.SUSPENDED)
        # Every state can be left for CLOSED except CLOSED itself (and a
        # suspended command, which first runs to see the cancellation).
        assert {s for s in Run if Run.CLOSED in NEXT[s]} == set(Run) - {Run.CLOSED, Run.SUSPENDED}
        assert not NEXT[Run.CLOSED]
    finally:
        server.loop.close()


def test_user_code_has_one_door() -> None:
    """Only SMTP._user_code moves an inline command into a Task before user
    code: a hop placed by hand elsewhere is how one was once forgotten."""
    import pathlib
    import re

    import aiosmtpd

    package = pathlib.Path(aiosmtpd.__file__).parent
    hops = {
        f"{path.name}:{number}"
        for path in package.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bawait HOP\b", line)
    }
    assert len(hops) == 1 and next(iter(hops)).startswith("smtp.py:")


def test_sync_process_message_runs_in_a_task(start: ServerFactory) -> None:
    seen: list[bool] = []

    class Legacy:
        def process_message(self, peer: Any, mail_from: str, rcpt_tos: list[str],
                            data: bytes) -> None:
            try:
                seen.append(asyncio.current_task() is not None)
            except RuntimeError:  # no running loop at all
                seen.append(False)

    with pytest.warns(DeprecationWarning), start(Legacy()).client() as c:
        c.cmd("HELO c")
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.com>")
        c.cmd("DATA")
        c.send(BODY)
        assert c.text() == "250 OK"
    assert seen == [True]
