"""XCLIENT on the wire (docs/xclient.rst): raw sockets for every reply, swaks
as a real XCLIENT client, and the default (off) byte for byte as before.

The grammar alone is tested in tests/test_xclient.py.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
from typing import Any, Optional

import pytest

from aiosmtpd import __version__
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session, XClient
from tests._server import HOSTNAME, IO_TIMEOUT, Certs, LineClient, RawClient, ServerFactory

pytestmark = pytest.mark.timeout(30)

GREETING = f"220 {HOSTNAME} Python SMTP {__version__}"
EHLO = ["250-test.example", "250-SIZE 33554432", "250-8BITMIME", "250 HELP"]
EHLO_XCLIENT = [
    "250-test.example", "250-SIZE 33554432", "250-8BITMIME",
    "250-XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT", "250 HELP",
]  # fmt: skip
HELP_LIST = "250 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY"
LOOPBACK = ["127.0.0.0/8", "::1/128"]
NOT_AUTHORIZED = "550 5.7.0 Error: insufficient authorization"


class Recorder:
    """Keeps the session and envelope of every message."""

    def __init__(self) -> None:
        self.seen: list[tuple[Session, Envelope]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.seen.append((session, envelope))
        return "250 OK"


def client_from(port: int, source: str) -> RawClient:
    """A RawClient whose socket is bound to ``source`` (another loopback address)."""
    client = RawClient.__new__(RawClient)
    client.sock = socket.create_connection(("127.0.0.1", port), IO_TIMEOUT, (source, 0))
    client._buf = b""
    client.greeting = client.reply()
    return client


def send_mail(c: RawClient) -> None:
    assert c.cmd("MAIL FROM:<a@example.com>") == "250 OK"
    assert c.cmd("RCPT TO:<b@example.com>") == "250 OK"
    assert c.cmd("DATA").startswith("354")
    assert c.cmd("Subject: x\r\n\r\nhello\r\n.") == "250 OK"


# -- Off by default: nothing changes ---------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"xclient_trusted": None}])
def test_off_by_default(start: ServerFactory, options: dict[str, Any]) -> None:
    server = start(**options)
    with server.client() as c:
        assert c.greeting == [GREETING.encode()]
        assert c.multi("EHLO client.example") == EHLO
        assert c.cmd("HELP") == HELP_LIST
        assert c.cmd("HELP XCLIENT") == "501" + HELP_LIST[3:]
        for _ in range(4):
            assert c.cmd("XCLIENT NAME=a.example") == '500 Error: command "XCLIENT" not recognized'
        # Counted as unrecognised, as any unknown command.
        assert c.cmd("XCLIENT") == "502 5.5.1 Too many unrecognized commands, goodbye."
        assert c.is_closed()
    assert server.last.session is not None and server.last.session.xclient is None


def test_subclass_own_xclient_kept_when_off(start: ServerFactory) -> None:
    class Own(SMTP):
        async def smtp_XCLIENT(self, arg: Optional[str]) -> None:
            await self.push("250 mine")

    with start(cls=Own).client() as c:
        assert c.cmd("XCLIENT NAME=x") == "250 mine"


# -- Trusted clients -------------------------------------------------------------------


def test_advertised_to_trusted(start: ServerFactory) -> None:
    with start(xclient_trusted=LOOPBACK).client() as c:
        assert c.multi("EHLO client.example") == EHLO_XCLIENT
        assert c.cmd("HELP") == HELP_LIST + " XCLIENT"
        assert c.cmd("HELP XCLIENT") == "250 Syntax: XCLIENT attribute=value ..."


def test_xclient_then_mail(start: ServerFactory, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="mail.log")
    handler = Recorder()
    server = start(handler, xclient_trusted=LOOPBACK)
    with server.client() as c:
        assert c.multi("EHLO client.example") == EHLO_XCLIENT
        assert c.cmd("MAIL FROM:<early@example.com>") == "250 OK"
        assert c.cmd("RSET") == "250 OK"
        reply = c.cmd(
            "XCLIENT NAME=spike.porcupine.org ADDR=168.100.189.2 PORT=4321"
            " DESTADDR=198.51.100.25 DESTPORT=25"
        )
        # Postfix's answer: the greeting again; the client must greet again.
        assert reply == GREETING
        assert c.cmd("MAIL FROM:<a@example.com>") == "503 Error: send HELO first"
        assert c.multi("EHLO spike.porcupine.org") == EHLO_XCLIENT
        send_mail(c)
    (session, envelope), = handler.seen
    assert session.peer == ("168.100.189.2", 4321)
    assert session.xclient == XClient(
        name="spike.porcupine.org", addr="168.100.189.2", port="4321",
        destaddr="198.51.100.25", destport="25",
    )  # fmt: skip
    assert session.host_name == "spike.porcupine.org"
    assert not session.authenticated
    assert envelope.mail_from == "a@example.com"
    assert any(
        "XCLIENT accepted: NAME=spike.porcupine.org ADDR=168.100.189.2 PORT=4321" in r.getMessage()
        and r.levelno == logging.INFO
        for r in caplog.records
    )


def test_xclient_resets_the_transaction_state(start: ServerFactory) -> None:
    server = start(xclient_trusted=LOOPBACK)
    with server.client() as c:
        assert c.multi("EHLO client.example")[-1] == "250 HELP"
        before = server.last.session
        envelope = server.last.envelope
        assert c.cmd("XCLIENT ADDR=192.0.2.1") == GREETING
        session = server.last.session
        assert session is not before and server.last.envelope is not envelope
        assert session is not None and session.host_name is None
        assert session.extended_smtp is False


def test_helo_and_proto_attributes(start: ServerFactory) -> None:
    handler = Recorder()
    with start(handler, xclient_trusted=LOOPBACK).client() as c:
        assert c.cmd("XCLIENT HELO=relay+20name PROTO=ESMTP") == GREETING
        # HELO given: no need to greet again.
        send_mail(c)
    (session, _), = handler.seen
    assert session.host_name == "relay name"
    assert session.extended_smtp is True
    assert session.xclient == XClient(helo="relay name", proto="ESMTP")


def test_attributes_accumulate(start: ServerFactory) -> None:
    server = start(xclient_trusted=LOOPBACK)
    with server.client() as c:
        assert c.cmd("XCLIENT NAME=a.example ADDR=192.0.2.1 HELO=h LOGIN=u") == GREETING
        assert c.cmd("XCLIENT PORT=25 PROTO=SMTP") == GREETING
        session = server.last.session
        assert session is not None
        assert session.xclient == XClient(name="a.example", addr="192.0.2.1", port="25",
                                          proto="SMTP")  # fmt: skip
        assert session.peer == ("192.0.2.1", 25)
        assert not session.authenticated  # LOGIN was in the previous XCLIENT only
        assert c.cmd("XCLIENT NAME=b.example") == GREETING
        assert server.last.session.xclient == XClient(  # type: ignore[union-attr]
            name="b.example", addr="192.0.2.1", port="25"
        )


def test_ipv6_and_unavailable(start: ServerFactory) -> None:
    server = start(xclient_trusted=LOOPBACK)
    with server.client() as c:
        assert c.cmd("XCLIENT ADDR=IPV6:2001:DB8::0:1 PORT=25") == GREETING
        assert server.last.session.peer == ("2001:db8::1", 25, 0, 0)  # type: ignore[union-attr]
        assert c.cmd("XCLIENT NAME=[tempunavail] ADDR=[unavailable] PORT=[UNAVAILABLE]") == GREETING
        session = server.last.session
        assert session is not None
        assert session.peer == ("[UNAVAILABLE]", 0)
        assert session.xclient == XClient(
            name="[TEMPUNAVAIL]", addr="[UNAVAILABLE]", port="[UNAVAILABLE]"
        )


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_login_authenticates(start: ServerFactory) -> None:
    handler = Recorder()
    # auth_require_tls=False: AUTH answers without TLS (the server warns).
    server = start(handler, xclient_trusted=LOOPBACK, auth_required=True, auth_require_tls=False)
    with server.client() as c:
        assert c.multi("EHLO client.example")[-1] == "250 HELP"
        assert c.cmd("MAIL FROM:<a@example.com>") == "530 5.7.0 Authentication required"
        assert c.cmd("XCLIENT LOGIN=[UNAVAILABLE]") == GREETING
        assert c.multi("EHLO client.example")[-1] == "250 HELP"
        assert c.cmd("MAIL FROM:<a@example.com>") == "530 5.7.0 Authentication required"
        assert c.cmd("XCLIENT LOGIN=alice") == GREETING
        assert c.multi("EHLO client.example")[-1] == "250 HELP"
        assert c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==") == "503 Already authenticated"
        send_mail(c)
    (session, _), = handler.seen
    assert session.authenticated is True
    assert session.auth_data == "alice"
    assert session.xclient is not None and session.xclient.login == "alice"


def test_pipelined_with_ehlo(start: ServerFactory) -> None:
    with start(xclient_trusted=LOOPBACK).client() as c:
        c.send(b"XCLIENT ADDR=192.0.2.1\r\nEHLO x\r\nNOOP\r\n")
        assert c.text() == GREETING
        assert [line.decode() for line in c.reply()] == EHLO_XCLIENT
        assert c.text() == "250 OK"


def test_lmtp(start: ServerFactory) -> None:
    with start(cls=LMTP, xclient_trusted=LOOPBACK).client() as c:
        assert "250-XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT" in c.multi("LHLO x")
        assert c.cmd("XCLIENT ADDR=192.0.2.1") == GREETING


# -- Refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("XCLIENT", "501 5.5.4 Syntax: XCLIENT attribute=value..."),
        ("XCLIENT NAME", "501 5.5.4 Error: attribute=value expected"),
        ("XCLIENT NAME=", "501 5.5.4 Error: attribute=value expected"),
        ("XCLIENT HELO=" + "x" * 256, "501 5.5.4 Error: attribute value too long"),
        ("XCLIENT FOO=bar", "501 5.5.4 Bad XCLIENT attribute name: FOO"),
        ("XCLIENT NAME=a_b..c", "501 5.5.4 Bad NAME syntax: a_b..c"),
        ("XCLIENT ADDR=2001:db8::1", "501 5.5.4 Bad ADDR syntax: 2001:db8::1"),
        ("XCLIENT PORT=70000", "501 5.5.4 Bad PORT syntax: 70000"),
        ("XCLIENT PROTO=LMTP", "501 5.5.4 Bad PROTO syntax: LMTP"),
        ("XCLIENT HELO=a+0D+0AMAIL", "501 5.5.4 Bad HELO syntax: a??MAIL"),
        ("XCLIENT LOGIN=a+zz", "501 5.5.4 Bad LOGIN syntax: a+zz"),
        ("XCLIENT NAME=ok.example DESTPORT=x", "501 5.5.4 Bad DESTPORT syntax: x"),
    ],
)  # fmt: skip
def test_bad_syntax(start: ServerFactory, caplog: Any, command: str, reply: str) -> None:
    caplog.set_level(logging.INFO, logger="mail.log")
    server = start(xclient_trusted=LOOPBACK)
    with server.client() as c:
        assert c.multi("EHLO client.example")[-1] == "250 HELP"
        session = server.last.session
        assert c.cmd(command) == reply
        # Nothing applied, not even the valid attributes before the bad one.
        assert server.last.session is session
        assert session is not None and session.xclient is None
        assert session.host_name == "client.example"
        assert c.cmd("NOOP") == "250 OK"
    assert any(
        r.levelno == logging.INFO and r.getMessage().endswith(f" XCLIENT refused: {reply}")
        for r in caplog.records
    )


def test_in_transaction(start: ServerFactory, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="mail.log")
    server = start(xclient_trusted=LOOPBACK)
    with server.client() as c:
        assert c.multi("EHLO client.example")[-1] == "250 HELP"
        assert c.cmd("MAIL FROM:<a@example.com>") == "250 OK"
        assert c.cmd("XCLIENT ADDR=192.0.2.1") == "503 5.5.1 Error: MAIL transaction in progress"
        assert c.cmd("RCPT TO:<b@example.com>") == "250 OK"  # the transaction goes on
        assert c.cmd("RSET") == "250 OK"
        assert c.cmd("XCLIENT ADDR=192.0.2.1") == GREETING
    assert any(
        r.levelno == logging.INFO and "XCLIENT refused: MAIL transaction in progress"
        in r.getMessage() for r in caplog.records
    )  # fmt: skip


def test_untrusted_peer(start: ServerFactory, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="mail.log")
    server = start(xclient_trusted=["127.0.0.1/32"])
    try:
        c = client_from(server.port, "127.0.0.2")
    except OSError as error:  # pragma: no cover - loopback is a /8 on Linux
        pytest.skip(f"cannot bind 127.0.0.2: {error}")
    with c:
        assert c.multi("EHLO client.example") == EHLO
        assert c.cmd("HELP") == HELP_LIST
        assert c.cmd("XCLIENT ADDR=192.0.2.1") == NOT_AUTHORIZED
        assert c.cmd("NOOP") == "250 OK"
        session = server.last.session
        assert session is not None and session.xclient is None
        assert session.peer[0] == "127.0.0.2"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "('127.0.0.2'," in w and "XCLIENT refused: client 127.0.0.2 is not in xclient_trusted" in w
        for w in warnings
    ), warnings
    # The trusted address itself is served.
    with server.client() as c:
        assert c.multi("EHLO client.example") == EHLO_XCLIENT
        assert c.cmd("XCLIENT ADDR=192.0.2.1") == GREETING


def test_empty_list_trusts_nobody(start: ServerFactory) -> None:
    with start(xclient_trusted=[]).client() as c:
        assert c.multi("EHLO client.example") == EHLO
        assert c.cmd("XCLIENT ADDR=192.0.2.1") == NOT_AUTHORIZED


def test_trust_does_not_follow_the_new_address(start: ServerFactory) -> None:
    """The connection's own client is what must be trusted, not the address
    XCLIENT gave (a relay can describe each message's client in turn)."""
    with start(xclient_trusted=["127.0.0.1/32"]).client() as c:
        assert c.cmd("XCLIENT ADDR=192.0.2.1") == GREETING
        assert c.multi("EHLO x") == EHLO_XCLIENT
        assert c.cmd("XCLIENT ADDR=192.0.2.2") == GREETING


@pytest.mark.parametrize(("source", "trusted"), [
    ("203.0.113.9", ["203.0.113.0/24"]),  # the client behind the proxy is trusted
    ("203.0.113.9", ["127.0.0.0/8"]),  # only the proxy is: that trusts nobody
])  # fmt: skip
def test_with_proxy_protocol(start: ServerFactory, source: str, trusted: list[str]) -> None:
    class Proxied(Recorder):
        async def handle_PROXY(self, server: SMTP, session: Session, envelope: Envelope,
                               proxy_data: Any) -> bool:  # fmt: skip
            return True

    server = start(Proxied(), proxy_protocol_timeout=5, xclient_trusted=trusted)
    header = f"PROXY TCP4 {source} 198.51.100.25 51000 25\r\n".encode()
    with LineClient(server.port, preamble=header) as c:
        behind_trusted = trusted == ["203.0.113.0/24"]
        ehlo = c.cmd("EHLO x").decode().split("\n")
        assert ehlo == (EHLO_XCLIENT if behind_trusted else EHLO)
        reply = c.cmd("XCLIENT ADDR=192.0.2.1").decode()
        assert reply == (GREETING if behind_trusted else NOT_AUTHORIZED)


def test_starttls_keeps_who_the_client_is(start: ServerFactory, certs: Certs) -> None:
    server = start(xclient_trusted=LOOPBACK, tls_context=certs.server_context())
    with LineClient(server.port) as c:
        assert c.cmd("XCLIENT NAME=a.example ADDR=192.0.2.1 PORT=25 LOGIN=u HELO=h") == (
            GREETING.encode()
        )
        assert b"250-XCLIENT" in c.cmd("EHLO x")
        c.starttls(certs.client_context())
        assert c.cmd("MAIL FROM:<a@example.com>") == b"503 Error: send HELO first"
        session = server.last.session
        assert session is not None and session.ssl is not None
        assert session.peer == ("192.0.2.1", 25)
        assert session.xclient == XClient(name="a.example", addr="192.0.2.1", port="25")
        assert not session.authenticated
        ehlo = c.cmd("EHLO x")
        assert b"250-XCLIENT" in ehlo and b"STARTTLS" not in ehlo
        # XCLIENT after STARTTLS keeps TLS.
        assert c.cmd("XCLIENT ADDR=192.0.2.2") == GREETING.encode()
        assert server.last.session.ssl is not None  # type: ignore[union-attr]


def test_bad_networks_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="must be None or a list of networks"):
        SMTP(None, xclient_trusted="127.0.0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has host bits set"):
        SMTP(None, xclient_trusted=["127.0.0.1/8"])


