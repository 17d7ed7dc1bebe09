"""The built-in handlers, driven end to end through real servers over loopback."""

from __future__ import annotations

import argparse
import asyncio
import email.message
import io
import logging
import mailbox
import os
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from aiosmtpd import handlers
from aiosmtpd.handlers import (
    AsyncMessage,
    Debugging,
    Mailbox,
    Message,
    Proxy,
    Sink,
)
from aiosmtpd.smtp import SMTP, Envelope, Session

HOSTNAME = "test.example"


class ServerThread:
    """An asyncio server with its own event loop in a background thread.

    Protocols are created inside the loop thread, so ``SMTP(loop=None)``
    picks that loop up. Every protocol created is kept in ``protocols``.
    """

    def __init__(
        self, factory: Callable[[], asyncio.Protocol], unix_path: str | None = None
    ) -> None:
        self._factory = factory
        self._unix_path = unix_path
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self.protocols: list[asyncio.Protocol] = []

    def _make(self) -> asyncio.Protocol:
        protocol = self._factory()
        self.protocols.append(protocol)
        return protocol

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        try:
            if self._unix_path is not None:
                server = loop.run_until_complete(
                    loop.create_unix_server(self._make, self._unix_path)
                )
            else:
                server = loop.run_until_complete(loop.create_server(self._make, "127.0.0.1", 0))
                self.port = server.sockets[0].getsockname()[1]
        except BaseException as e:  # reported to the starting thread
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        server.close()
        for protocol in self.protocols:
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abort()
        loop.run_until_complete(server.wait_closed())
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()


@contextmanager
def serve(factory: Callable[[], asyncio.Protocol]) -> Iterator[ServerThread]:
    server = ServerThread(factory).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def smtp_server(handler: Any, **kwargs: Any) -> Iterator[ServerThread]:
    kwargs.setdefault("hostname", HOSTNAME)
    with serve(lambda: SMTP(handler, **kwargs)) as server:
        yield server


def client(server: ServerThread) -> smtplib.SMTP:
    # The timeout only guards against a hung test; nothing is timed.
    return smtplib.SMTP("127.0.0.1", server.port, timeout=30)


