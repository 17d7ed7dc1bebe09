"""A real MTA, Exim, relays messages to the server (helper: tests/_exim.py).

Exim is the sending side of the later CHUNKING/BDAT, PIPELINING, DSN,
ENHANCEDSTATUSCODES and ``AUTH=<>`` tests: a test starts a server with the
options it needs (the ``start`` fixture), points a private Exim at its port
(the ``exim`` fixture) and asserts on what Exim sent and received.

Two kinds of tests here:

* against aiosmtpd as it is today: the envelope and the content arrive intact
  and, since the server offers neither CHUNKING nor PIPELINING nor DSN, Exim
  falls back to plain DATA, one command at a time, and drops the DSN
  parameters it was given: what a later test asserts the other way round once
  the server offers them;
* against ``FakeESMTP``, a few lines of server that offers every extension:
  the helper's knobs make Exim send ``BDAT n LAST`` or ``DATA``, pipeline or
  not, pass ``NOTIFY``/``ORCPT``/``RET``/``ENVID`` on and put ``AUTH=<>`` on
  MAIL, and the transcript shows it.  So a later test that sees DATA where
  it wants BDAT fails because of the server, not because Exim would never
  send BDAT.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from tests._exim import (
    HOSTNAME,
    Exim,
    exim_dialogue,
    exim_received_replies,
    exim_sent_commands,
)
from tests._server import LoopThread, Recorder, ServerFactory

EximFactory = Callable[..., Exim]

SENDER = "alice@x.example"

MESSAGE = (
    b"From: Alice <alice@x.example>\r\n"
    b"To: bob@y.example\r\n"
    b"Subject: relayed by Exim\r\n"
    b"Message-ID: <exim-relay-test@x.example>\r\n"
    b"Date: Fri, 04 Dec 2026 12:00:00 +0000\r\n"
    b"\r\n"
    b"first line\r\n"
    b".a line with a leading dot\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"\r\n"
    b"last line\r\n"
)
"""Every header Exim would add to a local submission is present, so the
content that reaches the server is exactly Exim's Received header + this."""

DSN_MAIL = "RET=HDRS ENVID=env-42"
DSN_RCPT = "NOTIFY=SUCCESS,DELAY,FAILURE ORCPT=rfc822;{}"


def verbs(commands: list[str]) -> list[str]:
    return [c.split()[0].upper() for c in commands]


def check_relayed(content: bytes, message_id: str | None) -> None:
    """*content* is MESSAGE under the one Received header Exim adds."""
    assert content.endswith(MESSAGE), content
    added = content[: -len(MESSAGE)]
    assert added.startswith(b"Received: from "), added
    assert all(line.startswith(b"\t") for line in added.split(b"\r\n")[1:-1]), added
    assert f"id {message_id}".encode() in added, added


# -- the transcript parsers, on a transcript Exim 4.96 wrote -----------------

TRANSCRIPT = """\
LOG: MAIN
  <= alice@x.example U=Debian-exim P=local-esmtp S=312
delivering 1xZVqp-00012n-29
Connecting to 127.0.0.1 [127.0.0.1]:2526 ...  connected
  SMTP<< 220 sink ESMTP
  SMTP>> EHLO exim.test
  SMTP<< 250-sink
         250-AUTH PLAIN
         250-DSN
         250-PIPELINING
         250 CHUNKING
  SMTP>> AUTH PLAIN ****************
  SMTP<< 235 2.7.0 ok
  SMTP|> MAIL FROM:<a@x.example> RET=HDRS ENVID=abc123 AUTH=<>
  SMTP|> RCPT TO:<b@y.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b@y.example
         will write message using CHUNKING
  SMTP+> BDAT 298 LAST
  SMTP+> QUIT
  SMTP(shutdown)>>
  SMTP<< 250 2.1.0 ok
  SMTP<< 250 2.1.5 ok
  SMTP<< 250 2.0.0 chunk
  SMTP<< 221 bye
  SMTP(close)>>
cmdlog: '220:EHLO:250-:AUTH:235:MAIL|:RCPT|:BDAT:QUIT:250:250:250:221'
LOG: MAIN
  => b@y.example R=relay T=relay H=127.0.0.1 [127.0.0.1] A=plain K C="250 2.0.0 chunk"
LOG: MAIN
  Completed
"""