# -- swaks, a real XCLIENT client -----------------------------------------------------


def _swaks() -> str:
    path = shutil.which("swaks")
    if path is None:
        pytest.skip("swaks is not installed")
    return path


def run_swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_swaks(), "--server", "127.0.0.1", "--port", str(port), "--ehlo", "relay.example",
         "--from", "a@example.com", "--to", "b@example.com", "--timeout", "10", *args],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.external
def test_swaks(serve: Any) -> None:
    handler = Recorder()
    port = serve(handler, xclient_trusted=LOOPBACK, auth_required=True)
    proc = run_swaks(
        port, "--xclient-addr", "192.0.2.1", "--xclient-name", "mail.example.org",
        "--xclient-port", "4321", "--xclient-login", "alice", "--xclient-helo", "helo name",
        "--xclient-proto", "ESMTP", "--xclient-destaddr", "198.51.100.25",
        "--xclient-destport", "25",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " -> XCLIENT ADDR=192.0.2.1 NAME=mail.example.org" in proc.stdout
    assert "HELO=helo+20name" in proc.stdout  # swaks xtext-encodes
    assert f"<-  {GREETING}\n -> EHLO relay.example" in proc.stdout
    (session, envelope), = handler.seen
    assert session.peer == ("192.0.2.1", 4321)
    assert session.xclient == XClient(
        name="mail.example.org", addr="192.0.2.1", port="4321", proto="ESMTP",
        helo="helo name", login="alice", destaddr="198.51.100.25", destport="25",
    )  # fmt: skip
    assert session.authenticated is True and session.auth_data == "alice"
    assert envelope.rcpt_tos == ["b@example.com"]


@pytest.mark.external
def test_swaks_ipv6(serve: Any) -> None:
    handler = Recorder()
    port = serve(handler, xclient_trusted=LOOPBACK)
    proc = run_swaks(port, "--xclient-addr", "IPV6:2001:db8::25", "--xclient-name", "[UNAVAILABLE]")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (session, _), = handler.seen
    assert session.peer == ("2001:db8::25", session.peer[1], 0, 0)
    assert session.xclient is not None and session.xclient.name == "[UNAVAILABLE]"


@pytest.mark.external
def test_swaks_untrusted(serve: Any) -> None:
    handler = Recorder()
    port = serve(handler, xclient_trusted=["192.0.2.0/24"])
    proc = run_swaks(port, "--xclient-addr", "192.0.2.1")
    assert proc.returncode != 0
    # Not advertised to this client, so swaks does not even try.
    assert "Host did not advertise XCLIENT" in proc.stderr
    assert "250-XCLIENT" not in proc.stdout and " -> XCLIENT" not in proc.stdout
    assert handler.seen == []
