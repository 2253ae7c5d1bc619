"""The keys and certificates of a private control plane: a CA, the API server's serving certificate for
127.0.0.1, and the service-account signing key. Written once into a state folder, owner-readable only."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID_FOR = datetime.timedelta(days=7)  # a test cluster lives minutes; a week tolerates clock skew


@dataclass(frozen=True)
class ControlPlaneCertificates:
    ca: Path  # the CA certificate clients trust
    serving_cert: Path  # the API server's certificate (127.0.0.1, localhost)
    serving_key: Path
    service_account_key: Path  # signs service-account tokens
    service_account_public_key: Path  # verifies them


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    signer: ec.EllipticCurvePrivateKey,
    *,
    is_ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def write_certificates(folder: Path) -> ControlPlaneCertificates:
    """Fresh keys and certificates in folder (created owner-only)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    files = ControlPlaneCertificates(
        ca=folder / "ca.crt",
        serving_cert=folder / "apiserver.crt",
        serving_key=folder / "apiserver.key",
        service_account_key=folder / "service-account.key",
        service_account_public_key=folder / "service-account.pub",
    )
    ca_key, serving_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("pinrec-e2e-ca", ca_key, "pinrec-e2e-ca", ca_key, is_ca=True)
    serving = _certificate("kube-apiserver", serving_key, "pinrec-e2e-ca", ca_key, is_ca=False)
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.serving_cert.write_bytes(serving.public_bytes(serialization.Encoding.PEM))
    _write_key(files.serving_key, serving_key)
    account_key = ec.generate_private_key(ec.SECP256R1())
    _write_key(files.service_account_key, account_key)
    files.service_account_public_key.write_bytes(
        account_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return files
