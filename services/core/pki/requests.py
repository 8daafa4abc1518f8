"""Signing requests as devices upload them (protocol.md §9).

:func:`load_signing_request` parses and checks a DER PKCS#10 request (size bound, self-signature,
key type and size) and :func:`hex_to_bytes` turns the hex text the device scripts carry into
bytes; both raise :class:`PkiError` naming what is wrong.
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.core.pki.keys import (
    PkiError,
    _check_public_key,
)

# A DER signing request with an RSA 16384 key is about 4.2 KB; anything far beyond is not one.
MAX_REQUEST_BYTES = 16 * 1024


def load_signing_request(der: bytes) -> x509.CertificateSigningRequest:
    """Parse and check a PKCS#10 signing request in DER form, as devices upload it (protocol.md
    §9). Raises PkiError when it is empty, too large, not DER PKCS#10, its self-signature does
    not verify, or its key is not RSA >= 2048 bits or EC P-256/P-384."""
    if not der:
        raise PkiError("signing request: empty")
    if len(der) > MAX_REQUEST_BYTES:
        raise PkiError(f"signing request: {len(der)} bytes, at most {MAX_REQUEST_BYTES}")
    try:
        request = x509.load_der_x509_csr(der)
    except ValueError:
        raise PkiError("signing request: not a DER PKCS#10 request") from None
    try:
        valid = request.is_signature_valid
        public_key = request.public_key()
    except (ValueError, UnsupportedAlgorithm) as error:
        raise PkiError(f"signing request: unusable ({error})") from None
    if not valid:
        raise PkiError("signing request: its signature does not verify")
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise PkiError(f"signing request: {type(public_key).__name__} keys are not supported")
    _check_public_key(public_key)
    return request


def hex_to_bytes(text: str, what: str) -> bytes:
    """Hex digits (either case, optional surrounding space) to bytes; PkiError naming ``what``
    when the text is empty, of odd length or not hex."""
    candidate = text.strip()
    if not candidate:
        raise PkiError(f"{what}: empty")
    if len(candidate) % 2 or not re.fullmatch(r"[0-9A-Fa-f]+", candidate):
        raise PkiError(f"{what}: not hex digits")
    return bytes.fromhex(candidate)
