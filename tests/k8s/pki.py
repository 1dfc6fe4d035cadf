"""Certificates and keys for the Kubernetes test bed: one CA, serving and client certificates.

Private keys are written 0600, atomically. Everything is valid for 127.0.0.1 only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=7)  # a test bed lives for minutes; a week covers a paused one


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file 0600 from its first byte, then rename it into place."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def make_ca(pki: Path) -> None:
    """ca.crt and ca.key: signs every certificate of this bed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("tpi-jupyter k8s test bed CA")
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    write_private(pki / "ca.key", _key_pem(key))
    write_public(pki / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))


def issue(
    pki: Path,
    stem: str,
    common_name: str,
    *,
    orgs: tuple[str, ...] = (),
    serving: bool = False,
    ips: tuple[str, ...] = (),
) -> tuple[Path, Path]:
    """Sign <stem>.crt/<stem>.key with the bed's CA: a client certificate (CN = user, O = groups),
    or a serving one for 127.0.0.1, `ips` (the pod network's gateway) and the API server's names."""
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if serving else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(_name(common_name, orgs), ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if serving:
        dns = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
        addresses = [ipaddress.ip_address(i) for i in ("127.0.0.1", "10.0.0.1", *ips)]
        alt = [x509.DNSName(d) for d in dns] + [x509.IPAddress(i) for i in addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    crt, keyfile = pki / f"{stem}.crt", pki / f"{stem}.key"
    write_private(keyfile, _key_pem(key))
    write_public(crt, cert.public_bytes(serialization.Encoding.PEM))
    return crt, keyfile


def make_service_account_keys(pki: Path) -> None:
    """sa.key signs service-account tokens (API server, controller-manager); sa.pub verifies them."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_private(pki / "sa.key", _key_pem(key))
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_public(pki / "sa.pub", pub)
