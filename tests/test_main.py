"""The command-line program, in-process (option parsing) and as a real process."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from aiosmtpd import __version__
from aiosmtpd import main as main_module
from aiosmtpd.handlers import Debugging, Mailbox, Sink
from aiosmtpd.main import DEFAULT_PORT, parse_listen, parseargs

REPO = Path(__file__).resolve().parent.parent
PROG = main_module.PROGRAM

# ---------------------------------------------------------------- module surface


def test_module_surface() -> None:
    from aiosmtpd import smtp

    assert main_module.__all__ == ["main"]
    assert main_module.DATA_SIZE_DEFAULT == smtp.DATA_SIZE_DEFAULT == 33554432
    # 1.4.6's default port (docs/cli.rst); the tests below only parse it, never bind it.
    assert DEFAULT_PORT == 8025


# ---------------------------------------------------------------- --listen


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("localhost", DEFAULT_PORT)),
        ("mx.example:2525", ("mx.example", 2525)),
        ("mx.example", ("mx.example", DEFAULT_PORT)),
        (":2525", ("localhost", 2525)),
        ("mx.example:", ("mx.example", DEFAULT_PORT)),
        (":", ("localhost", DEFAULT_PORT)),
        ("", ("", DEFAULT_PORT)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("fe80::1:2525", ("fe80::1", 2525)),
        ("::1:2526", ("::1", 2526)),
        ("mx.example: 2525", ("mx.example", 2525)),
        ("mx.example:-1", ("mx.example", -1)),
        ("mx.example:99999", ("mx.example", 99999)),
        # Decided IPv6 forms (upstream got these wrong).
        ("::1", ("::1", DEFAULT_PORT)),
        ("::", ("::", DEFAULT_PORT)),
        ("[::1]", ("::1", DEFAULT_PORT)),
        ("[::1]:2525", ("::1", 2525)),
        ("[::1]:", ("::1", DEFAULT_PORT)),
        ("[fe80::1%eth0]:25", ("fe80::1%eth0", 25)),
        ("2001:db8::25", ("2001:db8::25", DEFAULT_PORT)),
        ("2001:db8:::25", ("2001:db8::", 25)),
        ("::ffff:192.0.2.1", ("::ffff:192.0.2.1", DEFAULT_PORT)),
    ],
)
def test_parse_listen(value: str | None, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize(
    ("value", "bad"),
    [("mx.example:smtp", "smtp"), (":abc", "abc"), ("[::1]:x", "x")],
)
def test_parse_listen_bad_port(value: str, bad: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_listen(value)
    assert str(exc.value) == bad


# ---------------------------------------------------------------- parseargs


def test_parseargs_defaults() -> None:
    _, args = parseargs([])
    assert isinstance(args.handler, Debugging)
    assert (args.host, args.port) == ("localhost", DEFAULT_PORT)
    assert args.setuid is True
    assert args.size is None
    assert args.smtputf8 is False
    assert args.debug == 0
    assert args.requiretls is True
    assert args.classargs == []


def test_parseargs_options(tmp_path: Path) -> None:
    _, args = parseargs(
        [
            "-n",
            "-s",
            "1000",
            "-u",
            "-ddd",
            "-l",
            "[::1]:2525",
            "--no-requiretls",
            "-c",
            "aiosmtpd.handlers.Mailbox",
            str(tmp_path / "md"),
        ]
    )
    assert isinstance(args.handler, Mailbox)
    assert args.handler.mail_dir == str(tmp_path / "md")
    assert (args.setuid, args.size, args.smtputf8, args.debug) == (False, 1000, True, 3)
    assert (args.host, args.port, args.requiretls) == ("::1", 2525, False)


def test_bare_listen_is_default() -> None:
    _, args = parseargs(["-l"])
    assert (args.host, args.port) == ("localhost", DEFAULT_PORT)


def test_debugging_classargs() -> None:
    _, args = parseargs(["stderr"])
    assert args.handler.stream is sys.stderr


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        parseargs(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {PROG} ")
    prefix = f"{PROG}: error: "
    last = err.splitlines()[-1]
    assert last.startswith(prefix)
    return last[len(prefix) :]


@pytest.fixture
def cert_files(tmp_path: Path) -> tuple[str, str]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path = tmp_path / "cert.pem"
    key_path = tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_path)
    cert.private_key_pem.write_to_path(key_path)
    return str(cert_path), str(key_path)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["-s", "abc"], "argument -s/--size: invalid int value: 'abc'"),
        (["-s", "-5"], "Invalid size: -5"),
        (["-c", "collections.OrderedDict", "a"], "Handler class collections takes no arguments"),
        (["-c", "aiosmtpd.handlers.Sink", "x"], "Sink handler does not accept arguments"),
        (["-c", "aiosmtpd.handlers.Mailbox"], "The directory for the maildir is required"),
        (["-c", "aiosmtpd.handlers.Mailbox", "a", "b"], "Too many arguments for Mailbox handler"),
        (["file"], "Debugging usage: [stdout|stderr]"),
        (["-l", ":abc"], "Invalid port number: abc"),
        (["-l", "mx.example:smtp"], "Invalid port number: smtp"),
        (["--smtpscert", "c"], "--smtpscert and --smtpskey must be specified together"),
        (["--smtpskey", "k"], "--smtpscert and --smtpskey must be specified together"),
        (["--tlscert", "c"], "--tlscert and --tlskey must be specified together"),
        (["--tlskey", "k"], "--tlscert and --tlskey must be specified together"),
        (
            ["--smtpscert", "/nonexistent/c", "--smtpskey", "/nonexistent/k"],
            "Cert file /nonexistent/c not found",
        ),
        (
            ["--tlscert", "/nonexistent/c", "--tlskey", "/nonexistent/k"],
            "Cert file /nonexistent/c not found",
        ),
        # Order of checks: the handler, then the port, then SMTPS, then STARTTLS.
        (
            ["-l", ":x", "--tlscert", "c", "-c", "aiosmtpd.handlers.Sink", "y"],
            "Sink handler does not accept arguments",
        ),
        (["-l", ":x", "--tlscert", "c"], "Invalid port number: x"),
        (
            ["--tlscert", "c", "--smtpscert", "c"],
            "--smtpscert and --smtpskey must be specified together",
        ),
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert usage_error(capsys, argv) == message


def test_missing_key_files(capsys: pytest.CaptureFixture[str], cert_files: tuple[str, str]) -> None:
    cert, _ = cert_files
    assert usage_error(capsys, ["--smtpscert", cert, "--smtpskey", "/no/k"]) == (
        "Key file /no/k not found"
    )
    assert usage_error(capsys, ["--tlscert", cert, "--tlskey", "/no/k"]) == (
        "Key file /no/k not found"
    )


def test_negative_size_checked_before_handler_is_built(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    usage_error(capsys, ["-s", "-1", "-c", "aiosmtpd.handlers.Mailbox", str(tmp_path / "md")])
    assert not (tmp_path / "md").exists()


@pytest.mark.parametrize(
    ("classpath", "error", "text"),
    [
        ("nonexistent_module_xyz.Handler", ModuleNotFoundError, "nonexistent_module_xyz"),
        ("aiosmtpd.handlers.Nope", AttributeError, "has no attribute 'Nope'"),
        ("Sink", ValueError, "Empty module name"),
        ("aiosmtpd.handlers.Proxy", TypeError, "remote_hostname"),
        ("aiosmtpd.handlers.Message", TypeError, "abstract"),
    ],
)
def test_bad_handler_class_raises(classpath: str, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        parseargs(["-c", classpath])


def test_handler_without_from_cli_is_instantiated() -> None:
    _, args = parseargs(["-c", "collections.OrderedDict"])
    assert args.handler == {}


# ---------------------------------------------------------------- as a process


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def run_cli(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiosmtpd", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def greeting(port: int, process: subprocess.Popen[str]) -> bytes:
    """Poll until the server greets; the greeting proves the loop is running."""
    while True:
        try:
            with closing(socket.create_connection(("127.0.0.1", port), timeout=30)) as s:
                data = s.recv(1024)
                if data:
                    return data
        except ConnectionRefusedError:
            pass
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"server exited with {process.returncode}:\n{err}")
        time.sleep(0.01)  # polling interval, not synchronisation


@contextmanager
def cli_server(*argv: str, setuid: bool = False) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    args = [sys.executable, "-m", "aiosmtpd", "-l", f"127.0.0.1:{port}", *argv]
    if not setuid:
        args.insert(3, "-n")
    process = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert greeting(port, process).startswith(b"220 ")
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def stop(process: subprocess.Popen[str], sig: int = signal.SIGINT) -> tuple[str, str]:
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    return out, err


def test_version() -> None:
    result = run_cli("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"aiosmtpd {__version__}\n", "")
    assert run_cli("-v").stdout == f"aiosmtpd {__version__}\n"


def test_help() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert result.stdout.startswith(
        "usage: aiosmtpd [-h] [-v] [-n] [-c CLASSPATH] [-s SIZE] [-u] [-d]\n"
        "                [-l [[HOST][:PORT]]] [--smtpscert CERTFILE]\n"
        "                [--smtpskey KEYFILE] [--tlscert CERTFILE] [--tlskey KEYFILE]\n"
        "                [--no-requiretls]\n"
        "                [CLASSARGS ...]\n"
    )
    assert "An RFC 5321 SMTP server with extensions." in result.stdout
    assert "no limit" in result.stdout  # -s: the real default, not 33554432


def test_usage_error_in_a_process() -> None:
    result = run_cli("-l", ":abc")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: aiosmtpd ")
    assert result.stderr.endswith("aiosmtpd: error: Invalid port number: abc\n")


def test_console_script_program_name(tmp_path: Path) -> None:
    script = tmp_path / "my-aiosmtpd"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
        "from aiosmtpd.main import main\nmain()\n"
    )
    script.chmod(0o755)
    # A wide terminal: argparse wraps long version lines, and tmp paths are long.
    env = {**os.environ, "COLUMNS": "500"}
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.stdout == f"{script} {__version__}\n"


def test_bad_class_is_a_traceback() -> None:
    result = run_cli("-n", "-c", "nonexistent_module_xyz.Handler")
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "ModuleNotFoundError" in result.stderr


def test_bind_failure_is_a_traceback() -> None:
    with closing(socket.create_server(("127.0.0.1", 0))) as busy:
        port = busy.getsockname()[1]
        result = run_cli("-n", "-l", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert "OSError" in result.stderr
    assert "address already in use" in result.stderr


def test_serves_mail_and_exits_0_on_sigint() -> None:
    with cli_server() as (process, port):
        with closing(smtplib.SMTP("127.0.0.1", port, timeout=30)) as client:
            code, text = client.ehlo("me")
            assert code == 250
            assert text.splitlines()[1:] == [b"8BITMIME", b"HELP"]  # no SIZE, no SMTPUTF8
            client.sendmail("a@x", ["b@x"], b"Subject: cli\r\n\r\nhello\r\n")
            client.quit()
        out, err = stop(process)
    assert process.returncode == 0
    assert err == ""
    assert out.startswith("---------- MESSAGE FOLLOWS ----------\nSubject: cli\nX-Peer: ")
    assert out.endswith("\nhello\n------------ END MESSAGE ------------\n")


def test_sigint_with_a_client_still_connected() -> None:
    # --drain-timeout 0: 1.4.6's immediate stop (the default drains first).
    with cli_server("-c", "aiosmtpd.handlers.Sink", "--drain-timeout", "0") as (process, port):
        with closing(smtplib.SMTP("127.0.0.1", port, timeout=30)) as client:
            client.ehlo("me")
            client.mail("a@x")
            _, err = stop(process)
            assert process.returncode == 0
            assert err == ""
            with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
                client.rcpt("b@x")


def test_sigterm_kills() -> None:
    with cli_server("-c", "aiosmtpd.handlers.Sink") as (process, _):
        stop(process, signal.SIGTERM)
    assert process.returncode == -signal.SIGTERM


def test_size_and_smtputf8_options() -> None:
    with cli_server("-u", "-s", "1000", "-c", "aiosmtpd.handlers.Sink") as (process, port):
        with closing(smtplib.SMTP("127.0.0.1", port, timeout=30)) as client:
            _, text = client.ehlo("me")
            assert text.splitlines()[1:] == [b"SIZE 1000", b"8BITMIME", b"SMTPUTF8", b"HELP"]
            with pytest.raises(smtplib.SMTPSenderRefused) as exc:
                client.sendmail("a@x", ["b@x"], b"x" * 2000)
            assert exc.value.smtp_code == 552
        stop(process)
    assert process.returncode == 0


def test_size_zero_means_unlimited() -> None:
    with cli_server("-s", "0", "-c", "aiosmtpd.handlers.Sink") as (process, port):
        with closing(smtplib.SMTP("127.0.0.1", port, timeout=30)) as client:
            _, text = client.ehlo("me")
            assert b"SIZE" not in text
        stop(process)


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_starttls_required(cert_files: tuple[str, str]) -> None:
    cert, key = cert_files
    with cli_server("--tlscert", cert, "--tlskey", key, "-c", "aiosmtpd.handlers.Sink") as (
        process,
        port,
    ):
        with closing(smtplib.SMTP("127.0.0.1", port, timeout=30)) as client:
            client.ehlo("me")
            assert client.has_extn("starttls")
            assert client.mail("a@x") == (530, b"Must issue a STARTTLS command first")
            client.starttls(context=client_context())
            client.ehlo("me")
            assert not client.has_extn("starttls")
            assert client.sendmail("a@x", ["b@x"], b"S: x\r\n\r\nb\r\n") == {}
        stop(process)
    assert process.returncode == 0


def test_starttls_optional(cert_files: tuple[str, str]) -> None:
    cert, key = cert_files
    argv = ("--tlscert", cert, "--tlskey", key, "--no-requiretls", "-c", "aiosmtpd.handlers.Sink")
    with cli_server(*argv) as (process, port):
        with closing(smtplib.SMTP("127.0.0.1", port, timeout=30)) as client:
            client.ehlo("me")
            assert client.has_extn("starttls")
            assert client.sendmail("a@x", ["b@x"], b"S: x\r\n\r\nb\r\n") == {}
        stop(process)


@contextmanager
def smtps_cli_server(*argv: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    # The plain greeting poll cannot be used on a TLS listener.
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}", *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while True:
            try:
                client = smtplib.SMTP_SSL("127.0.0.1", port, timeout=30, context=client_context())
                client.close()
                break
            except ConnectionRefusedError:
                if process.poll() is not None:
                    pytest.fail(process.communicate()[1])
                time.sleep(0.01)  # polling interval, not synchronisation
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_smtps(cert_files: tuple[str, str]) -> None:
    cert, key = cert_files
    with smtps_cli_server(
        "--smtpscert", cert, "--smtpskey", key, "-c", "aiosmtpd.handlers.Sink"
    ) as (
        process,
        port,
    ):
        with closing(
            smtplib.SMTP_SSL("127.0.0.1", port, timeout=30, context=client_context())
        ) as c:
            c.ehlo("me")
            assert not c.has_extn("starttls")
            assert c.sendmail("a@x", ["b@x"], b"S: x\r\n\r\nb\r\n") == {}
        stop(process)
    assert process.returncode == 0


def test_smtps_and_starttls_together(cert_files: tuple[str, str]) -> None:
    cert, key = cert_files
    argv = (
        "--smtpscert",
        cert,
        "--smtpskey",
        key,
        "--tlscert",
        cert,
        "--tlskey",
        key,
        "-c",
        "aiosmtpd.handlers.Sink",
    )
    with smtps_cli_server(*argv) as (process, port):
        with closing(
            smtplib.SMTP_SSL("127.0.0.1", port, timeout=30, context=client_context())
        ) as c:
            c.ehlo("me")
            # Already encrypted: STARTTLS is neither offered nor required.
            assert not c.has_extn("starttls")
            assert c.sendmail("a@x", ["b@x"], b"S: x\r\n\r\nb\r\n") == {}
        stop(process)


def test_debug_levels() -> None:
    with cli_server("-d", "-c", "aiosmtpd.handlers.Sink") as (process, port):
        _, err = stop(process)
    lines = err.splitlines()
    assert f"INFO:mail.log:Server is listening on 127.0.0.1:{port}" in lines
    assert not [line for line in lines if line.startswith("DEBUG:")]

    with cli_server("-ddd", "-c", "aiosmtpd.handlers.Sink") as (process, port):
        with closing(smtplib.SMTP("127.0.0.1", port, timeout=30)) as client:
            client.noop()
        _, err = stop(process)
    # -ddd turns on asyncio's debug mode, whose slow-callback warnings come
    # and go with the machine's load.
    lines = [line for line in err.splitlines() if not line.startswith("WARNING:asyncio:")]
    assert lines[0] == f"DEBUG:mail.log:Attempting to start server on 127.0.0.1:{port}"
    # The readiness probe's connection may log (its SMTP() instance) while the
    # listener is still being set up: only the start-up lines' order is fixed.
    startup = [
        line for line in lines
        if line.startswith(("DEBUG:mail.log:Attempting", "DEBUG:mail.log:server_loop",
                            "INFO:mail.log:Server is listening", "DEBUG:mail.log:Starting"))
    ]
    assert startup[1].startswith("DEBUG:mail.log:server_loop = <Server ")
    assert startup == [
        lines[0],
        startup[1],
        f"INFO:mail.log:Server is listening on 127.0.0.1:{port}",
        "DEBUG:mail.log:Starting asyncio loop",
    ]
    assert any(line.startswith("DEBUG:mail.log:('127.0.0.1', ") for line in lines)
    assert lines[-1] == "DEBUG:mail.log:Completed asyncio loop"


def test_no_debug_output_by_default() -> None:
    with cli_server("-c", "aiosmtpd.handlers.Sink") as (process, port):
        with closing(smtplib.SMTP("127.0.0.1", port, timeout=30)) as client:
            client.noop()
        _, err = stop(process)
    assert err == ""


# ---------------------------------------------------------------- privilege drop


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="privilege drop needs root"
)


@needs_root
def test_drops_to_nobody(cert_files: tuple[str, str]) -> None:
    nobody = pwd.getpwnam("nobody")
    cert, key = cert_files
    # A key only root may read: it must be loaded before the drop.
    os.chmod(key, 0o600)
    with cli_server(
        "--tlscert", cert, "--tlskey", key, "-c", "aiosmtpd.handlers.Sink", setuid=True
    ) as (process, port):
        status = proc_status(process.pid)
        assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
        assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
        assert status["Groups"] == ""
        with closing(smtplib.SMTP("127.0.0.1", port, timeout=30)) as client:
            client.starttls(context=client_context())
            assert client.sendmail("a@x", ["b@x"], b"S: x\r\n\r\nb\r\n") == {}
        stop(process)
    assert process.returncode == 0


def privileged_free_port() -> int:
    for port in range(1023, 900, -1):
        with closing(socket.socket()) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024")


@needs_root
def test_binds_privileged_port_before_dropping() -> None:
    port = privileged_free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aiosmtpd",
            "-l",
            f"127.0.0.1:{port}",
            "-c",
            "aiosmtpd.handlers.Sink",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert greeting(port, process).startswith(b"220 ")
        assert proc_status(process.pid)["Uid"].split()[0] == str(pwd.getpwnam("nobody").pw_uid)
        stop(process)
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_setuid_refused_when_not_root() -> None:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Run the program as an unprivileged user, if that user can run it.
        try:
            probe = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"import sys; sys.path.insert(0, {str(REPO)!r}); import aiosmtpd.main",
                ],
                user="nobody",
                capture_output=True,
                timeout=60,
                cwd="/",
            )
        except PermissionError:
            probe = None
        if probe is None or probe.returncode != 0:
            pytest.skip("user nobody cannot run this Python installation")
        kwargs: dict[str, Any] = {"user": "nobody"}
    else:
        kwargs = {}
    result = run_cli("-l", f"127.0.0.1:{free_port()}", "-c", "aiosmtpd.handlers.Sink", **kwargs)
    assert result.returncode == 1
    assert result.stderr == 'Cannot setuid "nobody"; try running with -n option.\n'


def test_main_in_process() -> None:
    port = free_port()
    returned: list[Any] = []

    def interrupt_when_serving() -> None:
        while not returned:
            try:
                with closing(socket.create_connection(("127.0.0.1", port), timeout=30)) as s:
                    if s.recv(1024).startswith(b"220 "):
                        os.kill(os.getpid(), signal.SIGINT)
                        return
            except ConnectionRefusedError:
                time.sleep(0.01)  # polling interval, not synchronisation

    thread = threading.Thread(target=interrupt_when_serving)
    thread.start()
    try:
        returned.append(
            main_module.main(["-n", "-l", f"127.0.0.1:{port}", "-c", "aiosmtpd.handlers.Sink"])
        )
    finally:
        returned.append("done")
        thread.join()
        # main() leaves its closed loop installed as the current one.
        asyncio.set_event_loop(None)
    assert returned[0] is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=30).close()


# ------------------------------------------------- embedded main(): how the loop stops
#
# Code that embeds main() makes its own loop current and may stop it with
# loop.stop() or a KeyboardInterrupt from a callback; main() must then return,
# with the listener and the loop closed, so that the port can be bound again.


async def greeting_line(port: int) -> bytes:
    """Connect as soon as the server listens; return its greeting line."""
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            await asyncio.sleep(0.01)  # polling interval, not synchronisation
            continue
        try:
            return await reader.readline()
        finally:
            writer.close()


def interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def stop_loop(loop: asyncio.AbstractEventLoop) -> None:
    loop.stop()


def stop_once_greeted(port: int, then: Callable[[asyncio.AbstractEventLoop], None]) -> Any:
    """Schedule: wait for the greeting, record it, then call ``then(loop)``."""
    greeted: list[bytes] = []

    def prepare(loop: asyncio.AbstractEventLoop) -> None:
        async def probe() -> None:
            greeted.append(await greeting_line(port))
            then(loop)

        loop.create_task(probe())

    return greeted, prepare


def embedded_main(port: int, prepare: Callable[[asyncio.AbstractEventLoop], None]) -> bool:
    """main() on a new current loop readied by ``prepare``; True if main() closed it."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        prepare(loop)
        argv = ["-n", "-l", f"127.0.0.1:{port}", "-c", "aiosmtpd.handlers.Sink"]
        try:
            assert main_module.main(argv) is None
        except KeyboardInterrupt:  # would end the whole pytest session
            pytest.fail("KeyboardInterrupt escaped main()")
        return loop.is_closed()
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def nobody_listens(port: int) -> bool:
    # With SO_REUSEADDR, Linux refuses the bind only while a socket listens there
    # (connections of the old server in TIME_WAIT do not count).
    with closing(socket.socket()) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


