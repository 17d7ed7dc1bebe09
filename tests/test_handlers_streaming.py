"""The streaming built-in handlers (``handle_DATA_STREAM``): ``Maildir``, ``StreamingProxy``.

End to end over loopback through the project's Controller, plus a few tests
that drive the hook directly with a hand-made body where a real client
cannot produce the situation (a write failing, a cancellation).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hashlib
import mailbox
import os
import re
import smtplib
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from aiosmtpd import handlers
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import (
    RELAY_PERMFAIL,
    RELAY_TEMPFAIL,
    STORE_TEMPFAIL,
    Maildir,
    StreamingProxy,
)
from aiosmtpd.smtp import SMTP, Envelope, MessageAborted, Session
from tests._server import Recorder

REPO = Path(__file__).resolve().parent.parent
# Guards every wait against a hung test; nothing is timed.
WAIT = 60


@contextlib.contextmanager
def controller(handler: Any, **kwargs: Any) -> Iterator[Controller]:
    server = Controller(handler, hostname="127.0.0.1", port=0, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def client(server: Controller) -> smtplib.SMTP:
    return smtplib.SMTP(server.hostname, server.port, timeout=WAIT)


def files(mail_dir: Path, sub: str) -> list[Path]:
    return sorted((mail_dir / sub).iterdir())


def trace(peer: Any, mail_from: str, rcpt_tos: str) -> bytes:
    return f"X-Peer: {peer}\r\nX-MailFrom: {mail_from}\r\nX-RcptTo: {rcpt_tos}\r\n".encode()


class Watched(Maildir):
    """A Maildir that reports how each message ended and what it was handed.

    ``done`` is set when ``handle_DATA_STREAM`` has returned or raised (the
    outcome in ``outcomes``); ``largest_chunk`` is the largest chunk the body
    yielded.
    """

    def __init__(self, mail_dir: Path) -> None:
        super().__init__(mail_dir)
        self.done = threading.Event()
        self.outcomes: list[Any] = []
        self.largest_chunk = 0
        self.chunks = 0

    async def _watch(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in body:
            self.largest_chunk = max(self.largest_chunk, len(chunk))
            self.chunks += 1
            yield chunk

    async def handle_DATA_STREAM(
        self, server: SMTP, session: Session, envelope: Envelope, body: Any
    ) -> str:
        watched = self._watch(body)
        try:
            reply = await super().handle_DATA_STREAM(server, session, envelope, watched)
        except BaseException as error:
            self.outcomes.append(error)
            raise
        else:
            self.outcomes.append(reply)
            return reply
        finally:
            await watched.aclose()
            self.done.set()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch the Maildir handler writes (in order)."""
    sizes: list[int] = []
    real = handlers._MaildirDelivery.write

    def write(self: Any, data: bytes) -> None:
        real(self, data)
        sizes.append(len(data))

    monkeypatch.setattr(handlers._MaildirDelivery, "write", write)
    return sizes


# ------------------------------------------------------------ end to end


def test_maildir_stores_byte_exact_with_trace_headers(tmp_path: Path) -> None:
    mail_dir = tmp_path / "Maildir"
    handler = Maildir(mail_dir)
    assert handler.mail_dir is mail_dir
    assert isinstance(handler.mailbox, mailbox.Maildir)
    for sub in ("cur", "new", "tmp"):
        assert (mail_dir / sub).is_dir()
    # Bytes that are not UTF-8, a NUL, a long line and empty lines: all kept.
    message = (
        b"Subject: exact\r\nX-Bin: \xff\xfe\x00\r\n\r\n"
        + b"a" * 990
        + b"\r\n\r\n\r\nlast line\r\n"
    )
    with controller(handler) as server, contextlib.closing(client(server)) as smtp:
        assert smtp.sendmail("anne@example.com", ["bart@x", "cate@y"], message) == {}
        peer = smtp.sock.getsockname()
    assert files(mail_dir, "tmp") == []
    [stored] = files(mail_dir, "new")
    assert stored.read_bytes() == trace(peer, "anne@example.com", "bart@x, cate@y") + message
    # The standard library reads it back, trace headers first.
    [(key, read)] = list(mailbox.Maildir(mail_dir).items())
    assert key == stored.name
    assert read["Subject"] == "exact"
    assert (read["X-Peer"], read["X-MailFrom"], read["X-RcptTo"]) == (
        str(peer),
        "anne@example.com",
        "bart@x, cate@y",
    )
    assert read.keys()[:3] == ["X-Peer", "X-MailFrom", "X-RcptTo"]


