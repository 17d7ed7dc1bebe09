"""One aiosmtpd instance behind HAProxy (docs/operations.rst ("Several instances behind HAProxy")).

    python3 haproxy_instance.py PORT

Listens on 127.0.0.1:PORT with the PROXY protocol on.  On SIGTERM (or
SIGINT) it drains: it stops listening, lets the transactions in flight finish
for at most DRAIN_SECONDS, then exits with status 0.
"""

import ipaddress
import signal
import sys

from aiosmtpd.controller import Controller

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


def main():
    # sigwait() below takes SIGTERM and SIGINT; block them before start() so
    # that the server's thread inherits the mask and never runs a handler.
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    controller = Controller(
        Handler(), hostname="127.0.0.1", port=int(sys.argv[1]), proxy_protocol_timeout=10
    )
    controller.start()
    print(f"listening on {controller.hostname}:{controller.port}", flush=True)
    signal.sigwait(signals)
    # Stop listening at once (HAProxy's health checks now fail, and it sends
    # new clients elsewhere), let the transactions in flight finish for at
    # most DRAIN_SECONDS, then close: a client whose message got no 250
    # sends it again (docs/operations.rst, "Graceful drain").
    controller.stop(drain_timeout=DRAIN_SECONDS)


if __name__ == "__main__":
    main()