STOPS_WHILE_SERVING: dict[str, Callable[[asyncio.AbstractEventLoop], None]] = {
    "loop.stop() in a task": stop_loop,
    "loop.stop() in a callback": lambda loop: loop.call_soon(loop.stop) and None,
    "KeyboardInterrupt from a callback": lambda loop: loop.call_soon(interrupt) and None,
}


@pytest.mark.parametrize("how", list(STOPS_WHILE_SERVING))
def test_embedded_main_stopped_while_serving(how: str) -> None:
    port = free_port()
    greeted, prepare = stop_once_greeted(port, STOPS_WHILE_SERVING[how])
    assert embedded_main(port, prepare), "main() left its loop open"
    assert len(greeted) == 1 and greeted[0].startswith(b"220 ")
    assert nobody_listens(port)
    # The same port again, as the next embedded main() would use it.
    greeted, prepare = stop_once_greeted(port, stop_loop)
    assert embedded_main(port, prepare)
    assert len(greeted) == 1 and greeted[0].startswith(b"220 ")
    assert nobody_listens(port)


@pytest.mark.parametrize(
    "stop",
    [stop_loop, interrupt],
    ids=["loop.stop()", "KeyboardInterrupt"],
)
def test_embedded_main_stopped_while_binding(stop: Callable[..., None]) -> None:
    # Queued before main() runs the loop, so it fires in main()'s first loop
    # pass, while the listening socket is being created.
    port = free_port()
    assert embedded_main(port, lambda loop: loop.call_soon(stop, loop) and None)
    assert nobody_listens(port)