def test_transcript_parsers() -> None:
    """Runs without Exim: the parsers on a real -v transcript."""
    assert exim_sent_commands(TRANSCRIPT) == [
        "EHLO exim.test",
        "AUTH PLAIN ****************",
        "MAIL FROM:<a@x.example> RET=HDRS ENVID=abc123 AUTH=<>",
        "RCPT TO:<b@y.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b@y.example",
        "BDAT 298 LAST",
        "QUIT",
    ]
    assert exim_received_replies(TRANSCRIPT) == [
        "220 sink ESMTP",
        "250-sink\n250-AUTH PLAIN\n250-DSN\n250-PIPELINING\n250 CHUNKING",
        "235 2.7.0 ok",
        "250 2.1.0 ok",
        "250 2.1.5 ok",
        "250 2.0.0 chunk",
        "221 bye",
    ]
    dialogue = exim_dialogue(TRANSCRIPT)
    assert [m for m, _ in dialogue] == [
        "<<", ">>", "<<", ">>", "<<", "|>", "|>", "+>", "+>", "<<", "<<", "<<", "<<",
    ]


# -- against aiosmtpd ----------------------------------------------------------


@pytest.mark.external
def test_relay_to_aiosmtpd_plain_data(start: ServerFactory, exim: EximFactory) -> None:
    recorder = Recorder()
    server = start(recorder)
    relay = exim(server.port)  # chunking and pipelining allowed: the server decides
    rcpts = ["bob@y.example", "carol@y.example"]
    result = relay.send(
        MESSAGE, SENDER, rcpts,
        mail_params=DSN_MAIL, rcpt_params=[DSN_RCPT.format(r) for r in rcpts],
    )

    # The envelope and the content arrive intact, once.
    [envelope] = recorder.envelopes
    assert envelope.mail_from == SENDER
    assert envelope.rcpt_tos == rcpts
    assert isinstance(envelope.content, bytes)
    check_relayed(envelope.content, result.message_id)

    # The server offers none of CHUNKING, PIPELINING, DSN: plain DATA, one
    # command at a time, and the DSN parameters are dropped.
    ehlo = result.received[1]
    assert ehlo.startswith(f"250-{server.last.hostname}"), ehlo
    for keyword in ("CHUNKING", "PIPELINING", "DSN"):
        assert keyword not in ehlo.split(), ehlo
    assert verbs(result.sent) == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]
    assert result.sent[0] == f"EHLO {HOSTNAME}"
    assert result.sent[1].startswith(f"MAIL FROM:<{SENDER}> SIZE=")
    assert result.sent[2:4] == [f"RCPT TO:<{r}>" for r in rcpts]
    for command in result.sent:
        for param in ("NOTIFY=", "ORCPT=", "RET=", "ENVID=", "AUTH=", "BDAT"):
            assert param not in command
    dialogue = exim_dialogue(result.transcript)
    markers = [m for m, text in dialogue if text.startswith(("MAIL", "RCPT"))]
    assert markers == [">>", ">>", ">>"]
    assert result.received[2:] == ["250 OK"] * 3 + [
        "354 End data with <CR><LF>.<CR><LF>", "250 OK", "221 Bye",
    ]

    # Exim's log: received, delivered with the server's final reply.
    assert f"<= {SENDER} " in result.log
    assert '=> bob@y.example R=relay T=relay H=127.0.0.1 [127.0.0.1] C="250 OK"' in result.log
    assert '-> carol@y.example R=relay T=relay H=127.0.0.1 [127.0.0.1] C="250 OK"' in result.log
    # The success DSN Exim makes for NOTIFY=SUCCESS when the next hop has no
    # DSN went to the blackhole, not to the server.
    assert "R=exim_generated" in result.log
    assert relay.stray_processes() == []


