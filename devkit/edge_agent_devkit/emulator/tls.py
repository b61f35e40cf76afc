"""Throwaway TLS material for the emulator.

The SDK forces `wss://`, so the emulator must speak TLS; trustme makes a private CA and a
server certificate for the loopback names in a few milliseconds, and the CA's PEM is
written to disk so clients in other processes can trust it (`SSL_CERT_FILE`,
`ssl.create_default_context(cafile=...)`).

For TLS fault tests: `server_context` issues a loopback certificate from any trustme CA
(a second CA the client does not trust, or an expired certificate from one it does), and
`write_ca_bundle` writes several CAs into one file for `gemini.ca_file`.
"""

from __future__ import annotations

import datetime
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


def server_context(ca: trustme.CA, *, expired: bool = False) -> ssl.SSLContext:
    """A server context with a fresh loopback certificate from ``ca``.

    ``expired``: valid from 30 days ago until yesterday, as a certificate nobody renewed.
    """
    validity: dict[str, datetime.datetime] = {}
    if expired:
        now = datetime.datetime.now(datetime.UTC)
        validity = {
            "not_before": now - datetime.timedelta(days=30),
            "not_after": now - datetime.timedelta(days=1),
        }
    cert = ca.issue_cert(*SERVER_NAMES, **validity)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def write_ca_bundle(path: str | Path, *cas: trustme.CA | str | Path) -> Path:
    """One PEM file trusting every CA given (a trustme CA, or the path of a CA PEM)."""
    pems = []
    for ca in cas:
        if isinstance(ca, trustme.CA):
            pems.append(ca.cert_pem.bytes())
        else:
            pems.append(Path(ca).read_bytes())
    target = Path(path)
    target.write_bytes(b"".join(pem if pem.endswith(b"\n") else pem + b"\n" for pem in pems))
    return target