def test_embedded_main_bind_failure_still_raises() -> None:
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="address already in use"):
            embedded_main(port, lambda loop: None)


def test_sink_handler_from_cli_is_sink() -> None:
    _, args = parseargs(["-c", "aiosmtpd.handlers.Sink"])
    assert isinstance(args.handler, Sink)


# -- Operations flags (docs/operations.rst) --------------------------------------------

SHUTTING_DOWN = b"421 4.3.2 Service shutting down, try again later\r\n"


def _in_transaction(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo("me")
    assert client.mail("a@example.com")[0] == 250
    assert client.rcpt("b@example.com")[0] == 250
    return client


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 0), (signal.SIGTERM, -signal.SIGTERM)])
def test_signal_drains_transactions_first(sig: int, status: int) -> None:
    with cli_server("-c", "aiosmtpd.handlers.Sink") as (process, port):
        with closing(_in_transaction(port)) as busy, closing(
            socket.create_connection(("127.0.0.1", port), timeout=30)
        ) as idle, idle.makefile("rb") as idle_lines:
            assert idle_lines.readline().startswith(b"220 ")
            process.send_signal(sig)
            # The idle client is told at once: the drain has begun...
            assert idle_lines.readline() == SHUTTING_DOWN
            # ...and the transaction in flight still completes.
            assert busy.data(b"Subject: x\r\n\r\nhello\r\n")[0] == 250
            # Unasked: a command sent now could race the close.
            assert busy.getreply() == (421, b"4.3.2 Service shutting down, try again later")
        process.communicate(timeout=60)
    assert process.returncode == status


