"""Mutual TLS between page services: every node proves who it is with a
certificate from the deployment's CA, and the common name of that
certificate is the node's name (what origins record peer references under).
"""

from __future__ import annotations

import re
import ssl
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class CertificateError(ValueError):
    pass


def server_context(cert_file: str, key_file: str, ca_file: str) -> ssl.SSLContext:
    """Serves only peers whose client certificate the CA signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.load_verify_locations(ca_file)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(cert_file: str, key_file: str, ca_file: str) -> ssl.SSLContext:
    """Talks only to origins whose certificate the CA signed for the name
    (host or IP address) being connected to."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.load_verify_locations(ca_file)
    return context


def peer_name(certificate: dict[str, Any] | None) -> str:
    """The node name in a verified peer certificate (its subject CN)."""
    if not certificate:
        raise CertificateError("the peer presented no certificate")
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                if not isinstance(value, str) or not NODE_NAME.match(value):
                    raise CertificateError(f"certificate CN {value!r} is not a node name")
                return value
    raise CertificateError("the peer certificate has no common name")


def own_name(cert_file: str) -> str:
    """This node's name: the CN of its own certificate."""
    with open(cert_file, "rb") as f:
        certificate = x509.load_pem_x509_certificate(f.read())
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or not NODE_NAME.match(str(names[0].value)):
        raise CertificateError(f"{cert_file} has no common name that is a node name")
    return str(names[0].value)
