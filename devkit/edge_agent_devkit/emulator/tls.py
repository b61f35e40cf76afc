"""Throwaway TLS material for the emulator.

The SDK forces `wss://`, so the emulator must speak TLS; trustme makes a private CA and a
server certificate for the loopback names in a few milliseconds, and the CA's PEM is
written to disk so clients in other processes can trust it (`SSL_CERT_FILE`,
`ssl.create_default_context(cafile=...)`).
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trustme

CA_FILE_NAME = "emulator-ca.pem"
SERVER_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass
class TlsMaterial:
    """Server context plus the CA PEM path; `cleanup()` removes a temp dir we created."""

    server_context: ssl.SSLContext
    ca_pem_path: Path
    created_dir: Path | None = None

    def client_context(self) -> ssl.SSLContext:
        """A fresh client SSLContext that trusts only the emulator's CA."""
        return ssl.create_default_context(cafile=str(self.ca_pem_path))

    def cleanup(self) -> None:
        if self.created_dir is not None:
            shutil.rmtree(self.created_dir, ignore_errors=True)
            self.created_dir = None


def make_tls(ca_dir: str | Path | None = None) -> TlsMaterial:
    """Create a CA and a loopback server certificate; write the CA PEM into `ca_dir`.

    Without `ca_dir` a private temp dir is used and removed by `cleanup()`.
    """
    created: Path | None = None
    if ca_dir is None:
        created = Path(tempfile.mkdtemp(prefix="edge-agent-emu-"))
        target_dir = created
    else:
        target_dir = Path(ca_dir)
        target_dir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert(*SERVER_NAMES)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    ca_path = target_dir / CA_FILE_NAME
    ca.cert_pem.write_to_path(str(ca_path))
    return TlsMaterial(server_context=server_context, ca_pem_path=ca_path, created_dir=created)
