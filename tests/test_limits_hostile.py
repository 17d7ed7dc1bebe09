"""Limits against hostile clients: each hostile client is refused or cut
off, the server's memory for it stays bounded, and a well-behaved client is
served normally while the attack is under way.

The slow clients (slowloris) really are slow: their sleeps are the attack
being simulated, not synchronisation; every wait for the server is bounded
by a deadline and ends as soon as the server acts.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import time
from collections.abc import Iterator
from typing import Any, Optional, Union

import pytest

from aiosmtpd.smtp import SMTP
from tests._hostile import Sink, message, report
from tests._server import IO_TIMEOUT, LoopThread, RawClient, Server, serving, wait_for

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20


class Watched(SMTP):
    """Records the peak size of its receive and send buffers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peak_rx = 0
        self.peak_tx = 0

    def _note(self) -> None:
        self.peak_rx = max(self.peak_rx, len(self._receiver.buf))
        if self.transport is not None:
            size = self.transport.get_write_buffer_size()  # type: ignore[attr-defined]
            self.peak_tx = max(self.peak_tx, size)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._note()

    async def push(self, status: Union[str, bytes]) -> None:
        await super().push(status)
        self._note()


@pytest.fixture(scope="module")
def lt() -> Iterator[LoopThread]:
    t = LoopThread()
    yield t
    t.close()


@contextlib.contextmanager
def hostile_server(lt: LoopThread, **kwargs: Any) -> Iterator[tuple[Server, Sink]]:
    sink = Sink()
    with serving(lt, sink, cls=Watched, **kwargs) as server:
        yield server, sink


_serial = iter(range(10**9))


def good_client(server: Server, sink: Sink) -> None:
    """A normal client completes a transaction; its message arrives once."""
    msg_id = f"good-{next(_serial)}"
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="good.example",
                      timeout=IO_TIMEOUT) as s:
        s.sendmail("a@example.com", ["b@example.com"], message(msg_id))
    assert sink.ids[msg_id] == 1


def protocol_of(server: Server, index: int) -> Watched:
    proto = server.protocols[index]
    assert isinstance(proto, Watched)
    return proto


def wait_closed(sock: socket.socket, deadline: float = IO_TIMEOUT,
                keep_sending: Optional[bytes] = None, pause: float = 0.0) -> bytes:
    """Read (optionally while still sending) until the server closes the
    connection; return what it said.  Fails if it never does."""
    sock.settimeout(0.05)
    received = b""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if keep_sending:
                sock.sendall(keep_sending)
                if pause:
                    time.sleep(pause)  # the hostile client's slowness
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
        except socket.timeout:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return received
    raise AssertionError(f"server never cut the client off; it said {received!r}")


def begin_data(c: RawClient) -> None:
    c.cmd("HELO hostile.example")
    c.cmd("MAIL FROM:<h@example.com>")
    c.cmd("RCPT TO:<v@example.com>")
    assert c.cmd("DATA") == "354 End data with <CR><LF>.<CR><LF>"


# -- Line and size limits -----------------------------------------------------


def test_endless_command_line_is_discarded_then_timed_out(lt: LoopThread) -> None:
    with hostile_server(lt, timeout=1.0) as (server, sink):
        hostile = server.client()
        chunk = b"A" * 65536
        for _ in range(320):  # 20 MiB, no LF
            hostile.send(chunk)
        good_client(server, sink)
        hostile.send(b"\r\n")
        assert hostile.text() == "500 Command line too long"
        # Still no recognised command: the inactivity timer cuts it off
        # however much it keeps sending.
        wait_closed(hostile.sock, keep_sending=chunk)
        proto = protocol_of(server, 0)
        assert proto.peak_rx < 2 * MIB, proto.peak_rx
        good_client(server, sink)
    report("limits_command_line", hostile_bytes=20 * MIB, peak_buffer=proto.peak_rx)


