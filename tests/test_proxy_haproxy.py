"""PROXY protocol headers produced by a real HAProxy (docs/proxyprotocol.rst).

Each test starts ``haproxy -db`` (foreground) on loopback with a generated
configuration, waits until its frontend accepts connections, and stops it at
the end.  The backend is either a small asyncio server built on get_proxy()
or, once it supports PROXY, aiosmtpd's own SMTP server with a handle_PROXY
hook.  In both cases the backend must learn the real client's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import shutil
import smtplib
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest

from aiosmtpd.proxy_protocol import AF, PROTO, ProxyData, ProxyTLV, get_proxy
from tests._server import ipv6_loopback_works

HAPROXY = shutil.which("haproxy")

pytestmark = [
    pytest.mark.external,
    pytest.mark.skipif(HAPROXY is None,
                       reason="haproxy not on PATH (Debian package 'haproxy')"),
]

T = TypeVar("T")


HOSTS = [pytest.param("127.0.0.1", id="ipv4"), pytest.param(
    "::1", id="ipv6",
    marks=pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback"))]


def run(coro: Awaitable[T]) -> T:
    async def guarded() -> T:
        # Hang guard only; pytest-timeout is the outer one.
        return await asyncio.wait_for(coro, 45)
    return asyncio.run(guarded())


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _url(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@contextlib.asynccontextmanager
async def haproxy(tmp: Path, *, front_host: str, backend: tuple[str, int],
                  server_opts: str, bind_opts: str = "",
                  front_lines: str = "") -> AsyncIterator[int]:
    """Run HAProxy in the foreground; yields the frontend port."""
    assert HAPROXY is not None
    log = tmp / "haproxy.log"
    for _attempt in range(5):  # the free port may be taken between probe and bind
        port = _free_port(front_host)
        cfg = tmp / "haproxy.cfg"
        cfg.write_text(f"""\
global
    maxconn 64
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind {_url(front_host, port)} {bind_opts}
{front_lines}
    default_backend be
backend be
    server s1 {_url(*backend)} {server_opts}
""")
        with log.open("wb") as out:
            proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT)
        try:
            if await _wait_ready(proc, front_host, port):
                yield port
                return
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    pytest.fail(f"haproxy did not start:\n{log.read_text(errors='replace')}")


async def _wait_ready(proc: subprocess.Popen[bytes], host: str, port: int) -> bool:
    """Poll the frontend with connects; False if haproxy exited instead."""
    for _ in range(1000):
        if proc.poll() is not None:
            return False
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.01)  # poll interval, not a synchronisation
            continue
        writer.close()
        return True
    return False


class Backend:
    """A plain asyncio server that reads the PROXY header with get_proxy(),
    records it, then echoes one line so the client knows it was recorded."""

    def __init__(self) -> None:
        self.seen: list[ProxyData] = []
        self.local = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await get_proxy(reader)
        self.seen.append(data)
        if data.command == 0:
            self.local.set()
        if data.valid and data.command != 0:
            line = await reader.readline()
            writer.write(b"ECHO " + line)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        writer.close()

    def for_client(self, port: int) -> ProxyData:
        # Readiness probes and health checks also arrive; pick this client's.
        found = [d for d in self.seen if d.src_port == port]
        assert len(found) == 1, self.seen
        return found[0]


@contextlib.asynccontextmanager
async def backend_server(factory: Callable[[], Any] | None = None,
                         ) -> AsyncIterator[tuple[Backend, tuple[str, int]]]:
    rec = Backend()
    loop = asyncio.get_running_loop()
    if factory is None:
        server = await asyncio.start_server(rec.handle, "127.0.0.1", 0)
    else:
        server = await loop.create_server(factory, "127.0.0.1", 0)
    try:
        yield rec, server.sockets[0].getsockname()[:2]
    finally:
        server.close()
        await server.wait_closed()


async def echo_client(host: str, port: int, **tls: Any) -> int:
    """Send one line through the proxy; returns the client's local port."""
    reader, writer = await asyncio.open_connection(host, port, **tls)
    try:
        writer.write(b"hello\r\n")
        assert await reader.readline() == b"ECHO hello\r\n"
        local_port: int = writer.get_extra_info("sockname")[1]
        return local_port
    finally:
        writer.close()


