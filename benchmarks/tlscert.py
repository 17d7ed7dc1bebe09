"""A throwaway CA and server certificate for the STARTTLS scenario."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVER_NAME = "bench.localhost"


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    """Server certificate chain (PEM)."""
    key: Path
    """Server private key (PEM)."""
    ca: Path
    """What the client trusts (PEM)."""
    made_by: str


def make_tls_files(directory: Path) -> TLSFiles:
    """Write an ECDSA P-256 certificate for bench.localhost and 127.0.0.1.

    trustme when installed; otherwise the openssl CLI with the same key type,
    so the handshake costs the same either way.
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, ca = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    try:
        import trustme
    except ImportError:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-nodes",
                "-days",
                "2",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-subj",
                f"/CN={SERVER_NAME}",
                "-addext",
                f"subjectAltName=DNS:{SERVER_NAME},IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )
        ca.write_bytes(cert.read_bytes())
        return TLSFiles(cert, key, ca, "openssl")
    authority = trustme.CA()
    leaf = authority.issue_cert(SERVER_NAME, "127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    return TLSFiles(cert, key, ca, "trustme")