def test_maildir_names_are_unique_and_in_mailbox_format(tmp_path: Path) -> None:
    handler = Maildir(tmp_path)
    with controller(handler) as server, contextlib.closing(client(server)) as smtp:
        for i in range(20):
            smtp.sendmail("a@x", ["b@x"], f"Subject: {i}\r\n\r\n{i}\r\n")
    names = [p.name for p in files(tmp_path, "new")]
    assert len(set(names)) == 20
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
    pattern = re.compile(rf"[0-9]+\.M[0-9]+P{os.getpid()}Q[0-9]+\.{re.escape(host)}")
    for name in names:
        assert pattern.fullmatch(name), name
    subjects = sorted(int(m["Subject"]) for m in mailbox.Maildir(tmp_path))
    assert subjects == list(range(20))


def test_maildir_dot_stuffing_removed(tmp_path: Path) -> None:
    handler = Maildir(tmp_path)
    with controller(handler) as server, socket.create_connection(
        (server.hostname, server.port), timeout=WAIT
    ) as sock:
        reader = sock.makefile("rb")

        def reply() -> bytes:
            line = reader.readline()
            while line[3:4] == b"-":
                line = reader.readline()
            return line

        assert reply().startswith(b"220")
        for command, code in [
            (b"EHLO c.example", b"250"),
            (b"MAIL FROM:<a@x>", b"250"),
            (b"RCPT TO:<b@x>", b"250"),
            (b"DATA", b"354"),
        ]:
            sock.sendall(command + b"\r\n")
            assert reply().startswith(code)
        # As the client must send them: every line starting with a dot gets
        # one more; a dot alone would end the message.
        sock.sendall(b"Subject: dots\r\n\r\n..\r\n...leading\r\n..x.\r\nmid.dle\r\n.\r\n")
        assert reply().startswith(b"250")
        sock.sendall(b"QUIT\r\n")
        assert reply().startswith(b"221")
        peer = sock.getsockname()
    [stored] = files(tmp_path, "new")
    assert stored.read_bytes() == trace(peer, "a@x", "b@x") + (
        b"Subject: dots\r\n\r\n.\r\n..leading\r\n.x.\r\nmid.dle\r\n"
    )


def test_maildir_bdat_chunks(tmp_path: Path) -> None:
    handler = Maildir(tmp_path)
    message = b"Subject: bdat\r\n\r\n.not stuffed\r\n\x00binary\xff\r\n"
    with controller(handler, enable_CHUNKING=True) as server, contextlib.closing(
        client(server)
    ) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("chunking")
        assert smtp.mail("a@x")[0] == 250
        assert smtp.rcpt("b@x")[0] == 250
        for start in range(0, len(message), 10):
            piece = message[start : start + 10]
            smtp.send(b"BDAT %d\r\n" % len(piece) + piece)
            assert smtp.getreply()[0] == 250
        smtp.send(b"BDAT 0 LAST\r\n")
        assert smtp.getreply() == (250, b"OK")
        peer = smtp.sock.getsockname()
    [stored] = files(tmp_path, "new")
    assert stored.read_bytes() == trace(peer, "a@x", "b@x") + message


