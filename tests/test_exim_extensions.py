"""Exim relays to a server offering PIPELINING, DSN, ENHANCEDSTATUSCODES and
AUTH (docs/extensions.rst): what Exim sent, received and logged shows each
extension in use.  The same conversation against the default server is in
tests/test_exim_relay.py (plain DATA, one command at a time, DSN dropped)."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from aiosmtpd.smtp import MISSING, AuthResult, Envelope, Session
from tests._exim import Exim, exim_dialogue
from tests._server import ServerFactory
from tests.test_exim_relay import MESSAGE, SENDER, check_relayed, verbs

pytestmark = pytest.mark.external

EximFactory = Callable[..., Exim]
RCPTS = ["bob@y.example", "carol@y.example"]


class Keeps:
    """Keeps the envelope and leaves the reply to the server (so that the
    server's own, coded, 250 goes out)."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> Any:
        self.envelopes.append(envelope)
        return MISSING


def accept(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    return AuthResult(success=True)


def test_exim_uses_every_extension(start: ServerFactory, exim: EximFactory) -> None:
    handler = Keeps()
    server = start(
        handler,
        enable_PIPELINING=True,
        enable_DSN=True,
        enable_ENHANCEDSTATUSCODES=True,
        authenticator=accept,
        auth_require_tls=False,
    )
    relay = exim(server.port, auth=("alice", "s3cret"), auth_sender="<>")
    result = relay.send(
        MESSAGE, SENDER, RCPTS,
        mail_params="RET=HDRS ENVID=env-42",
        rcpt_params=[f"NOTIFY=SUCCESS,DELAY,FAILURE ORCPT=rfc822;{r}" for r in RCPTS],
    )

    ehlo = result.received[1].split()
    for keyword in ("250-PIPELINING", "250-DSN", "250-ENHANCEDSTATUSCODES"):
        assert keyword in ehlo, ehlo
    # PIPELINING: MAIL and the RCPTs held back and sent as one group.
    assert verbs(result.sent) == ["EHLO", "AUTH", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]
    dialogue = exim_dialogue(result.transcript)
    markers = [m for m, text in dialogue if text.startswith(("MAIL", "RCPT"))]
    assert markers == ["|>", "|>", "|>"], markers
    # DSN and AUTH=<> went on MAIL and RCPT, and reached the envelope.
    mail = result.sent[2]
    assert "RET=HDRS" in mail and "ENVID=env-42" in mail and "AUTH=<>" in mail, mail
    [envelope] = handler.envelopes
    assert (envelope.dsn_ret, envelope.dsn_envid) == ("HDRS", "env-42")
    assert envelope.mail_auth == "<>"
    for rcpt in RCPTS:
        dsn = envelope.dsn_recipients[rcpt]
        assert dsn.notify == frozenset({"SUCCESS", "DELAY", "FAILURE"})
        assert dsn.orcpt == ("rfc822", rcpt)
    assert envelope.content is not None
    check_relayed(bytes(envelope.content), result.message_id)  # type: ignore[arg-type]
    # ENHANCEDSTATUSCODES: Exim received the codes and logged the final one.
    assert "250 2.1.0 OK" in result.received
    assert result.received.count("250 2.1.5 OK") == 2
    assert '=> bob@y.example R=relay T=relay H=127.0.0.1 [127.0.0.1] A=plain C="250 2.0.0 OK"' in (
        result.log
    ), result.log
    assert relay.stray_processes() == []
