"""SMTP smuggling (CVE-2023-51764 class, upstream CVE-2024-27305) and
STARTTLS command injection (upstream CVE-2024-34083), over real sockets.

Every end-of-data look-alike must stay message content: the published
variants of the SMTP smuggling research (SEC Consult, 2023) and, beyond
them, every string of 3 to 5 bytes over {CR, LF, ".", NUL} that contains a
dot but not the real terminator.  Each vector is followed by the commands an
attacker would smuggle; the server must answer exactly one transaction and
deliver the whole text, smuggled commands included, as one message.  With
``strict_line_endings=True`` the vectors holding a bare CR or LF are
refused with ``554 5.6.0``, and nothing at all is delivered for them.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiosmtpd.smtp import SMTP, Envelope, Session
from tests._hostile import report
from tests._server import IO_TIMEOUT, LoopThread, RawClient, Recorder, serving

pytestmark = pytest.mark.timeout(60)

CR, LF, NUL = b"\r", b"\n", b"\x00"
END = b"\r\n.\r\n"

# The variants named in the SMTP smuggling research and its follow-ups
# (SEC Consult, Postfix/Sendmail/Exim advisories).
PUBLISHED = {
    "<LF>.<LF>": b"\n.\n",
    "<LF>.<CR><LF>": b"\n.\r\n",
    "<CR>.<CR>": b"\r.\r",
    "<CR><LF>.<LF>": b"\r\n.\n",
    "<CR><LF>.<CR>": b"\r\n.\r",
    "<LF>.<CR>": b"\n.\r",
    "<CR>.<LF>": b"\r.\n",
    "<CR>.<CR><LF>": b"\r.\r\n",
    "<CR><LF>.<CR><CR><LF>": b"\r\n.\r\r\n",
    "<CR><LF><NUL>.<CR><LF>": b"\r\n\x00.\r\n",
    "<CR><LF>.<NUL><CR><LF>": b"\r\n.\x00\r\n",
    "<LF><LF>.<LF><LF>": b"\n\n.\n\n",
    "<CR><CR>.<CR><CR>": b"\r\r.\r\r",
    "<CR><LF><SP>.<CR><LF>": b"\r\n .\r\n",
    "<CR><LF>.<SP><CR><LF>": b"\r\n. \r\n",
    "<CR><LF>..<CR><LF>": b"\r\n..\r\n",
}


def exhaustive_vectors() -> list[bytes]:
    vectors = set(PUBLISHED.values())
    for n in range(3, 6):
        for combo in itertools.product((CR, LF, b".", NUL), repeat=n):
            v = b"".join(combo)
            if b"." in v and END not in v:
                vectors.add(v)
    return sorted(vectors)


VECTORS = exhaustive_vectors()
SMUGGLED = (
    b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.com>\r\n"
    b"DATA\r\nFrom: ceo@example.com\r\n\r\nsmuggled\r\n"
)
HEAD = b"Subject: hi\r\n\r\nbody"


def unstuffed(raw: bytes) -> bytes:
    """Reference dot un-stuffing (RFC 5321 4.5.2), line by line on CRLF."""
    lines = raw.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def has_bare(data: bytes) -> bool:
    return data.replace(b"\r\n", b"").find(CR) >= 0 or data.replace(b"\r\n", b"").find(LF) >= 0


@pytest.fixture(scope="module")
def lt() -> Iterator[LoopThread]:
    t = LoopThread()
    yield t
    t.close()


def run_vectors(client: RawClient, bodies: list[bytes], batch: int = 64) -> list[str]:
    """Send one transaction per body, pipelined in batches; return the
    final reply of each transaction and check that each got exactly the four
    replies of one transaction (a smuggled command would add replies)."""
    finals: list[str] = []
    for first in range(0, len(bodies), batch):
        chunk = bodies[first:first + batch]
        client.send(b"".join(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n" + body + END
            for body in chunk
        ))
        for _ in chunk:
            got = [client.text() for _ in range(3)]
            assert got == ["250 OK", "250 OK", "354 End data with <CR><LF>.<CR><LF>"], got
            finals.append(client.text())
    # Nothing else is pending: the next reply answers our NOOP.
    assert client.cmd("NOOP sync") == "250 OK"
    return finals


@pytest.mark.parametrize("place", ["after-text", "at-start"])
def test_no_vector_ends_data(lt: LoopThread, place: str) -> None:
    bodies = []
    for v in VECTORS:
        if place == "at-start" and v.startswith(b".\r\n"):
            continue  # a line holding only a dot: the real, empty-message end
        bodies.append((HEAD + v if place == "after-text" else v) + SMUGGLED)
    handler = Recorder()
    with serving(lt, handler) as server, server.client() as client:
        client.multi("EHLO client.example")
        finals = run_vectors(client, bodies)
    assert finals == ["250 OK"] * len(bodies)
    assert len(handler.envelopes) == len(bodies)
    for body, env in zip(bodies, handler.envelopes):
        assert env.mail_from == "a@example.com"
        assert env.rcpt_tos == ["b@example.com"]
        assert env.content == unstuffed(body + b"\r\n"), body
    report("smuggling_" + place, vectors=len(bodies), published=len(PUBLISHED),
           smuggled_commands_run=0, messages=len(handler.envelopes))


def test_strict_line_endings_refuses_bare_endings(lt: LoopThread) -> None:
    bodies = [HEAD + v + SMUGGLED for v in VECTORS]
    handler = Recorder()
    with serving(lt, handler, strict_line_endings=True) as server, server.client() as client:
        client.multi("EHLO client.example")
        finals = run_vectors(client, bodies)
        # The session goes on normally after the refusals.
        client.cmd("MAIL FROM:<a@example.com>")
        client.cmd("RCPT TO:<b@example.com>")
        client.cmd("DATA")
        assert client.cmd(b"clean\r\n.") == "250 OK"
    clean = [b for b in bodies if not has_bare(b)]
    for body, final in zip(bodies, finals):
        if has_bare(body):
            assert final == "554 5.6.0 Error: bare CR or LF in message data", body
        else:
            assert final == "250 OK", body
    assert [e.content for e in handler.envelopes[:-1]] == [unstuffed(b + b"\r\n") for b in clean]
    assert handler.envelopes[-1].content == b"clean\r\n"
    report("smuggling_strict", vectors=len(bodies), refused=len(bodies) - len(clean),
           accepted=len(clean))


def test_strict_mode_refusal_resets_the_transaction(lt: LoopThread) -> None:
    with serving(lt, strict_line_endings=True) as server, server.client() as c:
        c.multi("EHLO client.example")
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.com>")
        c.cmd("DATA")
        c.send(b"x\n.\nRCPT TO:<c@example.com>\r\n.\r\n")
        assert c.text() == "554 5.6.0 Error: bare CR or LF in message data"
        # The refused message took its envelope with it.
        assert c.cmd("RCPT TO:<c@example.com>") == "503 Error: need MAIL command"
        assert c.cmd("DATA") == "503 Error: need RCPT command"
    assert server.last.event_handler.envelopes == []


def test_smuggling_through_smtplib_client_is_content(lt: LoopThread) -> None:
    # smtplib normalises bare line endings to CRLF, so a look-alike sent by a
    # well-behaved client becomes a dot-stuffed line, never an end of data.
    import smtplib

    with serving(lt) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=IO_TIMEOUT) as s:
            s.sendmail("a@example.com", ["b@example.com"], HEAD + b"\n.\n" + SMUGGLED)
        envs = server.last.event_handler.envelopes
    assert len(envs) == 1
    assert envs[0].rcpt_tos == ["b@example.com"]
    assert b"evil@attacker.example" in envs[0].content


# -- STARTTLS injection -------------------------------------------------------------

trustme = pytest.importorskip("trustme")


class Certs:
    def __init__(self, directory: Path) -> None:
        ca = trustme.CA()
        self.cert = ca.issue_cert("localhost")
        self.client = ssl.create_default_context()
        ca.configure_trust(self.client)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(context)
        return context


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


class CountingHandler(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.commands: list[str] = []

    async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope,
                          arg: str) -> str:
        self.commands.append(f"NOOP {arg}")
        return "250 OK"

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        self.commands.append(f"MAIL {address}")
        envelope.mail_from = address
        return "250 OK"


INJECTIONS = {
    "noop": b"NOOP injected\r\n",
    "transaction": b"EHLO evil\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@x>\r\nDATA\r\nevil\r\n.\r\n",
    "auth": b"AUTH PLAIN AHVzZXIAc2VjcmV0\r\n",
    "quit": b"QUIT\r\n",
    "partial-line": b"MAIL FROM:<evil@x>",
    "second-starttls": b"STARTTLS\r\n",
    "flood": b"NOOP injected\r\n" * 4000,
}


@pytest.mark.parametrize("name", sorted(INJECTIONS))
def test_starttls_injection_is_discarded(lt: LoopThread, certs: Certs, name: str) -> None:
    handler = CountingHandler()
    with serving(lt, handler, tls_context=certs.server_context(),
                 auth_require_tls=False) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT)
        with contextlib.closing(sock):
            f = sock.makefile("rb")
            assert f.readline().startswith(b"220 ")
            sock.sendall(b"EHLO c\r\n")
            while not f.readline().startswith(b"250 "):
                pass
            # One write: the plaintext after STARTTLS is the attacker's.
            sock.sendall(b"STARTTLS\r\n" + INJECTIONS[name])
            assert f.readline() == b"220 Ready to start TLS\r\n"
            tls = certs.client.wrap_socket(sock, server_hostname="localhost")
            tf = tls.makefile("rb")
            # The first encrypted reply answers our own command.
            tls.sendall(b"NOOP mine\r\n")
            assert tf.readline() == b"250 OK\r\n"
            tls.sendall(b"MAIL FROM:<a@example.com>\r\n")
            assert tf.readline() == b"503 Error: send HELO first\r\n"
            tls.sendall(b"QUIT\r\n")
            assert tf.readline() == b"221 Bye\r\n"
    assert handler.commands == ["NOOP mine"]
    assert handler.envelopes == []