def test_maildir_64_mib_message_memory_bounded(tmp_path: Path, writes: list[int]) -> None:
    handler = Watched(tmp_path)
    line = b"x" * 78 + b"\r\n"
    message = b"Subject: big\r\n\r\n" + line * (64 * 1024 * 1024 // len(line))
    expected = hashlib.sha256(message).hexdigest()
    with controller(handler, data_size_limit=None) as server, contextlib.closing(
        client(server)
    ) as smtp:
        assert smtp.sendmail("a@x", ["b@x"], message) == {}
        trace_size = len(trace(smtp.sock.getsockname(), "a@x", "b@x"))
    del message
    assert handler.outcomes == ["250 OK"]
    [stored] = files(tmp_path, "new")
    digest = hashlib.sha256()
    with stored.open("rb") as f:
        f.seek(trace_size)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    assert digest.hexdigest() == expected
    # The message came in many chunks and left in many batches; the most
    # the handler ever held at once is one batch: below write_size plus
    # the chunk that filled it.
    assert handler.chunks > 64
    assert len(writes) > 64
    assert sum(writes) + trace_size == stored.stat().st_size
    assert max(writes) < handler.write_size + handler.largest_chunk
    # ... and the server hands over what it read, not the whole message.
    assert handler.largest_chunk <= 4 * 1024 * 1024


def test_maildir_client_vanishes_mid_message(tmp_path: Path, writes: list[int]) -> None:
    handler = Watched(tmp_path)
    handler.write_size = 4096
    with controller(handler) as server:
        smtp = client(server)
        smtp.ehlo()
        smtp.mail("a@x")
        smtp.rcpt("b@x")
        assert smtp.putcmd("data") is None
        assert smtp.getreply()[0] == 354
        smtp.send(b"Subject: partial\r\n\r\n" + b"y" * 78 + b"\r\n" * 2000)
        # Keep sending until the handler has written some of it to disk, so
        # that there is a partial file to clean up.
        while not writes:
            smtp.send(b"z" * 78 + b"\r\n")
        assert len(files(tmp_path, "tmp")) == 1
        smtp.close()  # no final dot: the client is gone
        assert handler.done.wait(WAIT)
    [outcome] = handler.outcomes
    assert isinstance(outcome, MessageAborted)
    assert isinstance(outcome.reason, str)
    assert files(tmp_path, "tmp") == []
    assert files(tmp_path, "new") == []


def test_maildir_message_over_size_limit(tmp_path: Path, writes: list[int]) -> None:
    handler = Watched(tmp_path)
    handler.write_size = 1024
    with controller(handler, data_size_limit=500_000) as server, contextlib.closing(
        client(server)
    ) as smtp:
        # Without SIZE=, so that the limit is only found in the data.
        smtp.ehlo()
        assert smtp.mail("a@x")[0] == 250
        assert smtp.rcpt("b@x")[0] == 250
        smtp.putcmd("data")
        assert smtp.getreply()[0] == 354
        smtp.send(b"Subject: huge\r\n\r\n")
        line = b"w" * 98 + b"\r\n"
        while not writes:  # until a partial file is on disk
            smtp.send(line)
        smtp.send(line * 6000 + b".\r\n")
        assert smtp.getreply() == (552, b"Error: Too much mail data")
        assert handler.done.wait(WAIT)
        # The session goes on.
        assert smtp.noop()[0] == 250
    [outcome] = handler.outcomes
    assert isinstance(outcome, MessageAborted)
    assert outcome.reason == "message too big"
    assert files(tmp_path, "tmp") == []
    assert files(tmp_path, "new") == []


def test_maildir_fsyncs_file_and_directory_before_250(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[tuple[str, int]] = []
    real_fsync = os.fsync

    def fsync(fd: Any) -> None:
        info = os.fstat(fd)
        synced.append(("dir" if stat.S_ISDIR(info.st_mode) else "file", info.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    handler = Maildir(tmp_path)
    with controller(handler) as server, contextlib.closing(client(server)) as smtp:
        assert smtp.sendmail("a@x", ["b@x"], b"Subject: durable\r\n\r\nx\r\n") == {}
        # Read as soon as the 250 is in: both syncs happened before it.
        seen = list(synced)
    [stored] = files(tmp_path, "new")
    assert seen == [
        ("file", stored.stat().st_ino),
        ("dir", (tmp_path / "new").stat().st_ino),
    ]


def test_maildir_cli(tmp_path: Path) -> None:
    mail_dir = tmp_path / "cli-maildir"
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [
        sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}",
        "-c", "aiosmtpd.handlers.Maildir", str(mail_dir),
    ]  # fmt: skip
    process = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        while True:
            try:
                smtp = smtplib.SMTP("127.0.0.1", port, timeout=WAIT)
                break
            except ConnectionRefusedError:
                assert process.poll() is None, process.communicate()
                time.sleep(0.01)  # polling interval, not synchronisation
        with contextlib.closing(smtp):
            assert smtp.sendmail("a@x", ["b@x"], b"Subject: from the cli\r\n\r\nhi\r\n") == {}
            smtp.quit()
    finally:
        process.terminate()
        process.communicate(timeout=WAIT)
    [message] = list(mailbox.Maildir(mail_dir))
    assert (message["Subject"], message["X-MailFrom"], message["X-RcptTo"]) == (
        "from the cli",
        "a@x",
        "b@x",
    )


# ------------------------------------------------------------ the hook, driven directly


class FakeAbort(Exception):
    """Stands for what a message stream raises when it breaks off."""


async def stream(*chunks: bytes, fail: BaseException | None = None) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    if fail is not None:
        raise fail


def call(handler: Maildir, body: AsyncIterator[bytes]) -> Any:
    async def main() -> Any:
        session = Session(asyncio.get_running_loop())
        session.peer = ("192.0.2.1", 25)
        envelope = Envelope()
        envelope.mail_from = "a@x"
        envelope.rcpt_tos = ["b@x"]
        return await handler.handle_DATA_STREAM(None, session, envelope, body)  # type: ignore[arg-type]

    return asyncio.run(main())


def test_maildir_hook_joins_small_chunks_into_batches(tmp_path: Path, writes: list[int]) -> None:
    handler = Maildir(tmp_path)
    handler.write_size = 100
    chunks = [bytes([65 + i % 26]) * 30 for i in range(10)]
    assert call(handler, stream(*chunks)) == "250 OK"
    assert writes == [120, 120, 60]
    [stored] = files(tmp_path, "new")
    assert stored.read_bytes() == trace(("192.0.2.1", 25), "a@x", "b@x") + b"".join(chunks)


def test_maildir_hook_discards_when_the_stream_breaks(tmp_path: Path, writes: list[int]) -> None:
    handler = Maildir(tmp_path)
    handler.write_size = 10
    with pytest.raises(FakeAbort):
        call(handler, stream(b"x" * 50, b"y" * 50, fail=FakeAbort("gone")))
    assert writes == [50, 50]
    assert files(tmp_path, "tmp") == []
    assert files(tmp_path, "new") == []


def test_maildir_hook_write_error_is_a_temporary_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    handler = Maildir(tmp_path)
    handler.write_size = 10
    real_write = handlers._MaildirDelivery._write
    calls = []

    def write(self: Any, data: bytes) -> None:
        calls.append(len(data))
        if len(calls) > 1:  # the trace headers go through, the message not
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, data)

    monkeypatch.setattr(handlers._MaildirDelivery, "_write", write)
    # More is offered than is read: the hook stops at the failure.
    assert call(handler, stream(b"a" * 20, b"b" * 20)) == STORE_TEMPFAIL
    assert STORE_TEMPFAIL.startswith("451 4.3.0 ")
    assert "No space left on device" in caplog.text
    assert files(tmp_path, "tmp") == []
    assert files(tmp_path, "new") == []


def test_maildir_hook_cancelled_leaves_nothing(tmp_path: Path) -> None:
    handler = Maildir(tmp_path)
    handler.write_size = 10

    async def main() -> None:
        written = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield b"x" * 20
            # The next step runs after the batch was written.
            written.set()
            await asyncio.Event().wait()  # the client stalls
            yield b"never"

        session = Session(asyncio.get_running_loop())
        task = asyncio.ensure_future(
            handler.handle_DATA_STREAM(None, session, Envelope(), body())  # type: ignore[arg-type]
        )
        await written.wait()
        assert len(files(tmp_path, "tmp")) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert files(tmp_path, "tmp") == []
    assert files(tmp_path, "new") == []


def test_maildir_trace_headers_mask_control_characters(tmp_path: Path) -> None:
    handler = Maildir(tmp_path)
    session = Session(None)  # type: ignore[arg-type]
    session.peer = "evil\r\nX-Injected: 1"
    envelope = Envelope()
    envelope.mail_from = "ä@x\n"
    envelope.rcpt_tos = ["b@x", "c@\x7fx"]
    assert handler.trace_headers(session, envelope) == (
        b"X-Peer: evil??X-Injected: 1\r\nX-MailFrom: \xc3\xa4@x?\r\nX-RcptTo: b@x, c@?x\r\n"
    )
    envelope.mail_from = None
    assert b"X-MailFrom: \r\n" in handler.trace_headers(session, envelope)


class Overridden(Maildir):
    def trace_headers(self, session: Session, envelope: Envelope) -> bytes:
        return b""


def test_maildir_trace_headers_overridable(tmp_path: Path) -> None:
    assert call(Overridden(tmp_path), stream(b"Subject: s\r\n\r\nbody\r\n")) == "250 OK"
    [stored] = files(tmp_path, "new")
    assert stored.read_bytes() == b"Subject: s\r\n\r\nbody\r\n"


class RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise ValueError(message)


def test_maildir_from_cli(tmp_path: Path) -> None:
    parser = RaisingParser()
    handler = Maildir.from_cli(parser, str(tmp_path / "md"))
    assert isinstance(handler, Maildir)
    assert handler.mail_dir == str(tmp_path / "md")
    assert (tmp_path / "md" / "new").is_dir()
    with pytest.raises(ValueError, match="^The directory for the maildir is required$"):
        Maildir.from_cli(parser)
    with pytest.raises(ValueError, match="^Too many arguments for Maildir handler$"):
        Maildir.from_cli(parser, "a", "b")


def test_streaming_handlers_are_importable_by_name_only() -> None:
    # handlers.__all__ stays 1.4.6's (docs/handlers.rst).
    assert "Maildir" not in handlers.__all__ and "StreamingProxy" not in handlers.__all__
    assert handlers.Maildir is Maildir and handlers.StreamingProxy is StreamingProxy
    for cls in (Maildir, StreamingProxy):
        assert hasattr(cls, "handle_DATA_STREAM")
        assert not hasattr(cls, "handle_DATA")


# ------------------------------------------------------------ StreamingProxy


def wire_form(message: bytes) -> bytes:
    """What smtplib sends between DATA and the final dot for *message* as text
    (as bytes it would leave bare CRs and LFs alone)."""
    text = smtplib._fix_eols(message.decode("latin-1"))  # type: ignore[attr-defined]
    quoted: bytes = smtplib._quote_periods(text.encode("latin-1"))  # type: ignore[attr-defined]
    return quoted if quoted.endswith(b"\r\n") else quoted + b"\r\n"


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"a",
        b".",
        b"..\r\n",
        b"Subject: s\r\n\r\n.dot\r\n..two\r\nx.y\r\n",
        b"bare\nlf\n.after lf\rcr\r.after cr\r\n\r\n.",
        b"\r\r\n\n\r.\r\n.\n.\r",
        b"no end of line",
    ],
)
def test_dot_stuffer_equals_smtplib_for_every_split(message: bytes) -> None:
    expected = wire_form(message) + b".\r\n" if message else b".\r\n"
    for i in range(len(message) + 1):
        for j in range(i, len(message) + 1):
            stuffer = handlers._DotStuffer()
            pieces = [message[:i], message[i:j], message[j:]]
            out = b"".join(stuffer.feed(p) for p in pieces) + stuffer.end()
            assert out == expected, (i, j)