def assert_real_client(data: ProxyData, host: str, client_port: int, front_port: int) -> None:
    assert data.valid, data
    assert data.src_addr == ipaddress.ip_address(host)
    assert data.dst_addr == ipaddress.ip_address(host)
    assert (data.src_port, data.dst_port) == (client_port, front_port)
    assert data.family == (AF.INET6 if ":" in host else AF.INET)
    assert data.protocol == PROTO.STREAM


# ---------------------------------------------------------------------------
# against the get_proxy() backend


@pytest.mark.parametrize("host", HOSTS)
def test_send_proxy_v1(tmp_path: Path, host: str) -> None:
    async def scenario() -> None:
        async with backend_server() as (rec, addr), haproxy(
                tmp_path, front_host=host, backend=addr, server_opts="send-proxy") as port:
            client_port = await echo_client(host, port)
        data = rec.for_client(client_port)
        assert_real_client(data, host, client_port, port)
        assert data.version == 1 and data.command is None
        assert data.whole_raw.startswith(b"PROXY TCP") and data.whole_raw.endswith(b"\r\n")

    run(scenario())


@pytest.mark.parametrize("host", HOSTS)
def test_send_proxy_v2(tmp_path: Path, host: str) -> None:
    async def scenario() -> None:
        async with backend_server() as (rec, addr), haproxy(
                tmp_path, front_host=host, backend=addr, server_opts="send-proxy-v2") as port:
            client_port = await echo_client(host, port)
        data = rec.for_client(client_port)
        assert_real_client(data, host, client_port, port)
        assert data.version == 2 and data.command == 1
        assert data.tlv_start in (None, 52 if ":" in host else 28)

    run(scenario())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    trustme = pytest.importorskip("trustme")
    where = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    paths = {name: where / f"{name}.pem" for name in ("ca", "server", "client")}
    ca.cert_pem.write_to_path(paths["ca"])
    ca.issue_cert("mail.example.test", "127.0.0.1", "::1") \
        .private_key_and_cert_chain_pem.write_to_path(paths["server"])
    ca.issue_cert("client.example.test", common_name="client.example.test") \
        .private_key_and_cert_chain_pem.write_to_path(paths["client"])
    return paths


V2_ALL_OPTIONS = ("send-proxy-v2 proxy-v2-options "
                  "ssl,cert-cn,ssl-cipher,cert-sig,cert-key,authority,crc32c,unique-id")


@pytest.mark.parametrize("host", HOSTS)
def test_send_proxy_v2_tlvs_over_tls(tmp_path: Path, host: str, pki: dict[str, Path]) -> None:
    """TLS ends at HAProxy; the TLVs describe it (SNI, TLS version, client cert)."""
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    ctx.load_cert_chain(str(pki["client"]))

    async def scenario() -> None:
        async with backend_server() as (rec, addr), haproxy(
                tmp_path, front_host=host, backend=addr, server_opts=V2_ALL_OPTIONS,
                bind_opts=f"ssl crt {pki['server']} ca-file {pki['ca']} verify optional",
                front_lines="    unique-id-format %{+X}o%ci:%cp_%fi:%fp_%Ts_%rt:%pid",
                ) as port:
            client_port = await echo_client(host, port, ssl=ctx,
                                            server_hostname="mail.example.test")
        data = rec.for_client(client_port)
        assert_real_client(data, host, client_port, port)
        assert data.tlv_start == (52 if ":" in host else 28)
        tlv = data.tlv
        assert isinstance(tlv, ProxyTLV)
        assert tlv.AUTHORITY == b"mail.example.test"
        assert tlv.SSL is True and tlv.SSL_CLIENT & 0x01 and tlv.SSL_VERIFY == 0
        assert tlv.SSL_VERSION.startswith(b"TLSv1.")
        assert tlv.SSL_CN == b"client.example.test"
        assert tlv.SSL_CIPHER and tlv.SSL_SIG_ALG and tlv.SSL_KEY_ALG and tlv.UNIQUE_ID
        # Every recorded offset, SSL sub-TLVs included, points at its type byte.
        for name, at in tlv.tlv_loc.items():
            assert data.whole_raw[data.tlv_start + at] == ProxyTLV.name_to_num(name), name
        assert crc_matches(data)

    run(scenario())