def test_second_signal_stops_the_drain() -> None:
    with cli_server("-c", "aiosmtpd.handlers.Sink", "-d") as (process, port):
        with closing(_in_transaction(port)):
            process.send_signal(signal.SIGINT)
            assert process.stderr is not None
            for line in process.stderr:
                if "Draining 1 connections" in line:
                    break
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=60)
    assert process.returncode == 0
    assert "Stopping without waiting for the drain to end" in err


def test_connection_limit_flag() -> None:
    with cli_server("-c", "aiosmtpd.handlers.Sink", "--max-connections", "1") as (process, port):
        # The startup probe may still be counted for a moment.
        while True:
            first = socket.create_connection(("127.0.0.1", port), timeout=30)
            line = first.makefile("rb").readline()
            if line.startswith(b"220 "):
                break
            first.close()
        with closing(first), closing(socket.create_connection(("127.0.0.1", port), 30)) as second:
            assert second.makefile("rb").readline() == (
                b"421 4.7.0 Too many connections, try again later\r\n"
            )
        stop(process)


def test_metrics_endpoint() -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    metrics_port = free_port()
    argv = ("-c", "aiosmtpd.handlers.Sink", "--metrics", f"127.0.0.1:{metrics_port}")
    with cli_server(*argv) as (process, port):
        with closing(smtplib.SMTP("127.0.0.1", port, timeout=30)) as client:
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nhello\r\n")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = r.read().decode()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/other", timeout=30)
        assert missing.value.code == 404
        stop(process)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parser.text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("aiosmtpd_messages_accepted_total", ())] == 1
    assert samples[("aiosmtpd_transactions_total", ())] == 1
    assert samples[("aiosmtpd_message_bytes_accepted_total", ())] == len(
        b"Subject: x\r\n\r\nhello\r\n"
    )
    assert samples[("aiosmtpd_replies_total", (("class", "3xx"),))] == 1
    assert samples[("aiosmtpd_connections_open", ())] == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--max-connections", "0"), "invalid positive integer value: '0'"),
        (("--max-connections-per-ip", "x"), "invalid positive integer value: 'x'"),
        (("--data-timeout", "0"), "invalid number of seconds value: '0'"),
        (("--drain-timeout", "-1"), "Invalid drain timeout: -1.0"),
        (("--metrics", "9100"), "Invalid --metrics address: 9100 (use HOST:PORT)"),
        (("--xclient-trusted", "10.0.0.1/8"), "invalid network list value: '10.0.0.1/8'"),
    ],
)
def test_bad_operations_flags(argv: tuple[str, ...], message: str) -> None:
    result = run_cli(*argv)
    assert result.returncode == 2
    assert result.stderr.rstrip("\n").endswith(message), result.stderr


def test_extension_flags() -> None:
    argv = ("-c", "aiosmtpd.handlers.Sink", "--pipelining", "--enhanced-status-codes", "--dsn")
    with cli_server(*argv) as (process, port):
        with closing(smtplib.SMTP("127.0.0.1", port, timeout=30)) as client:
            _, text = client.ehlo("me")
            assert text.splitlines()[-4:] == [
                b"PIPELINING", b"ENHANCEDSTATUSCODES", b"DSN", b"HELP"
            ]
            assert client.mail("a@example.com", ["RET=HDRS"]) == (250, b"2.1.0 OK")
        stop(process)


def test_xclient_flag() -> None:
    argv = ("-c", "aiosmtpd.handlers.Sink", "--xclient-trusted", "192.0.2.0/24, 127.0.0.0/8")
    with cli_server(*argv) as (process, port):
        with closing(smtplib.SMTP("127.0.0.1", port, timeout=30)) as client:
            _, text = client.ehlo("me")
            assert any(line.startswith(b"XCLIENT ") for line in text.splitlines())
            assert client.docmd("XCLIENT", "ADDR=192.0.2.9")[0] == 220
        stop(process)