class Authenticator:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __call__(self, server: SMTP, session: Session, envelope: Envelope,
                 mechanism: str, auth_data: Any) -> AuthResult:
        self.calls.append((mechanism, auth_data))
        ok = isinstance(auth_data, LoginPassword) and auth_data == (b"alice", b"s3cret")
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


@pytest.mark.external
def test_relay_to_aiosmtpd_with_auth(start: ServerFactory, exim: EximFactory) -> None:
    recorder = Recorder()
    authenticator = Authenticator()
    server = start(recorder, auth_require_tls=False, authenticator=authenticator)
    relay = exim(server.port, auth=("alice", "s3cret"))
    result = relay.send(MESSAGE, SENDER, ["bob@y.example"])

    assert authenticator.calls == [("PLAIN", LoginPassword(b"alice", b"s3cret"))]
    [session] = recorder.sessions
    assert session.authenticated
    assert verbs(result.sent) == ["EHLO", "AUTH", "MAIL", "RCPT", "DATA", "QUIT"]
    assert result.sent[1].startswith("AUTH PLAIN ")
    assert result.received[2].startswith("235 "), result.received
    # No authenticated sender for the message, so no AUTH= on MAIL (the
    # auth_sender knob adds one: see test_knobs_against_fake_esmtp).
    assert "AUTH=" not in result.sent[2]
    assert " A=plain " in result.log
    check_relayed(recorder.envelopes[0].content, result.message_id)


class Picky(Recorder):
    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.mark.external
def test_refused_recipient_is_logged_not_bounced_to_server(
    start: ServerFactory, exim: EximFactory
) -> None:
    recorder = Picky()
    server = start(recorder)
    relay = exim(server.port)
    result = relay.send(MESSAGE, SENDER, ["nobody@y.example", "bob@y.example"])

    [envelope] = recorder.envelopes
    assert envelope.rcpt_tos == ["bob@y.example"]
    assert "550 5.1.1 No such user here" in result.received
    assert "** nobody@y.example R=relay T=relay H=127.0.0.1 [127.0.0.1]: SMTP error from " \
        "remote mail server after RCPT TO:<nobody@y.example>: 550 5.1.1 No such user here" \
        in result.log
    assert '=> bob@y.example R=relay T=relay H=127.0.0.1 [127.0.0.1] C="250 OK"' in result.log
    # The bounce for nobody@ was discarded: one connection, one transaction.
    assert verbs(result.sent).count("EHLO") == 1
    assert verbs(result.sent).count("MAIL") == 1


# -- the knobs, against a server that offers everything ------------------------


class FakeESMTP:
    """Just enough ESMTP server to show what Exim sends when offered
    PIPELINING, CHUNKING, DSN, ENHANCEDSTATUSCODES and AUTH PLAIN.

    It accepts everything with enhanced status codes and keeps the commands
    it read (``commands``) and the messages (``messages``, DATA unstuffed or
    the BDAT chunks joined).
    """

    EHLO = ("PIPELINING", "CHUNKING", "DSN", "ENHANCEDSTATUSCODES", "AUTH PLAIN", "8BITMIME")

    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.commands: list[str] = []
        self.messages: list[bytes] = []

        async def start() -> asyncio.AbstractServer:
            return await asyncio.start_server(self._session, "127.0.0.1", 0)

        self.server = lt.run(start())
        self.port: int = self.server.sockets[0].getsockname()[1]

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake.example ESMTP\r\n")
        chunks: list[bytes] = []
        try:
            while line := await reader.readline():
                command = line.rstrip(b"\r\n").decode()
                self.commands.append(command)
                verb = command.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    lines = ["fake.example", *self.EHLO]
                    reply = "\r\n".join(
                        f"250{' ' if i == len(lines) - 1 else '-'}{text}"
                        for i, text in enumerate(lines)
                    )
                elif verb == "AUTH":
                    reply = "235 2.7.0 Authentication successful"
                elif verb == "DATA":
                    writer.write(b"354 Go ahead\r\n")
                    data = bytearray()
                    while (data_line := await reader.readline()) != b".\r\n":
                        data += data_line[1:] if data_line.startswith(b".") else data_line
                    self.messages.append(bytes(data))
                    reply = "250 2.0.0 Message accepted"
                elif verb == "BDAT":
                    size, *last = command.split()[1:]
                    chunks.append(await reader.readexactly(int(size)))
                    if last:
                        self.messages.append(b"".join(chunks))
                        chunks = []
                    reply = f"250 2.0.0 {size} octets received"
                elif verb == "QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    break
                elif verb in ("MAIL", "RCPT", "RSET", "NOOP"):
                    reply = "250 2.1.5 OK" if verb == "RCPT" else "250 2.1.0 OK"
                else:
                    reply = "500 5.5.1 Unknown command"
                writer.write(reply.encode() + b"\r\n")
                await writer.drain()
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        self.lt.run(stop())


