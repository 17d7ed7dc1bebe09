"""One connection cannot starve the others (docs/internals.rst, "Fairness").

A client that pipelines tens of thousands of commands gets at most
``LINES_PER_TURN`` of them answered per turn of the event loop; the rest wait
while other connections are served.  Asserted by order, never by time: the
server's own log of command lines shows how many flood lines were answered
between two commands of a bystander.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from aiosmtpd.handlers import Sink
from tests._server import RawClient, ServerFactory

FLOOD_LINES = 60_000  # more than one 256 KiB read of "NOOP\r\n"
BYSTANDER_ROUNDS = 5


class CommandOrder(logging.Handler):
    """Keeps the peer port of every command line the server logs at INFO."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.ports: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "%r >> %r" and isinstance(record.args, tuple):
            peer = record.args[0]
            self.ports.append(peer[1])


@pytest.fixture
def command_order() -> Iterator[CommandOrder]:
    logger = logging.getLogger("mail.log")
    handler = CommandOrder()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_a_flooding_client_does_not_starve_a_bystander(
    start: ServerFactory, command_order: CommandOrder
) -> None:
    server = start(Sink())
    flood = RawClient(server.port)
    bystander = RawClient(server.port)
    first_reply = threading.Event()
    answered: list[int] = []

    def read_flood() -> None:
        count = 0
        while count < FLOOD_LINES:
            line = flood.line()
            assert line == b"250 OK", line
            count += 1
            if count == 1:
                first_reply.set()
        answered.append(count)

    # The server's peer port of each client is the client's own port.
    flood_port = flood.sock.getsockname()[1]
    bystander_port = bystander.sock.getsockname()[1]
    reader = threading.Thread(target=read_flood, daemon=True)
    reader.start()
    try:
        flood.send(b"NOOP\r\n" * FLOOD_LINES)
        assert first_reply.wait(30)
        for _ in range(BYSTANDER_ROUNDS):
            assert bystander.cmd("NOOP") == "250 OK"
        reader.join(60)
        assert answered == [FLOOD_LINES]
    finally:
        flood.close()
        bystander.close()

    ports = command_order.ports
    assert ports.count(bystander_port) == BYSTANDER_ROUNDS
    assert ports.count(flood_port) == FLOOD_LINES
    # Flood lines answered before, between and after the bystander's commands.
    gaps = [0]
    for port in ports:
        if port == bystander_port:
            gaps.append(0)
        else:
            gaps[-1] += 1
    before, *between, after = gaps
    assert after > 0, "the flood ended before the bystander spoke: nothing was tested"
    # One bystander round trip lasts a few turns of the loop at most; an
    # unfair server answers a whole 256 KiB read (~43,000 lines) in one turn.
    assert max(between) < 5_000, gaps
    assert before > 0