def test_huge_parameters_are_refused(lt: LoopThread) -> None:
    with hostile_server(lt) as (server, sink), server.client() as hostile:
        hostile.multi("EHLO hostile.example")
        for line in (
            b"MAIL FROM:<a@b> SIZE=" + b"9" * 100000,
            b"MAIL FROM:<" + b"a" * 600 + b"@b>",
            b"RCPT TO:<" + b"x" * 5000 + b">",
            b"AUTH PLAIN " + b"A" * 200000,
            b"NOOP " + b"\x00" * 100000,
        ):
            assert hostile.cmd(line) == "500 Command line too long"
            good_client(server, sink)
        assert hostile.cmd("NOOP") == "250 OK"
        assert protocol_of(server, 0).peak_rx < MIB


def test_data_flood_past_size_limit(lt: LoopThread) -> None:
    with hostile_server(lt, data_size_limit=MIB) as (server, sink):
        with server.client() as hostile:
            begin_data(hostile)
            line = b"x" * 998 + b"\r\n"
            block = line * 64
            sent = 0
            while sent < 40 * MIB:
                hostile.send(block)
                sent += len(block)
                if sent % (8 * MIB) < len(block):
                    good_client(server, sink)
            hostile.send(b".\r\n")
            assert hostile.text() == "552 Error: Too much mail data"
            assert hostile.cmd("NOOP") == "250 OK"
        proto = protocol_of(server, 0)
        # Bounded by the limit plus one socket read, not by what was sent.
        assert proto.peak_rx < 2 * MIB, proto.peak_rx
    assert sink.count == 5  # only the good clients' messages
    report("limits_data_size", hostile_bytes=sent, peak_buffer=proto.peak_rx)


def test_data_line_flood(lt: LoopThread) -> None:
    # A too-long line is only detected once the size limit is crossed or the
    # data ends, so until then the server keeps it: the bound is the size
    # limit (the default, 32 MiB, is what a valid message may take anyway).
    with hostile_server(lt, data_size_limit=2 * MIB) as (server, sink):
        with server.client() as hostile:
            begin_data(hostile)
            chunk = b"y" * 65536
            for i in range(480):  # 30 MiB, a single line
                hostile.send(chunk)
                if i % 160 == 0:
                    good_client(server, sink)
            hostile.send(b"\r\n.\r\n")
            assert hostile.text() == "500 Line too long (see RFC5321 4.5.3.1.6)"
            assert hostile.cmd("NOOP") == "250 OK"
        assert protocol_of(server, 0).peak_rx < 3 * MIB
    assert sink.count == 3


def test_pipelining_flood_without_reading_replies(lt: LoopThread) -> None:
    """A client that pipelines commands and never reads the replies: the
    server stops reading from it instead of queueing replies without end."""
    with hostile_server(lt) as (server, sink):
        hostile = socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT)
        hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hostile.setblocking(False)
        burst = b"NOOP\r\n" * 10000
        accepted = 0
        refusals = 0
        # Push 64 MiB or until the kernel keeps refusing: the server has
        # stopped reading (kernel socket buffers hold a few MiB at most).
        while accepted < 64 * MIB and refusals < 300:
            try:
                accepted += hostile.send(burst)
            except BlockingIOError:
                refusals += 1
                if refusals % 100 == 0:
                    good_client(server, sink)
                else:
                    time.sleep(0.001)  # let the server catch up, if it will
        assert accepted < 64 * MIB, "the server read without bound"
        proto = protocol_of(server, 0)
        assert proto.peak_rx < 2 * MIB, proto.peak_rx
        proto.peak_tx = lt.call(
            lambda: proto.transport.get_write_buffer_size()  # type: ignore[union-attr]
        )
        assert proto.peak_tx < 2 * MIB, proto.peak_tx
        hostile.close()
        good_client(server, sink)
    report("limits_pipelining_flood", hostile_bytes=accepted,
           peak_rx=proto.peak_rx, peak_tx=proto.peak_tx)


# -- Counting limits ------------------------------------------------------------


def test_command_call_limit_cuts_off(lt: LoopThread) -> None:
    with hostile_server(lt, command_call_limit=10) as (server, sink):
        with server.client() as hostile:
            for _ in range(10):
                assert hostile.cmd("NOOP") == "250 OK"
            good_client(server, sink)
            assert hostile.cmd("NOOP") == "421 4.7.0 NOOP sent too many times"
            assert hostile.is_closed()
        good_client(server, sink)