class Refusing(Recorder):
    """Refuses recipients starting with ``bad`` (550) or ``later`` (450),
    senders starting with ``no`` (553), and messages with ``reject``."""

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.startswith("no"):
            return "553 5.7.1 sender refused"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.startswith("bad"):
            return "550 5.1.1 no such user"
        if address.startswith("later"):
            return "450 4.2.0 mailbox busy"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert envelope.content is not None
        if b"reject" in envelope.content:
            return "554 5.6.0 content refused"
        return await super().handle_DATA(server, session, envelope)


@contextlib.contextmanager
def relay_pair(
    upstream_handler: Any, **relay_kwargs: Any
) -> Iterator[tuple[Controller, Controller]]:
    with controller(upstream_handler, data_size_limit=None) as upstream:
        proxy = StreamingProxy(upstream.hostname, upstream.port, timeout=WAIT)
        with controller(proxy, **relay_kwargs) as relay:
            yield relay, upstream


def test_streaming_proxy_relays_with_x_peer_first() -> None:
    recorder = Recorder()
    message = b"Subject: relayed\r\n\r\n.leading dot\r\n..two\r\n\xffbinary\r\nend\r\n"
    with relay_pair(recorder) as (relay, _), contextlib.closing(client(relay)) as smtp:
        assert smtp.sendmail("anne@x", ["bart@y", "cate@z"], message) == {}
    [envelope] = recorder.envelopes
    assert envelope.mail_from == "anne@x"
    assert envelope.rcpt_tos == ["bart@y", "cate@z"]
    assert envelope.mail_options == []  # the client's SIZE= is not passed on
    assert envelope.original_content == b"X-Peer: 127.0.0.1\r\n" + message


