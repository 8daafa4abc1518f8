"""Certificates in the forms other parties take them: DER, hex DER, fingerprints, PKCS#12.

Device scripts carry certificates as hex DER (protocol.md §9), the admin API and the CRL
distribution speak DER, operators compare SHA-256 fingerprints, and browsers and Windows import a
key with its certificate and chain as a passphrase-protected PKCS#12 file.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from services.core.pki.keys import (
    IssuedCertificate,
    PkiError,
)


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 fingerprint of the DER certificate: lowercase hex, no colons."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def certificate_der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def certificate_to_hex_der(certificate: x509.Certificate) -> str:
    """Lowercase hex of the DER certificate, the form device scripts use (protocol.md §9)."""
    return certificate_der(certificate).hex()


def load_der_certificate(der: bytes) -> x509.Certificate:
    """Raises PkiError when ``der`` is not one DER certificate."""
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise PkiError("not a DER certificate") from None


def pkcs12_bundle(
    issued: IssuedCertificate,
    passphrase: bytes,
    *,
    name: str,
    chain: Sequence[x509.Certificate] = (),
) -> bytes:
    """The key, certificate and chain as a PKCS#12 file (what browsers and Windows import),
    encrypted with ``passphrase`` (AES-256, PBKDF2). Raises PkiError for an empty passphrase."""
    if not passphrase:
        raise PkiError("PKCS#12 passphrase: must not be empty")
    from cryptography.hazmat.primitives.serialization import pkcs12

    return pkcs12.serialize_key_and_certificates(
        name.encode("utf-8"),
        issued.key,
        issued.certificate,
        list(chain) or None,
        serialization.BestAvailableEncryption(passphrase),
    )