def test_auth_brute_force_cut_off(lt: LoopThread) -> None:
    with hostile_server(lt, command_call_limit={"AUTH": 3}, auth_require_tls=False,
                        auth_callback=lambda *a: False) as (server, sink):
        with server.client() as hostile:
            hostile.multi("EHLO hostile.example")
            for _ in range(3):
                reply = hostile.cmd("AUTH PLAIN AHVzZXIAZ3Vlc3M=")
                assert reply == "535 5.7.8 Authentication credentials invalid"
            good_client(server, sink)
            assert hostile.cmd("AUTH PLAIN AHVzZXIAZ3Vlc3M=") == (
                "421 4.7.0 AUTH sent too many times"
            )
            assert hostile.is_closed()


def test_call_limit_reply_never_echoes_control_bytes(lt: LoopThread) -> None:
    # Found by the fuzzer: the 421 reply echoed the verb, control bytes and
    # all (a bare CR in a reply line).
    with hostile_server(lt, command_call_limit=1) as (server, sink):
        with server.client() as hostile:
            assert hostile.cmd(b"X\rY\x00") == '500 Error: command "X?Y?" not recognized'
            assert hostile.cmd(b"X\rY\x00") == "421 4.7.0 X?Y? sent too many times"


@pytest.mark.parametrize("utf8", [False, True])
def test_vrfy_reply_never_echoes_control_or_undecodable_bytes(lt: LoopThread,
                                                             utf8: bool) -> None:
    # Found by the fuzzer: "502 Could not VRFY <arg>" echoed control bytes,
    # and with SMTPUTF8 an undecodable byte made the reply raise (a 500
    # with a traceback logged at ERROR).
    with hostile_server(lt, enable_SMTPUTF8=utf8) as (server, sink):
        with server.client() as hostile:
            assert hostile.cmd(b"VRFY Z\x17@") == "502 Could not VRFY Z?@"
            if utf8:
                assert hostile.cmd(b"VRFY \xff@") == "502 Could not VRFY ?@"


def test_unrecognised_commands_cut_off(lt: LoopThread) -> None:
    with hostile_server(lt) as (server, sink):
        with server.client() as hostile:
            for i in range(4):
                assert hostile.cmd(f"BOGUS{i}").startswith("500 Error: command")
            good_client(server, sink)
            assert hostile.cmd("BOGUS") == "502 5.5.1 Too many unrecognized commands, goodbye."
            assert hostile.is_closed()
        good_client(server, sink)


# -- Inactivity timeout, slowloris ------------------------------------------------------


def test_idle_client_cut_off(lt: LoopThread) -> None:
    with hostile_server(lt, timeout=0.5) as (server, sink):
        with server.client() as hostile:
            good_client(server, sink)
            assert wait_closed(hostile.sock) == b""


def test_idle_connection_flood_is_cut_off(lt: LoopThread) -> None:
    """Hundreds of connections that never say a word: each is cut off by
    the inactivity timer, and the server frees them all."""
    with hostile_server(lt, timeout=0.5) as (server, sink):
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT)
                for _ in range(300)]
        good_client(server, sink)
        try:
            for sock in idle:
                wait_closed(sock)
        finally:
            for sock in idle:
                sock.close()

        def all_gone() -> bool:
            return all(p.transport is None for p in server.protocols)

        assert wait_for(all_gone, lt)
        good_client(server, sink)


def test_slowloris_command_line_cut_off(lt: LoopThread) -> None:
    with hostile_server(lt, timeout=0.5) as (server, sink):
        with server.client() as hostile:
            hostile.send(b"N")
            good_client(server, sink)
            # One byte every 50 ms: busy, but never a complete command.
            wait_closed(hostile.sock, keep_sending=b"O", pause=0.05)
        good_client(server, sink)