def test_streaming_proxy_some_recipients_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="mail.debug")
    recorder = Refusing()
    with relay_pair(recorder) as (relay, _), contextlib.closing(client(relay)) as smtp:
        rcpt_tos = ["bad@x", "good@x", "later@x"]
        assert smtp.sendmail("a@x", rcpt_tos, b"Subject: s\r\n\r\nb\r\n") == {}
    [envelope] = recorder.envelopes
    assert envelope.rcpt_tos == ["good@x"]
    assert "'bad@x': (550, b'5.1.1 no such user')" in caplog.text
    assert "'later@x': (450, b'4.2.0 mailbox busy')" in caplog.text


@pytest.mark.parametrize(
    ("mail_from", "rcpt_tos", "body", "reply"),
    [
        ("a@x", ["bad@x", "bad2@x"], b"x\r\n", RELAY_PERMFAIL),
        ("a@x", ["bad@x", "later@x"], b"x\r\n", RELAY_TEMPFAIL),
        ("no@x", ["good@x"], b"x\r\n", RELAY_PERMFAIL),
        ("a@x", ["good@x"], b"please reject\r\n", RELAY_PERMFAIL),
    ],
    ids=["all-refused", "all-refused-one-temporary", "sender-refused", "data-refused"],
)
def test_streaming_proxy_refusals(
    mail_from: str, rcpt_tos: list[str], body: bytes, reply: str
) -> None:
    recorder = Refusing()
    with relay_pair(recorder) as (relay, _), contextlib.closing(client(relay)) as smtp:
        smtp.ehlo()
        assert smtp.mail(mail_from)[0] == 250
        for rcpt in rcpt_tos:
            assert smtp.rcpt(rcpt)[0] == 250
        code, text = smtp.data(b"Subject: s\r\n\r\n" + body)
        assert f"{code} {text.decode()}" == reply
        # The session goes on, and so does the upstream's.
        assert smtp.noop()[0] == 250
    assert recorder.envelopes == []