def test_health_check_sends_local(tmp_path: Path) -> None:
    """HAProxy's health checks send the LOCAL command with no addresses."""
    async def scenario() -> ProxyData:
        async with backend_server() as (rec, addr), haproxy(
                tmp_path, front_host="127.0.0.1", backend=addr,
                server_opts="send-proxy-v2 proxy-v2-options crc32c check inter 100ms"):
            await rec.local.wait()
        return next(d for d in rec.seen if d.command == 0)

    data = run(scenario())
    assert data.valid and data.version == 2 and data.family == AF.UNSPEC
    assert data.src_addr is None and data.tlv is not None and crc_matches(data)


def _crc32c(data: bytes | bytearray) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def crc_matches(data: ProxyData) -> bool:
    assert data.tlv is not None
    at = (data.tlv_start or 16) + data.tlv.tlv_loc["CRC32C"] + 3
    raw = bytearray(data.whole_raw)
    raw[at:at + 4] = bytes(4)
    return _crc32c(raw) == int.from_bytes(data.tlv.CRC32C, "big")


# ---------------------------------------------------------------------------
# against aiosmtpd's SMTP server


def smtp_class() -> Any:
    """The SMTP class, or skip while it does not take proxy_protocol_timeout."""
    try:
        from aiosmtpd.smtp import SMTP
    except ImportError as exc:
        pytest.skip(f"aiosmtpd.smtp not available yet: {exc}")
    loop = asyncio.new_event_loop()
    try:
        SMTP(None, proxy_protocol_timeout=5, loop=loop)
    except TypeError as exc:
        pytest.skip(f"SMTP does not accept proxy_protocol_timeout yet: {exc}")
    finally:
        loop.close()
    return SMTP


class ProxyHook:
    def __init__(self, accept: bool) -> None:
        self.accept = accept
        self.seen: list[tuple[Any, ProxyData]] = []

    async def handle_PROXY(self, server: Any, session: Any, envelope: Any,
                           proxy_data: ProxyData) -> bool:
        self.seen.append((session.peer, proxy_data))
        return self.accept


def _smtp_dialogue(host: str, port: int) -> tuple[int, tuple[int, bytes]]:
    with smtplib.SMTP(host, port, timeout=20) as client:
        assert client.sock is not None
        local_port: int = client.sock.getsockname()[1]
        return local_port, client.noop()


@pytest.mark.parametrize("server_opts", ["send-proxy", "send-proxy-v2"])
@pytest.mark.parametrize("host", HOSTS)
def test_smtp_handle_proxy_sees_real_client(tmp_path: Path, host: str,
                                            server_opts: str) -> None:
    smtp = smtp_class()
    hook = ProxyHook(accept=True)

    async def scenario() -> None:
        async with backend_server(lambda: smtp(hook, proxy_protocol_timeout=5,
                                               hostname="smtp.test")) as (_, addr), \
                haproxy(tmp_path, front_host=host, backend=addr,
                        server_opts=server_opts) as port:
            client_port, reply = await asyncio.to_thread(_smtp_dialogue, host, port)
        assert reply[0] == 250
        [(peer, data)] = [(p, d) for p, d in hook.seen if d.src_port == client_port]
        assert_real_client(data, host, client_port, port)
        # session.peer is HAProxy's side of the backend connection.
        assert peer[0] == "127.0.0.1" and peer[1] != client_port

    run(scenario())


def test_smtp_rejecting_hook_closes_silently(tmp_path: Path) -> None:
    smtp = smtp_class()
    hook = ProxyHook(accept=False)

    def dialogue(port: int) -> None:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtplib.SMTP("127.0.0.1", port, timeout=20)

    async def scenario() -> None:
        async with backend_server(lambda: smtp(hook, proxy_protocol_timeout=5)) as (_, addr), \
                haproxy(tmp_path, front_host="127.0.0.1", backend=addr,
                        server_opts="send-proxy-v2") as port:
            await asyncio.to_thread(dialogue, port)
        assert any(d.valid for _, d in hook.seen)

    run(scenario())