def test_slowloris_data_cut_off(lt: LoopThread) -> None:
    with hostile_server(lt, timeout=0.5) as (server, sink):
        with server.client() as hostile:
            begin_data(hostile)
            good_client(server, sink)
            # Content bytes trickle in, but no line is ever completed.
            wait_closed(hostile.sock, keep_sending=b"z", pause=0.05)
        good_client(server, sink)
    assert sink.count == 2


def test_slowloris_bare_lf_lines_in_data_cut_off(lt: LoopThread) -> None:
    # Only CRLF ends a DATA line: bare LFs earn no extra time.
    with hostile_server(lt, timeout=0.5) as (server, sink):
        with server.client() as hostile:
            begin_data(hostile)
            good_client(server, sink)
            wait_closed(hostile.sock, keep_sending=b"z\n", pause=0.05)
        good_client(server, sink)
    assert sink.count == 2


def test_slowloris_after_rejected_data_cut_off(lt: LoopThread) -> None:
    # Once the data is over the size limit it is being discarded: complete
    # lines no longer keep the connection alive.
    with hostile_server(lt, timeout=0.5, data_size_limit=100) as (server, sink):
        with server.client() as hostile:
            begin_data(hostile)
            hostile.send(b"x" * 200 + b"\r\n")
            good_client(server, sink)
            wait_closed(hostile.sock, keep_sending=b"z\r\n", pause=0.05)
        good_client(server, sink)
    assert sink.count == 2


def test_slowloris_auth_cut_off(lt: LoopThread) -> None:
    with hostile_server(lt, timeout=0.5, auth_require_tls=False) as (server, sink):
        with server.client() as hostile:
            hostile.multi("EHLO hostile.example")
            assert hostile.cmd("AUTH LOGIN") == "334 VXNlciBOYW1lAA=="
            good_client(server, sink)
            wait_closed(hostile.sock, keep_sending=b"d", pause=0.05)


# -- Regressions of gaps found by these tests --------------------------------------


def test_data_line_flood_without_size_limit_is_bounded(lt: LoopThread) -> None:
    # A too-long DATA line used to be kept until the end of data (or the
    # size limit): without a size limit the buffer grew with the line.
    with hostile_server(lt, data_size_limit=None) as (server, sink):
        with server.client() as hostile:
            begin_data(hostile)
            chunk = b"y" * 65536
            for _ in range(160):  # 10 MiB, a single line
                hostile.send(chunk)
            hostile.send(b"\r\n.\r\n")
            assert hostile.text() == "500 Line too long (see RFC5321 4.5.3.1.6)"
        assert protocol_of(server, 0).peak_rx < 2 * MIB


def test_overlong_auth_response_logs_no_error(lt: LoopThread,
                                              caplog: pytest.LogCaptureFixture) -> None:
    # It went through the generic exception path: any client could have a
    # traceback logged at ERROR.
    with hostile_server(lt, auth_require_tls=False) as (server, sink):
        with server.client() as hostile:
            hostile.multi("EHLO hostile.example")
            assert hostile.cmd("AUTH PLAIN") == "334 "
            reply = hostile.cmd(b"A" * 3000)
            assert reply.startswith("500 Error: (ValueError) ")
            assert hostile.cmd("NOOP") == "250 OK"
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []


@pytest.mark.parametrize("utf8", [False, True])
def test_auth_with_only_separator_characters(lt: LoopThread, utf8: bool,
                                             caplog: pytest.LogCaptureFixture) -> None:
    # Found by the long fuzz run: "AUTH \x1c" raised IndexError (str.split()
    # sees whitespace that bytes.strip() kept), a traceback at ERROR.
    with hostile_server(lt, auth_require_tls=False, enable_SMTPUTF8=utf8) as (server, sink):
        with server.client() as hostile:
            hostile.multi("EHLO hostile.example")
            args = [b"\x1c", b"\x1f \x1e"] + (["\u2028".encode(), b"\xc2\x85"] if utf8 else [])
            for arg in args:
                assert hostile.cmd(b"AUTH " + arg) == "501 Not enough value"
            assert hostile.cmd("NOOP") == "250 OK"
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