def test_streaming_proxy_unreachable_upstream() -> None:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with controller(StreamingProxy("127.0.0.1", port, timeout=WAIT)) as relay, contextlib.closing(
        client(relay)
    ) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as raised:
            smtp.sendmail("a@x", ["b@x"], b"Subject: s\r\n\r\nb\r\n")
        assert (raised.value.smtp_code, raised.value.smtp_error) == (
            451,
            b"4.4.1 Error: relay failed, try again later",
        )


class StreamRecorder:
    """An upstream server's stream hook: digest, size, largest chunk, outcome."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcomes: list[Any] = []
        self.digests: list[str] = []

    async def handle_DATA_STREAM(
        self, server: SMTP, session: Session, envelope: Envelope, body: Any
    ) -> str:
        digest = hashlib.sha256()
        try:
            async for chunk in body:
                digest.update(chunk)
        except BaseException as error:
            self.outcomes.append(error)
            raise
        finally:
            self.done.set()
        self.outcomes.append("250 OK")
        self.digests.append(digest.hexdigest())
        return "250 OK"


def test_streaming_proxy_64_mib_memory_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[int] = []
    real_send = handlers._Upstream.send

    async def send(self: Any, data: bytes) -> None:
        sent.append(len(data))
        await real_send(self, data)

    monkeypatch.setattr(handlers._Upstream, "send", send)
    upstream = StreamRecorder()
    line = b"." + b"y" * 77 + b"\r\n"  # every line stuffed on both hops
    message = b"Subject: big\r\n\r\n" + line * (64 * 1024 * 1024 // len(line))
    with relay_pair(upstream, data_size_limit=None) as (relay, _), contextlib.closing(
        client(relay)
    ) as smtp:
        assert smtp.sendmail("a@x", ["b@x"], message) == {}
    assert upstream.outcomes == ["250 OK"]
    assert upstream.digests == [hashlib.sha256(b"X-Peer: 127.0.0.1\r\n" + message).hexdigest()]
    # Forwarded piece by piece: the most held at once is one chunk (stuffed).
    assert len(sent) > 64
    assert max(sent) <= 8 * 1024 * 1024


def test_streaming_proxy_client_vanishes_upstream_discards() -> None:
    upstream = StreamRecorder()
    with relay_pair(upstream) as (relay, _):
        smtp = client(relay)
        smtp.ehlo()
        smtp.mail("a@x")
        smtp.rcpt("b@x")
        smtp.putcmd("data")
        assert smtp.getreply()[0] == 354
        smtp.send(b"Subject: partial\r\n\r\n" + b"y" * 78 + b"\r\n" * 1000)
        smtp.close()  # gone without the final dot
        assert upstream.done.wait(WAIT)
    # The upstream server saw its client (the relay) vanish mid-message too.
    [outcome] = upstream.outcomes
    assert isinstance(outcome, MessageAborted)
    assert upstream.digests == []
