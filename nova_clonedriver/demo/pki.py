"""Throwaway certificates: a CA and node certificates it signs, valid for
two days, for page services that live as long as a demo, benchmark or
test (real nodes get theirs from the operator's PKI, see the install
guide)."""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID


class ThrowawayPKI:
    def __init__(self, directory: str, ca_name: str = "throwaway-ca") -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
        self._ca_name = name
        self._ca_cert = (
            self._builder(name, self._ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca_file = os.path.join(directory, f"{ca_name}.crt")
        with open(self.ca_file, "wb") as f:
            f.write(self._ca_cert.public_bytes(serialization.Encoding.PEM))

    def node(self, name: str, ips: tuple[str, ...] = ("127.0.0.1",)) -> tuple[str, str]:
        """(certificate file, key file) of a node called ``name``, valid for
        localhost and ``ips``."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key()
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        cert_file = os.path.join(self.directory, f"{name}.crt")
        key_file = os.path.join(self.directory, f"{name}.key")
        with open(cert_file, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_file, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        os.chmod(key_file, 0o600)
        return cert_file, key_file

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.timezone.utc)
        issuer = getattr(self, "_ca_name", subject)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
        )
