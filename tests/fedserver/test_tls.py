"""TLS through uvicorn's certificate options, with a self-signed certificate made here."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.serve import serve_in_thread
from fedyolo.runtime.client import FederationClient

from .conftest import ENROLL_KEY


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, valid for a day, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedyolo test server")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_client_talks_tls_to_a_self_signed_server_and_unverified_peers_are_refused(
    tmp_path: Path, config: ServerConfig
) -> None:
    # Prepare
    cert, key = self_signed(tmp_path)
    # Execute
    with serve_in_thread(config, ssl_certfile=cert, ssl_keyfile=key) as url:
        with FederationClient(url, state_dir=tmp_path / "client", verify=cert) as client:
            client_id = client.register(ENROLL_KEY)
            tasks = client.tasks()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz")  # system CAs do not trust it
        plain = url.replace("https://", "http://")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{plain}/healthz")
    # Assert
    assert url.startswith("https://127.0.0.1:")
    assert client_id == 1 and {t["task_id"] for t in tasks} == {"topics", "language"}