class Recorder:
    """A backend handler keeping every envelope it receives."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


class RejectingRecorder(Recorder):
    """Refuses recipients whose local part starts with ``bad`` or ``later``."""

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.startswith("bad"):
            return "550 5.1.1 no such user"
        if address.startswith("later"):
            return "450 4.2.0 mailbox busy"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def run_hook(coro: Any) -> Any:
    return asyncio.run(coro)


def make_session(peer: Any = ("127.0.0.1", 5000)) -> Session:
    session = Session(asyncio.new_event_loop())
    session.loop.close()
    session.peer = peer
    return session


def make_envelope(
    content: Any, mail_from: str | None = "a@x", rcpt_tos: tuple[str, ...] = ("b@x",)
) -> Envelope:
    envelope = Envelope()
    envelope.content = content
    envelope.original_content = content if isinstance(content, bytes) else None
    envelope.mail_from = mail_from
    envelope.rcpt_tos = list(rcpt_tos)
    return envelope


class ParserError(Exception):
    pass


class RaisingParser(argparse.ArgumentParser):
    """Turns ``parser.error`` into an exception carrying the message."""

    def error(self, message: str) -> Any:
        raise ParserError(message)


# ---------------------------------------------------------------- module


def test_all_in_upstream_order() -> None:
    assert handlers.__all__ == [
        "Debugging",
        "Proxy",
        "Sink",
        "Message",
        "AsyncMessage",
        "Mailbox",
    ]
    assert "MessageBase" not in handlers.__all__
    assert issubclass(Message, handlers.MessageBase)
    assert issubclass(AsyncMessage, handlers.MessageBase)
    assert not issubclass(AsyncMessage, Message)


def test_logger_is_mail_debug() -> None:
    assert handlers.log.name == "mail.debug"


# ---------------------------------------------------------------- Sink


def test_sink_accepts_and_discards() -> None:
    assert not [name for name in dir(Sink) if name.startswith("handle_")]
    with smtp_server(Sink()) as server, closing(client(server)) as smtp:
        assert smtp.sendmail("a@x", ["b@x", "c@x"], b"Subject: s\r\n\r\nbody\r\n") == {}
        assert smtp.noop() == (250, b"OK")


def test_sink_from_cli() -> None:
    parser = RaisingParser()
    assert isinstance(Sink.from_cli(parser), Sink)
    with pytest.raises(ParserError, match="^Sink handler does not accept arguments$"):
        Sink.from_cli(parser, "x")


def test_sink_from_cli_real_parser_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="prog")
    with pytest.raises(SystemExit) as exc:
        Sink.from_cli(parser, "a", "b")
    assert exc.value.code == 2
    assert capsys.readouterr().err.endswith("prog: error: Sink handler does not accept arguments\n")


# ---------------------------------------------------------------- Debugging


def debugging_transcript(message: bytes, **server_kwargs: Any) -> tuple[str, tuple[str, int]]:
    stream = io.StringIO()
    with smtp_server(Debugging(stream), **server_kwargs) as server, closing(client(server)) as smtp:
        smtp.sendmail("a@x", ["b@x"], message)
        peer = smtp.sock.getsockname()
    return stream.getvalue(), peer


def test_debugging_output_format() -> None:
    message = b"From: a\r\nSubject: hi\r\n\r\nbody line\r\nline2\r\n"
    out, peer = debugging_transcript(message)
    assert out == (
        "---------- MESSAGE FOLLOWS ----------\n"
        f"mail options: ['SIZE={len(message)}']\n"
        "\n"
        "From: a\n"
        "Subject: hi\n"
        f"X-Peer: {peer!r}\n"
        "\n"
        "body line\n"
        "line2\n"
        "------------ END MESSAGE ------------\n"
    )


def test_debugging_without_options_and_without_blank_line() -> None:
    # No SIZE advertised -> no options -> no blank line after the banner;
    # no empty line in the content -> no X-Peer at all.
    out, _ = debugging_transcript(b"Subject: only headers\r\n", data_size_limit=None)
    assert out == (
        "---------- MESSAGE FOLLOWS ----------\n"
        "Subject: only headers\n"
        "------------ END MESSAGE ------------\n"
    )


def test_debugging_body_only_and_later_empty_lines() -> None:
    out, peer = debugging_transcript(b"\r\nfirst\r\n\r\nsecond\r\n", data_size_limit=None)
    assert out.splitlines()[1:-1] == [f"X-Peer: {peer!r}", "", "first", "", "second"]


def test_debugging_bytes_decoded_with_replacement() -> None:
    out, _ = debugging_transcript(b"Subject: x\r\n\r\ncaf\xe9 \xc3\xa9\r\n", data_size_limit=None)
    assert "caf\ufffd \xe9\n" in out


def test_debugging_rcpt_options_line() -> None:
    stream = io.StringIO()
    envelope = make_envelope(b"S: x\r\n\r\nb\r\n")
    envelope.rcpt_options = ["NOTIFY=NEVER"]
    result = run_hook(Debugging(stream).handle_DATA(None, make_session(""), envelope))  # type: ignore[arg-type]
    assert result == "250 OK"
    assert stream.getvalue().splitlines() == [
        "---------- MESSAGE FOLLOWS ----------",
        "rcpt options: ['NOTIFY=NEVER']",
        "",
        "S: x",
        "X-Peer: ''",
        "",
        "b",
        "------------ END MESSAGE ------------",
    ]


def test_debugging_str_content_uses_str_splitlines() -> None:
    # decode_data=True gives str content; str.splitlines also splits on \f.
    stream = io.StringIO()
    envelope = make_envelope("S: x\r\n\r\npage1\fpage2\r\n")
    run_hook(Debugging(stream).handle_DATA(None, make_session(), envelope))  # type: ignore[arg-type]
    assert stream.getvalue().splitlines()[1:-1] == [
        "S: x",
        "X-Peer: ('127.0.0.1', 5000)",
        "",
        "page1",
        "page2",
    ]


def test_debugging_decode_data_server() -> None:
    out, peer = debugging_transcript(b"S: x\r\n\r\nplain\r\n", decode_data=True)
    assert f"X-Peer: {peer!r}\n\nplain\n" in out


def test_debugging_requires_content() -> None:
    envelope = make_envelope(None)
    with pytest.raises(AssertionError):
        run_hook(Debugging(io.StringIO()).handle_DATA(None, make_session(), envelope))  # type: ignore[arg-type]


def test_debugging_stream_captured_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    first = io.StringIO()
    monkeypatch.setattr("sys.stdout", first)
    handler = Debugging()
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert handler.stream is first


@pytest.mark.parametrize(
    ("args", "stream_name"), [((), "stdout"), (("stdout",), "stdout"), (("stderr",), "stderr")]
)
def test_debugging_from_cli(
    args: tuple[str, ...], stream_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = io.StringIO()
    monkeypatch.setattr(f"sys.{stream_name}", fake)
    assert Debugging.from_cli(RaisingParser(), *args).stream is fake


@pytest.mark.parametrize("args", [("STDOUT",), ("file",), ("stdout", "stderr")])
def test_debugging_from_cli_rejects(args: tuple[str, ...]) -> None:
    with pytest.raises(ParserError, match=r"^Debugging usage: \[stdout\|stderr\]$"):
        Debugging.from_cli(RaisingParser(), *args)


# ---------------------------------------------------------------- Proxy


@contextmanager
def proxy_pair(
    backend: Recorder | None = None, proxy_kwargs: dict[str, Any] | None = None, **front_kwargs: Any
) -> Iterator[tuple[ServerThread, Recorder]]:
    backend = backend or Recorder()
    with smtp_server(backend) as upstream:
        proxy = Proxy("127.0.0.1", upstream.port, **(proxy_kwargs or {}))
        with smtp_server(proxy, **front_kwargs) as front:
            yield front, backend


@pytest.mark.parametrize(
    ("sent", "relayed"),
    [
        (
            b"Subject: s\r\nFrom: a\r\n\r\nbody\r\n",
            b"Subject: s\r\nFrom: a\r\nX-Peer: 127.0.0.1\r\n\r\nbody\r\n",
        ),
        ("\nbody only\n", b"X-Peer: 127.0.0.1\r\n\r\nbody only\r\n"),
        (b"A: b\nC: d\n\nbody\n", b"A: b\nC: d\nX-Peer: 127.0.0.1\n\nbody\n\r\n"),
        # No empty line: X-Peer lands before the last line (kept upstream quirk).
        (b"Subject: s\r\nX: y\r\n", b"Subject: s\r\nX-Peer: 127.0.0.1\r\nX: y\r\n"),
    ],
)
def test_proxy_relays_with_x_peer(sent: bytes | str, relayed: bytes) -> None:
    with proxy_pair() as (front, backend), closing(client(front)) as smtp:
        assert smtp.sendmail("a@x", ["b@x", "c@x"], sent) == {}
    [envelope] = backend.envelopes
    assert envelope.original_content == relayed
    assert envelope.mail_from == "a@x"
    assert envelope.rcpt_tos == ["b@x", "c@x"]


def test_proxy_does_not_forward_esmtp_options() -> None:
    with proxy_pair() as (front, backend), closing(client(front)) as smtp:
        smtp.sendmail("a@x", ["b@x"], b"S: s\r\n\r\nb\r\n", mail_options=["BODY=8BITMIME"])
    [envelope] = backend.envelopes
    # smtplib adds its own SIZE towards the upstream server; BODY is not relayed.
    assert [o for o in envelope.mail_options if not o.startswith("SIZE=")] == []


def test_proxy_relays_original_bytes_with_decode_data() -> None:
    body = "Subject: caf\xe9\r\n\r\nna\xefve \u2028 text\r\n".encode()
    with (
        proxy_pair(decode_data=True, enable_SMTPUTF8=True) as (front, backend),
        closing(client(front)) as smtp,
    ):
        smtp.sendmail("a@x", ["b@x"], body)
    [envelope] = backend.envelopes
    assert envelope.original_content == body.replace(
        b"\r\n\r\n", b"\r\nX-Peer: 127.0.0.1\r\n\r\n", 1
    )


def test_proxy_some_recipients_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mail.debug")
    with proxy_pair(RejectingRecorder()) as (front, backend), closing(client(front)) as smtp:
        # The front server accepted both recipients; the relay refused one.
        assert smtp.sendmail("a@x", ["good@x", "bad@x"], b"S: s\r\n\r\nb\r\n") == {}
    [envelope] = backend.envelopes
    assert envelope.rcpt_tos == ["good@x"]
    assert (
        "mail.debug",
        logging.INFO,
        "we got some refusals: {'bad@x': (550, b'5.1.1 no such user')}",
    ) in caplog.record_tuples


def test_proxy_empty_refusals_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mail.debug")
    with proxy_pair() as (front, _), closing(client(front)) as smtp:
        smtp.sendmail("a@x", ["b@x"], b"S: s\r\n\r\nb\r\n")
    assert ("mail.debug", logging.INFO, "we got some refusals: {}") in caplog.record_tuples


def test_proxy_all_recipients_refused_permanently(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mail.debug")
    with proxy_pair(RejectingRecorder()) as (front, backend), closing(client(front)) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            smtp.sendmail("a@x", ["bad1@x", "bad2@x"], b"S: s\r\n\r\nb\r\n")
        assert (exc.value.smtp_code, exc.value.smtp_error) == (554, b"5.0.0 Error: relay failed")
        # The session goes on after the failure.
        assert smtp.noop() == (250, b"OK")
    assert backend.envelopes == []
    assert ("mail.debug", logging.INFO, "got SMTPRecipientsRefused") in caplog.record_tuples


def test_proxy_all_refused_with_a_temporary_code() -> None:
    with proxy_pair(RejectingRecorder()) as (front, _), closing(client(front)) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            smtp.sendmail("a@x", ["bad@x", "later@x"], b"S: s\r\n\r\nb\r\n")
    assert (exc.value.smtp_code, exc.value.smtp_error) == (
        451,
        b"4.4.1 Error: relay failed, try again later",
    )


def test_proxy_unreachable_upstream(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mail.debug")
    proxy = Proxy("127.0.0.1", closed_port())
    with smtp_server(proxy) as front, closing(client(front)) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            smtp.sendmail("a@x", ["good@x"], b"S: s\r\n\r\nb\r\n")
    assert (exc.value.smtp_code, exc.value.smtp_error) == (
        451,
        b"4.4.1 Error: relay failed, try again later",
    )
    assert (
        "mail.debug",
        logging.INFO,
        "we got some refusals: {'good@x': (-1, b'ignore')}",
    ) in caplog.record_tuples
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.name == "mail.debug"
    assert error.getMessage() == "got <class 'ConnectionRefusedError'>"
    assert error.exc_info is not None


def test_proxy_upstream_rejects_data() -> None:
    class DataRefuser(Recorder):
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            return "554 5.7.1 spam"

    with proxy_pair(DataRefuser()) as (front, _), closing(client(front)) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            smtp.sendmail("a@x", ["b@x"], b"S: s\r\n\r\nb\r\n")
    assert exc.value.smtp_code == 554


def test_proxy_timeout_on_silent_upstream() -> None:
    # An upstream that accepts TCP connections but never greets.
    with closing(socket.create_server(("127.0.0.1", 0))) as silent:
        proxy = Proxy("127.0.0.1", silent.getsockname()[1], timeout=0.5)
        with smtp_server(proxy) as front, closing(client(front)) as smtp:
            with pytest.raises(smtplib.SMTPDataError) as exc:
                smtp.sendmail("a@x", ["b@x"], b"S: s\r\n\r\nb\r\n")
    assert exc.value.smtp_code == 451


def test_proxy_does_not_block_other_sessions() -> None:
    release = threading.Event()
    entered = threading.Event()

    class Slow(Recorder):
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            entered.set()
            await asyncio.get_running_loop().run_in_executor(None, release.wait)
            return await super().handle_DATA(server, session, envelope)

    result: dict[str, Any] = {}
    with proxy_pair(Slow()) as (front, backend):

        def send() -> None:
            with closing(client(front)) as smtp:
                result["refused"] = smtp.sendmail("a@x", ["b@x"], b"S: s\r\n\r\nb\r\n")

        sender = threading.Thread(target=send)
        sender.start()
        try:
            assert entered.wait(30)
            # The relay is stuck upstream; the proxy's loop must still serve.
            with closing(client(front)) as other:
                assert other.noop() == (250, b"OK")
        finally:
            release.set()
            sender.join()
    assert result["refused"] == {}
    assert len(backend.envelopes) == 1


def test_proxy_unix_socket_peer() -> None:
    backend = Recorder()
    with smtp_server(backend) as upstream, tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "smtp.sock")
        proxy = Proxy("127.0.0.1", upstream.port)
        front = ServerThread(lambda: SMTP(proxy, hostname=HOSTNAME), unix_path=path).start()
        try:
            with closing(socket.socket(socket.AF_UNIX)) as sock:
                sock.connect(path)
                smtp = smtplib.SMTP()
                smtp.sock = sock
                smtp.file = None
                assert smtp.getreply()[0] == 220
                assert smtp.sendmail("a@x", ["b@x"], b"S: s\r\n\r\nb\r\n") == {}
                smtp.quit()
        finally:
            front.stop()
    [envelope] = backend.envelopes
    assert envelope.original_content == b"S: s\r\n\r\nb\r\n"


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        (("127.0.0.1", 1), "127.0.0.1"),
        (("::1", 1, 0, 0), "::1"),
        (["192.0.2.1", 1], "192.0.2.1"),
        ("", ""),
        ((), ""),
        (None, ""),
        ("/run/x.sock", "/run/x.sock"),
        ("evil\r\nX: y", "evil??X: y"),
    ],
)
def test_proxy_peer_host(peer: Any, host: str) -> None:
    assert handlers._peer_host(peer) == host


def wait_for_greeting(port: int, process: subprocess.Popen[bytes]) -> None:
    """Poll until a freshly started server answers with its 220 greeting."""
    while True:
        try:
            with closing(socket.create_connection(("127.0.0.1", port), timeout=30)) as s:
                if s.recv(1024).startswith(b"220"):
                    return
        except ConnectionRefusedError:
            assert process.poll() is None, "server process exited early"
            time.sleep(0.01)  # polling interval, not synchronisation


def test_proxy_to_postfix_smtp_sink() -> None:
    from tests._postfix import postfix_tool

    tool = postfix_tool("smtp-sink")
    if tool is None:
        pytest.skip("Postfix smtp-sink not available (python3 tests/_postfix.py --fetch)")
    # Not tmp_path: as root smtp-sink runs as nobody, which cannot enter
    # pytest's private temporary tree.
    with tempfile.TemporaryDirectory() as dump_dir:
        os.chmod(dump_dir, 0o777)
        port = closed_port()
        argv = [*tool.argv, *tool.root_args, "-d", f"{dump_dir}/msg", f"127.0.0.1:{port}", "10"]
        sink = subprocess.Popen(argv, env=tool.env)
        try:
            wait_for_greeting(port, sink)
            proxy = Proxy("127.0.0.1", port)
            with smtp_server(proxy) as front, closing(client(front)) as smtp:
                assert smtp.sendmail("a@x", ["b@x", "c@x"], b"Subject: s\r\n\r\nbody\r\n") == {}
        finally:
            sink.terminate()
            sink.wait()
        [dump] = list(Path(dump_dir).iterdir())
        text = dump.read_text()
    # smtp-sink writes its dump with LF line ends and its own headers first.
    assert "X-Mail-Args: <a@x>\n" in text
    assert "<b@x>" in text and "<c@x>" in text
    assert text.endswith("Subject: s\nX-Peer: 127.0.0.1\n\nbody\n\n")


# ---------------------------------------------------------------- Message


class Collector(Message):
    def __init__(self, message_class: type[email.message.Message] | None = None) -> None:
        super().__init__(message_class)
        self.messages: list[email.message.Message] = []

    def handle_message(self, message: email.message.Message) -> None:
        self.messages.append(message)


class AsyncCollector(AsyncMessage):
    def __init__(self, message_class: type[email.message.Message] | None = None, **kw: Any) -> None:
        super().__init__(message_class, **kw)
        self.messages: list[email.message.Message] = []

    async def handle_message(self, message: email.message.Message) -> None:
        await asyncio.sleep(0)  # a real suspension point inside the hook
        self.messages.append(message)


@pytest.mark.parametrize("handler_class", [Collector, AsyncCollector])
def test_message_handlers_receive_email_messages(handler_class: Any) -> None:
    handler = handler_class(EmailMessage)
    with smtp_server(handler) as server, closing(client(server)) as smtp:
        smtp.sendmail("a@x", ["b@x", "c@x"], b"Subject: hi\r\nX-Peer: old\r\n\r\nbody\r\n")
        peer = smtp.sock.getsockname()
    [message] = handler.messages
    assert isinstance(message, EmailMessage)
    assert message.items() == [
        ("Subject", "hi"),
        ("X-Peer", "old"),
        ("X-Peer", str(peer)),
        ("X-MailFrom", "a@x"),
        ("X-RcptTo", "b@x, c@x"),
    ]
    assert message.get_payload() == "body\r\n"


def test_message_default_class_and_str_content() -> None:
    handler = Collector()
    with smtp_server(handler, decode_data=True) as server, closing(client(server)) as smtp:
        smtp.sendmail("a@x", ["b@x"], b"Subject: hi\r\n\r\nbody\r\n")
    [message] = handler.messages
    assert type(message) is email.message.Message
    assert message["X-RcptTo"] == "b@x"


@pytest.mark.parametrize("content", [b"", bytearray(), ""])
def test_prepare_message_empty_content(content: Any) -> None:
    envelope = make_envelope(content, rcpt_tos=())
    message = Collector().prepare_message(make_session(("192.0.2.10", 4321)), envelope)
    assert message.keys() == ["X-Peer", "X-MailFrom", "X-RcptTo"]
    assert message["X-Peer"] == "('192.0.2.10', 4321)"
    assert message["X-RcptTo"] == ""
    assert message.get_payload() == ""


@pytest.mark.parametrize(
    ("content", "type_repr"),
    [(None, "<class 'NoneType'>"), ([b"x"], "<class 'list'>"), ({}, "<class 'dict'>")],
)
def test_prepare_message_rejects_other_types(content: Any, type_repr: str) -> None:
    with pytest.raises(TypeError) as exc:
        Collector().prepare_message(make_session(), make_envelope(content))
    assert str(exc.value) == f"Expected str or bytes, got {type_repr}"


def test_prepare_message_none_peer() -> None:
    message = Collector().prepare_message(make_session(None), make_envelope(b"S: x\r\n\r\n"))
    assert message["X-Peer"] == "None"


def test_handle_message_exception_reaches_client() -> None:
    class Broken(Message):
        def handle_message(self, message: email.message.Message) -> None:
            raise ValueError("boom")

    with smtp_server(Broken()) as server, closing(client(server)) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            smtp.sendmail("a@x", ["b@x"], b"S: x\r\n\r\nb\r\n")
    assert (exc.value.smtp_code, exc.value.smtp_error) == (500, b"Error: (ValueError) boom")


@pytest.mark.parametrize("abstract", [handlers.MessageBase, Message, AsyncMessage])
def test_abstract_classes(abstract: Any) -> None:
    with pytest.raises(TypeError, match="abstract"):
        abstract()


def test_async_message_loop_selection() -> None:
    explicit = asyncio.new_event_loop()
    try:
        assert AsyncCollector(loop=explicit).loop is explicit
    finally:
        explicit.close()

    async def inside() -> tuple[Any, Any]:
        return AsyncCollector().loop, asyncio.get_running_loop()

    handler_loop, running = asyncio.run(inside())
    assert handler_loop is running


def test_async_message_creates_loop_in_fresh_thread() -> None:
    seen: dict[str, Any] = {}

    def worker() -> None:
        handler = AsyncCollector()
        seen["loop"] = handler.loop
        seen["current"] = asyncio.get_event_loop()
        handler.loop.close()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["loop"] is seen["current"]


# ---------------------------------------------------------------- Mailbox


def test_mailbox_stores_messages(tmp_path: Path) -> None:
    mail_dir = tmp_path / "Maildir"
    handler = Mailbox(mail_dir)
    assert handler.mail_dir is mail_dir
    for sub in ("cur", "new", "tmp"):
        assert (mail_dir / sub).is_dir()
    with smtp_server(handler) as server, closing(client(server)) as smtp:
        smtp.sendmail("a@x", ["b@x"], b"Subject: one\r\n\r\nfirst\r\n")
        smtp.sendmail("c@x", ["d@x", "e@x"], b"Subject: two\r\n\r\nsecond\r\n")
        peer = str(smtp.sock.getsockname())
    stored = sorted(mailbox.Maildir(mail_dir), key=lambda m: str(m["Subject"]))
    assert [(m["Subject"], m["X-MailFrom"], m["X-RcptTo"], m["X-Peer"]) for m in stored] == [
        ("one", "a@x", "b@x", peer),
        ("two", "c@x", "d@x, e@x", peer),
    ]
    assert stored[0].get_payload() == "first\n"
    handler.reset()
    assert len(mailbox.Maildir(mail_dir)) == 0


def test_mailbox_from_cli(tmp_path: Path) -> None:
    parser = RaisingParser()
    handler = Mailbox.from_cli(parser, str(tmp_path / "md"))
    assert handler.mail_dir == str(tmp_path / "md")
    assert (tmp_path / "md" / "new").is_dir()
    with pytest.raises(ParserError, match="^The directory for the maildir is required$"):
        Mailbox.from_cli(parser)
    with pytest.raises(ParserError, match="^Too many arguments for Mailbox handler$"):
        Mailbox.from_cli(parser, "a", "b")
    assert not Path("a").exists()
