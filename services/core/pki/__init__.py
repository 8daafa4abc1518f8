"""Certificates for the provider's PKI: a RootCA, leaf certificates, PEM files.

The seed's hosting guide has the provider run its own "RootCA" from which every device
certificate is derived (howto-hosting-with-v10, "Certificates"; protocol.md §3 and §8):
``C=<country>, O=<hoster>, CN=<hoster> Device Certification Authority``, RSA 4096,
20 years; device certificates carry CN = hardware id / NetBIOS name and SANs with the
external and internal addresses. This package builds those certificates and reads and
writes them as PEM files.

Everything here is synchronous and CPU- or disk-bound (RSA key generation takes from
tens of milliseconds up to seconds); async callers run these functions in a thread
(``asyncio.to_thread``). Every failure the caller can act on is a :class:`PkiError`
whose message names the file or the parameter and the problem.

The package, bottom up (each module imports only those above it): ``keys`` (:class:`PkiError`,
:class:`IssuedCertificate`, key generation and checks), ``names`` (subjects and subjectAltNames),
``issuing`` (RootCA, leaves, CRL), ``requests`` (devices' signing requests), ``export`` (DER,
hex, fingerprints, PKCS#12), ``files`` (PEM files, passphrases) and ``demo`` (the demo PKI).
The names below are the package's public face.
"""

from __future__ import annotations

from services.core.pki.demo import (
    DemoPki,
    ensure_demo_pki,
)
from services.core.pki.export import (
    certificate_der,
    certificate_fingerprint,
    certificate_to_hex_der,
    load_der_certificate,
    pkcs12_bundle,
)
from services.core.pki.files import (
    load_certificate,
    load_certificate_authority,
    load_certificate_chain,
    load_issued,
    load_key,
    read_passphrase,
    write_pem_files,
)
from services.core.pki.issuing import (
    REVOCATION_REASONS,
    RevokedEntry,
    build_crl,
    check_ca_usable,
    create_root_ca,
    issue_certificate,
    sign_public_key,
)
from services.core.pki.keys import (
    IssuedCertificate,
    PkiError,
    PrivateKey,
    PublicKey,
    generate_key,
)
from services.core.pki.names import (
    CertificateNames,
    certificate_names,
    device_certificate_names,
    subject_value,
)
from services.core.pki.requests import (
    MAX_REQUEST_BYTES,
    hex_to_bytes,
    load_signing_request,
)

__all__ = [
    "MAX_REQUEST_BYTES",
    "REVOCATION_REASONS",
    "CertificateNames",
    "DemoPki",
    "IssuedCertificate",
    "PkiError",
    "PrivateKey",
    "PublicKey",
    "RevokedEntry",
    "build_crl",
    "certificate_der",
    "certificate_fingerprint",
    "certificate_names",
    "certificate_to_hex_der",
    "check_ca_usable",
    "create_root_ca",
    "device_certificate_names",
    "ensure_demo_pki",
    "generate_key",
    "hex_to_bytes",
    "issue_certificate",
    "load_certificate",
    "load_certificate_authority",
    "load_certificate_chain",
    "load_der_certificate",
    "load_issued",
    "load_key",
    "load_signing_request",
    "pkcs12_bundle",
    "read_passphrase",
    "sign_public_key",
    "subject_value",
    "write_pem_files",
]
