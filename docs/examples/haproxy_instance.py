"""One aiosmtpd instance behind HAProxy (docs/operations-haproxy.rst).

    python3 haproxy_instance.py PORT

Listens on 127.0.0.1:PORT with the PROXY protocol on.  On SIGTERM (or
SIGINT) it stops listening, lets the open sessions finish for at most
DRAIN_SECONDS, then closes whatever is left and exits with status 0.
"""

import ipaddress
import signal
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

PROXIES = {ipaddress.ip_address("127.0.0.1")}  # where HAProxy connects from
DRAIN_SECONDS = 30  # systemd's TimeoutStopSec must be longer


class Handler:
    async def handle_PROXY(self, server, session, envelope, proxy_data):
        # Only HAProxy may send a header (its health checks send LOCAL ones).
        return ipaddress.ip_address(session.peer[0]) in PROXIES

    async def handle_DATA(self, server, session, envelope):
        client = session.proxy_data.src_addr  # the real client, from HAProxy
        # Store the message durably here (write and fsync, or hand it to a
        # queue that confirms) BEFORE returning 250: the 250 is the promise.
        print(f"message from {client} for {envelope.rcpt_tos}", flush=True)
        return "250 OK"


class TrackingSMTP(SMTP):
    """An SMTP server that keeps the set of open connections up to date."""

    def __init__(self, handler, live, **kwargs):
        super().__init__(handler, **kwargs)
        self.live = live

    def connection_made(self, transport):
        self.live.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc):
        self.live.discard(self)
        super().connection_lost(exc)


class DrainingController(Controller):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.live = set()

    def factory(self):
        return TrackingSMTP(self.handler, self.live, **self.SMTP_kwargs)


def main():
    # sigwait() below takes SIGTERM and SIGINT; block them before start() so
    # that the server's thread inherits the mask and never runs a handler.
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    controller = DrainingController(
        Handler(), hostname="127.0.0.1", port=int(sys.argv[1]), proxy_protocol_timeout=10
    )
    controller.start()
    print(f"listening on {controller.hostname}:{controller.port}", flush=True)
    signal.sigwait(signals)
    # 1. Stop listening: HAProxy's health checks now fail, and a connection
    #    it tries here before it notices is refused and redispatched.
    controller.loop.call_soon_threadsafe(controller.server.close)
    # 2. Let the open sessions finish, for at most DRAIN_SECONDS.
    deadline = time.monotonic() + DRAIN_SECONDS
    while controller.live and time.monotonic() < deadline:
        time.sleep(0.1)
    # 3. Close what is left: a client whose message got no 250 sends it again.
    controller.stop()


if __name__ == "__main__":
    main()