@pytest.fixture
def fake(lt: LoopThread) -> Any:
    server = FakeESMTP(lt)
    yield server
    server.close()


@pytest.mark.external
@pytest.mark.parametrize("chunking", [True, False], ids=["chunking", "no-chunking"])
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "no-pipelining"])
def test_knobs_against_fake_esmtp(
    fake: FakeESMTP, exim: EximFactory, chunking: bool, pipelining: bool
) -> None:
    relay = exim(fake.port, chunking=chunking, pipelining=pipelining,
                 auth=("alice", "s3cret"), auth_sender="<>")
    rcpt = "bob@y.example"
    result = relay.send(MESSAGE, SENDER, [rcpt], mail_params=DSN_MAIL,
                        rcpt_params=DSN_RCPT.format(rcpt))

    [message] = fake.messages
    check_relayed(message, result.message_id)
    # What Exim's transcript says it sent is what the server read.
    assert [c for c in fake.commands if not c.startswith("AUTH")] == \
        [c for c in result.sent if not c.startswith("AUTH")]

    # DSN parameters passed on; AUTH=<> on MAIL after AUTH PLAIN.
    mail = next(c for c in result.sent if c.startswith("MAIL"))
    assert mail.startswith(f"MAIL FROM:<{SENDER}> ")
    assert set(mail.split()[2:]) >= {"RET=HDRS", "ENVID=env-42", "AUTH=<>"}
    [rcpt_command] = [c for c in result.sent if c.startswith("RCPT")]
    _, to, *params = rcpt_command.split()
    assert to == f"TO:<{rcpt}>"
    assert params[1:] == [f"ORCPT=rfc822;{rcpt}"]
    # Exim writes the NOTIFY values in its own order (SUCCESS,FAILURE,DELAY).
    keyword, _, value = params[0].partition("=")
    assert keyword == "NOTIFY" and sorted(value.split(",")) == ["DELAY", "FAILURE", "SUCCESS"]

    # BDAT (one chunk, the whole message) or DATA.
    body_commands = [c for c in result.sent if verbs([c])[0] in ("DATA", "BDAT")]
    assert body_commands == ([f"BDAT {len(message)} LAST"] if chunking else ["DATA"])

    # Pipelined MAIL and RCPT are held back ("|>") and answered after the group.
    dialogue = exim_dialogue(result.transcript)
    markers = [m for m, text in dialogue if text.startswith(("MAIL", "RCPT"))]
    assert markers == (["|>", "|>"] if pipelining else [">>", ">>"])
    after_mail = dialogue[[t for _, t in dialogue].index(mail) + 1]
    assert after_mail[0] == ("|>" if pipelining else "<<")

    # The enhanced status codes Exim received, and logged.
    final = "250 2.0.0 " + (f"{len(message)} octets received" if chunking else "Message accepted")
    assert final in result.received
    assert f'=> {rcpt} R=relay T=relay H=127.0.0.1 [127.0.0.1] A=plain' in result.log
    assert f'C="{final}"' in result.log
    assert relay.stray_processes() == []
