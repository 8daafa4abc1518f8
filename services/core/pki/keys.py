"""Keys and the types every other module of the PKI package builds on.

:class:`PkiError` (every failure a caller can act on; the message names the file or the
parameter and the problem), :class:`IssuedCertificate` (a certificate with its private key, the
key never in a ``repr``), the key types, :func:`generate_key` (RSA 2048..16384 bits, EC P-256 or
P-384) and the checks that a public key is one we sign and that a key belongs to a certificate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
# A floor for new RSA keys; the seed asks for 2048 (§9) or 4096 (RootCA).
_MIN_RSA_BITS = 2048
_MAX_RSA_BITS = 16384
_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}


class PkiError(Exception):
    """A certificate or key problem; the message names the file or parameter and the fix."""


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate together with its private key (the key is never shown in repr)."""

    certificate: x509.Certificate
    key: PrivateKey = field(repr=False)

    def certificate_pem(self) -> bytes:
        """The certificate alone, PEM encoded."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, passphrase: bytes | None = None) -> bytes:
        """The private key as PKCS#8 PEM, encrypted with ``passphrase`` when one is given.

        Raises PkiError for an empty passphrase (that would look encrypted but is not).
        """
        encryption: serialization.KeySerializationEncryption
        if passphrase is None:
            encryption = serialization.NoEncryption()
        elif not passphrase:
            raise PkiError("passphrase: must not be empty; pass None for an unencrypted key")
        else:
            encryption = serialization.BestAvailableEncryption(passphrase)
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )


def generate_key(key_type: str = "rsa", bits: int = 2048, curve: str = "P-256") -> PrivateKey:
    """Generate a new private key.

    ``key_type`` is ``rsa`` (uses ``bits``, 2048..16384) or ``ecdsa`` (uses ``curve``,
    ``P-256`` or ``P-384``); the parameter the other type uses is ignored. Names are
    case-insensitive. Raises PkiError for anything else.
    """
    normalized_type = key_type.lower()
    if normalized_type == "rsa":
        if isinstance(bits, bool) or not _MIN_RSA_BITS <= bits <= _MAX_RSA_BITS:
            raise PkiError(
                f"key_bits {bits!r}: RSA keys must have {_MIN_RSA_BITS}..{_MAX_RSA_BITS} bits"
            )
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if normalized_type == "ecdsa":
        curve_object = _CURVES.get(curve.upper())
        if curve_object is None:
            raise PkiError(f"curve {curve!r}: must be one of {', '.join(_CURVES)}")
        return ec.generate_private_key(curve_object)
    raise PkiError(f"key_type {key_type!r}: must be 'rsa' or 'ecdsa'")


def _check_public_key(public_key: object) -> None:
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < _MIN_RSA_BITS:
            raise PkiError(
                f"RSA key of {public_key.key_size} bits: at least {_MIN_RSA_BITS} are needed"
            )
        return
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in ("secp256r1", "secp384r1"):
            raise PkiError(f"EC curve {public_key.curve.name}: only P-256 and P-384")
        return
    raise PkiError(f"{type(public_key).__name__} keys are not supported; use RSA or EC")


def _public_key_der(
    key: x509.Certificate | PrivateKey,
) -> bytes:
    public_key = key.public_key()
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_matches(certificate: x509.Certificate, key: PrivateKey) -> bool:
    return _public_key_der(certificate) == _public_key_der(key)
