"""Certificates for the provider's PKI: a RootCA, leaf certificates, PEM files.

The seed's hosting guide has the provider run its own "RootCA" from which every device
certificate is derived (howto-hosting-with-v10, "Certificates"; protocol.md §3 and §8):
``C=<country>, O=<hoster>, CN=<hoster> Device Certification Authority``, RSA 4096,
20 years; device certificates carry CN = hardware id / NetBIOS name and SANs with the
external and internal addresses. This module builds those certificates and reads and
writes them as PEM files.

Everything here is synchronous and CPU- or disk-bound (RSA key generation takes from
tens of milliseconds up to seconds); async callers run these functions in a thread
(``asyncio.to_thread``). Every failure the caller can act on is a :class:`PkiError`
whose message names the file or the parameter and the problem.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

# RFC 5280 upper bounds (ub-common-name, ub-organization-name).
_MAX_COMMON_NAME = 64
_MAX_ORGANIZATION = 64
_MAX_DNS_NAME = 253  # RFC 1035
# A floor for new RSA keys; the seed asks for 2048 (§9) or 4096 (RootCA).
_MIN_RSA_BITS = 2048
_MAX_RSA_BITS = 16384
_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
# Certificates start a little in the past so a device whose clock is slightly behind
# still accepts a certificate issued a moment ago.
_BACKDATE = timedelta(minutes=5)
# ensure_demo_pki re-issues a certificate that expires within this window.
_RENEW_BEFORE = timedelta(days=30)
# Device common names become file names in ensure_demo_pki: only these characters.
_DEVICE_COMMON_NAME = re.compile(r"[A-Za-z0-9._-]+")
_DNS_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_LOCK_FILE_NAME = ".pki.lock"


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


@dataclass(frozen=True)
class DemoPki:
    """Paths of the files ensure_demo_pki keeps in place."""

    directory: Path
    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path
    device_certificates: dict[str, tuple[Path, Path]]  # common name -> (cert, key)


# --------------------------------------------------------------------------- keys


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


# ------------------------------------------------------------------ certificates


def create_root_ca(
    *,
    country: str,
    organization: str,
    common_name: str | None = None,
    key_type: str = "rsa",
    key_bits: int = 4096,
    curve: str = "P-256",
    valid_days: int = 20 * 365,
    now: datetime | None = None,
) -> IssuedCertificate:
    """Create the provider's self-signed RootCA as the seed describes it.

    Subject ``C=<country>, O=<organization>, CN=<common_name>``; the common name defaults
    to ``"<organization> Device Certification Authority"``. ``country`` must be a
    two-letter code (``DE``, not ``Germany``; upper-cased). Extensions: basicConstraints
    CA:TRUE and keyUsage keyCertSign+cRLSign (both critical), subjectKeyIdentifier.
    Valid from shortly before ``now`` (default: the current time; must be timezone-aware)
    for ``valid_days``. Raises PkiError for invalid parameters.
    """
    country_code = _validate_country(country)
    _validate_text("organization", organization, _MAX_ORGANIZATION)
    if common_name is None:
        common_name = f"{organization} Device Certification Authority"
    _validate_text("common_name", common_name, _MAX_COMMON_NAME)
    _validate_valid_days(valid_days)
    current = _aware(now)
    key = generate_key(key_type, key_bits, curve)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, country_code),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(current - _BACKDATE)
        .not_valid_after(current + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    certificate = builder.sign(private_key=key, algorithm=hashes.SHA256())
    return IssuedCertificate(certificate=certificate, key=key)


def issue_certificate(
    ca: IssuedCertificate,
    *,
    common_name: str,
    organization: str | None = None,
    country: str | None = None,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    key: PrivateKey | None = None,
    key_type: str = "rsa",
    key_bits: int = 2048,
    curve: str = "P-256",
    valid_days: int = 825,
    server: bool = True,
    client: bool = True,
    now: datetime | None = None,
) -> IssuedCertificate:
    """Issue a leaf certificate signed by ``ca`` (SHA-256, random serial).

    Uses ``key`` when given, otherwise generates one (``key_type``/``key_bits``/``curve``
    as for :func:`generate_key`). Extensions: basicConstraints CA:FALSE (critical),
    keyUsage digitalSignature plus keyEncipherment for RSA keys (critical),
    extendedKeyUsage serverAuth and/or clientAuth as asked (at least one),
    subjectAltName with ``dns_names`` and ``ip_addresses`` when any are given
    (duplicates dropped), subjectKeyIdentifier, and authorityKeyIdentifier taken from
    the CA's subjectKeyIdentifier. Validity starts shortly before ``now`` and lasts
    ``valid_days`` but never beyond the CA's own expiry.

    Raises PkiError when the CA certificate is not a CA, is expired or not yet valid at
    ``now``, its key does not match it, or a parameter is invalid (a bad IP address,
    a DNS name that is not ASCII, a country that is not two letters, ...).
    """
    if key is None:
        # Validate everything cheap before spending time on a key.
        _check_usable_ca(ca, _aware(now))
        _subject_alternative_names(dns_names, ip_addresses)
        key = generate_key(key_type, key_bits, curve)
    elif not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise PkiError(f"key: {type(key).__name__} is not supported; use an RSA or EC key")
    certificate = sign_public_key(
        ca,
        key.public_key(),
        common_name=common_name,
        organization=organization,
        country=country,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        valid_days=valid_days,
        server=server,
        client=client,
        now=now,
    )
    return IssuedCertificate(certificate=certificate, key=key)


def sign_public_key(
    ca: IssuedCertificate,
    public_key: PublicKey,
    *,
    common_name: str,
    organization: str | None = None,
    country: str | None = None,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    valid_days: int = 825,
    server: bool = True,
    client: bool = True,
    now: datetime | None = None,
) -> x509.Certificate:
    """Sign a leaf certificate for ``public_key`` (a key the caller does not hold, e.g. from a
    device's signing request). Same extensions, checks and errors as :func:`issue_certificate`;
    RSA keys must have at least 2048 bits, EC keys use P-256 or P-384."""
    current = _aware(now)
    _check_usable_ca(ca, current)
    _check_public_key(public_key)
    _validate_text("common_name", common_name, _MAX_COMMON_NAME)
    attributes: list[x509.NameAttribute[str]] = []
    if country is not None:
        attributes.append(x509.NameAttribute(NameOID.COUNTRY_NAME, _validate_country(country)))
    if organization is not None:
        _validate_text("organization", organization, _MAX_ORGANIZATION)
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    alternative_names = _subject_alternative_names(dns_names, ip_addresses)
    _validate_valid_days(valid_days)
    usages: list[x509.ObjectIdentifier] = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if not usages:
        raise PkiError("server/client: at least one of them must be True")

    not_before = max(current - _BACKDATE, ca.certificate.not_valid_before_utc)
    not_after = min(current + timedelta(days=valid_days), ca.certificate.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # Only RSA keys can encrypt a TLS key exchange (RSA key transport).
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_identifier(ca.certificate), critical=False)
    )
    if alternative_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(alternative_names), critical=False
        )
    return builder.sign(private_key=ca.key, algorithm=hashes.SHA256())


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 fingerprint of the DER certificate: lowercase hex, no colons."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def certificate_to_hex_der(certificate: x509.Certificate) -> str:
    """Lowercase hex of the DER certificate, the form device scripts use (protocol.md §9)."""
    return certificate.public_bytes(serialization.Encoding.DER).hex()


# --------------------------------------------- device names, signing requests, CRL, PKCS#12


@dataclass(frozen=True)
class CertificateNames:
    """The subject common name and subjectAltNames a certificate is issued for."""

    common_name: str
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()

    def same_as(self, other: CertificateNames) -> bool:
        """Equal as sets (order and letter case of DNS names do not matter)."""
        return (
            self.common_name == other.common_name
            and {name.lower() for name in self.dns_names}
            == {name.lower() for name in other.dns_names}
            and {str(ipaddress.ip_address(a)) for a in self.ip_addresses}
            == {str(ipaddress.ip_address(a)) for a in other.ip_addresses}
        )

    def describe(self) -> str:
        parts = [f"CN={self.common_name}"]
        parts += [f"DNS:{name}" for name in self.dns_names]
        parts += [f"IP:{address}" for address in self.ip_addresses]
        return ", ".join(parts)


def device_certificate_names(
    common_name: str,
    *,
    external: str,
    internal: str | None = None,
    extra_dns: str | None = None,
) -> CertificateNames:
    """The seed's device certificate ("Device Certificates"): CN = the device's NetBIOS name
    (its hardware id), DNS name 1 and IP address 1 = the external address, DNS name 2 and IP
    address 2 = the internal address, optionally DNS name 3 = a real DNS name.

    The seed writes addresses into the DNS names too; an address that is a host name becomes a
    DNS name only. For a device that has only an internal address the caller passes the address
    of the NAT router it is reached through (for a customer PBX: its Frontend) as ``external``.
    Raises PkiError for an invalid name or address.
    """
    _validate_text("common_name", common_name, _MAX_COMMON_NAME)
    dns_names: list[str] = []
    ip_addresses: list[str] = []
    for role, value in (("external", external), ("internal", internal)):
        if value is None or not value.strip():
            if role == "external":
                raise PkiError("external: a device certificate needs an external address")
            continue
        value = value.strip()
        dns_names.append(value)
        try:
            ip_addresses.append(str(ipaddress.ip_address(value)))
        except ValueError:
            _validate_dns_name(value)
    if extra_dns:
        dns_names.append(_validate_dns_name(extra_dns.strip()))
    names = CertificateNames(
        common_name, tuple(dict.fromkeys(dns_names)), tuple(dict.fromkeys(ip_addresses))
    )
    _subject_alternative_names(names.dns_names, names.ip_addresses)
    return names


def certificate_names(item: x509.Certificate | x509.CertificateSigningRequest) -> CertificateNames:
    """The common name and subjectAltNames a certificate or signing request carries."""
    attributes = item.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = ""
    if attributes:
        value = attributes[0].value
        common_name = value if isinstance(value, str) else value.decode("utf-8", "replace")
    try:
        extension = item.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        names: list[x509.GeneralName] = []
    else:
        names = list(extension.value)
    dns_names = tuple(name.value for name in names if isinstance(name, x509.DNSName))
    ip_addresses = tuple(str(name.value) for name in names if isinstance(name, x509.IPAddress))
    return CertificateNames(common_name, dns_names, ip_addresses)


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


@dataclass(frozen=True)
class RevokedEntry:
    serial: int
    revoked_at: datetime
    reason: str | None = None


_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
}
REVOCATION_REASONS = tuple(_REASONS)


def build_crl(
    ca: IssuedCertificate,
    revoked: Sequence[RevokedEntry],
    *,
    number: int,
    valid_days: int = 7,
    now: datetime | None = None,
) -> bytes:
    """A DER certificate revocation list signed by ``ca`` (v2, CRL number, authority key id),
    valid from ``now`` for ``valid_days``. Raises PkiError for an unusable CA or an unknown
    reason (see REVOCATION_REASONS)."""
    current = _aware(now)
    _check_usable_ca(ca, current)
    _validate_valid_days(valid_days)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(current - _BACKDATE)
        .next_update(current + timedelta(days=valid_days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_authority_key_identifier(ca.certificate), critical=False)
    )
    for entry in revoked:
        item = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
        )
        if entry.reason and entry.reason != "unspecified":
            flag = _REASONS.get(entry.reason)
            if flag is None:
                raise PkiError(f"reason {entry.reason!r}: one of {', '.join(_REASONS)}")
            item = item.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(item.build())
    crl = builder.sign(private_key=ca.key, algorithm=hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.DER)


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


def certificate_der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def load_der_certificate(der: bytes) -> x509.Certificate:
    """Raises PkiError when ``der`` is not one DER certificate."""
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise PkiError("not a DER certificate") from None


def check_ca_usable(ca: IssuedCertificate, now: datetime | None = None) -> None:
    """PkiError when ``ca`` cannot issue now: not a CA, expired, not yet valid, wrong key."""
    _check_usable_ca(ca, _aware(now))


# ------------------------------------------------------------------------- files


def write_pem_files(
    issued: IssuedCertificate,
    certificate_path: Path,
    key_path: Path,
    passphrase: bytes | None = None,
    chain: Sequence[x509.Certificate] = (),
) -> None:
    """Write the certificate (followed by ``chain``) and the private key as PEM files.

    Parent directories are created. Each file is replaced atomically: written to a
    temporary file in the same directory, fsynced, then renamed over the target, so a
    reader sees either the old or the new file, never a partial one. The key file has
    mode 0600 from the moment it exists; the certificate file gets 0644 (independent of
    the umask). The key is written first. With ``passphrase`` the key is encrypted.
    Raises PkiError naming the file when it cannot be written, or when both paths are
    the same file.
    """
    if os.path.abspath(certificate_path) == os.path.abspath(key_path):
        raise PkiError(f"{key_path}: certificate and key must be different files")
    key_data = issued.key_pem(passphrase)
    certificate_data = issued.certificate_pem() + b"".join(
        extra.public_bytes(serialization.Encoding.PEM) for extra in chain
    )
    _write_atomically(key_path, key_data, 0o600)
    _write_atomically(certificate_path, certificate_data, 0o644)


def load_certificate(path: Path) -> x509.Certificate:
    """Load the first PEM certificate in ``path`` (the leaf, when the file holds a chain).

    Raises PkiError naming the file when it is missing, unreadable or holds no PEM
    certificate.
    """
    return load_certificate_chain(path)[0]


def load_certificate_chain(path: Path) -> list[x509.Certificate]:
    """Load every PEM certificate in ``path`` in file order (at least one).

    Raises PkiError naming the file when it is missing, unreadable or holds no PEM
    certificate.
    """
    data = _read_file(path)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise PkiError(f"{path}: not a PEM certificate file ({error})") from None
    if not certificates:  # pragma: no cover - cryptography raises instead
        raise PkiError(f"{path}: contains no certificate")
    return certificates


def load_key(path: Path, passphrase: bytes | None = None, *, check_mode: bool = True) -> PrivateKey:
    """Load an RSA or EC private key from a PEM file (PKCS#8 or traditional format).

    With ``check_mode`` (the default) a key file that grants group or others any access
    (mode & 0o077) is refused, the way ssh refuses such keys; the mode is checked on the
    opened file, so it is the file actually read. Raises PkiError naming the file when it
    is missing, unreadable, not a regular file, too open, not a PEM key, encrypted
    without ``passphrase`` (or the passphrase is wrong), or of another key type.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as error:
        raise _os_error(path, error) from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise PkiError(f"{path}: not a regular file")
        mode = stat.S_IMODE(status.st_mode)
        if check_mode and mode & 0o077:
            access = "readable" if mode & 0o044 else "accessible"
            raise PkiError(f"{path}: mode {mode:04o} is {access} by others; chmod 600")
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            data = file.read()
    except OSError as error:
        raise _os_error(path, error) from None
    finally:
        os.close(descriptor)
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        if passphrase is None:
            raise PkiError(f"{path}: key is encrypted; a passphrase is needed") from None
        raise PkiError(f"{path}: key is not encrypted but a passphrase was given") from None
    except ValueError:
        raise PkiError(f"{path}: not a PEM private key, or wrong passphrase") from None
    except UnsupportedAlgorithm as error:
        raise PkiError(f"{path}: unsupported key ({error})") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: {type(key).__name__} keys are not supported; use RSA or EC")
    return key


def load_issued(
    certificate_path: Path, key_path: Path, passphrase: bytes | None = None
) -> IssuedCertificate:
    """Load a certificate and its key (see load_certificate and load_key, mode checked).

    Raises PkiError as those do, and when the key does not belong to the certificate.
    """
    certificate = load_certificate(certificate_path)
    key = load_key(key_path, passphrase)
    if not _key_matches(certificate, key):
        raise PkiError(f"{key_path}: key does not belong to the certificate in {certificate_path}")
    return IssuedCertificate(certificate=certificate, key=key)


def load_certificate_authority(
    certificate_path: Path, key_path: Path, passphrase: bytes | None = None
) -> IssuedCertificate:
    """Load the provider RootCA (see load_issued: the key file must be mode 0600). Raises
    PkiError naming the file when it is not a CA certificate or the key does not belong to it.
    Expiry is checked when it issues (an expired CA still serves its last CRL)."""
    issued = load_issued(certificate_path, key_path, passphrase)
    if not _is_ca(issued.certificate):
        raise PkiError(
            f"{certificate_path}: not a CA certificate (basicConstraints CA:TRUE, keyCertSign)"
        )
    return issued


def read_passphrase(path: Path | None, environment_value: str | None) -> bytes | None:
    """A key passphrase from a file (first line, without its line end) or, without a file, an
    environment variable's value; None when neither is given. PkiError naming the file when it
    cannot be read or is empty."""
    if path is not None:
        text = _read_file(path).decode("utf-8", "replace").splitlines()
        if not text or not text[0]:
            raise PkiError(f"{path}: the passphrase file is empty")
        return text[0].encode("utf-8")
    if environment_value:
        return environment_value.encode("utf-8")
    return None


# --------------------------------------------------------------------- demo PKI


def ensure_demo_pki(
    directory: Path,
    *,
    organization: str,
    country: str,
    server_names: Sequence[str],
    device_common_names: Sequence[str],
    ca_key_bits: int = 2048,
    server_key_bits: int = 2048,
    device_key_bits: int = 2048,
) -> DemoPki:
    """Make sure a complete demo PKI exists in ``directory`` and return its paths.

    Files: ``ca.pem``/``ca.key`` (RootCA as create_root_ca makes it),
    ``server.pem``/``server.key`` (serverAuth, CN = first server name, SANs = all
    ``server_names``: entries that parse as IP addresses become IP SANs, the others DNS
    SANs) and ``devices/<cn>.pem``/``devices/<cn>.key`` per device common name
    (clientAuth, CN = the hardware id, O and C as the CA). Keys are unencrypted, 0600.

    Idempotent: a certificate/key pair is reused when both files exist, the key matches,
    it still fits the request (subject, SANs, issued by the current CA) and it is valid
    for at least 30 more days. Otherwise the pair is issued anew; a new CA re-issues
    everything. Files present but unreadable, corrupt or with a key readable by others
    raise PkiError instead of being overwritten, so an operator looks at them. Device
    common names must match ``[A-Za-z0-9._-]+`` (at most 64 characters) because they
    become file names; anything else raises PkiError before any file is touched.
    Concurrent callers on the same directory are serialised with a lock file
    (``.pki.lock``). Files of devices no longer listed are left alone.
    """
    country_code = _validate_country(country)
    _validate_text("organization", organization, _MAX_ORGANIZATION)
    device_names = list(dict.fromkeys(device_common_names))
    for common_name in device_names:
        _validate_device_common_name(common_name)
    if not server_names:
        raise PkiError("server_names: at least one name is needed")
    server_common_name = server_names[0]
    _validate_text("server_names[0]", server_common_name, _MAX_COMMON_NAME)
    server_dns, server_ips = _split_server_names(server_names)
    # Validate the SANs now, before anything is written.
    expected_server_sans = _san_sets(_subject_alternative_names(server_dns, server_ips))

    ca_certificate_path, ca_key_path = directory / "ca.pem", directory / "ca.key"
    server_certificate_path, server_key_path = directory / "server.pem", directory / "server.key"
    devices_directory = directory / "devices"
    device_paths = {
        name: (devices_directory / f"{name}.pem", devices_directory / f"{name}.key")
        for name in device_names
    }
    ca_common_name = f"{organization} Device Certification Authority"
    _validate_text("organization (in the CA common name)", ca_common_name, _MAX_COMMON_NAME)
    ca_subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, country_code),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, ca_common_name),
        ]
    )

    _make_directory(directory)
    with _directory_lock(directory):
        now = datetime.now(UTC)
        ca = _reusable_pair(
            ca_certificate_path,
            ca_key_path,
            now,
            lambda issued: issued.certificate.subject == ca_subject and _is_ca(issued.certificate),
        )
        # A new CA invalidates everything it did not sign: re-issue all leaves.
        reuse_leaves = ca is not None
        if ca is None:
            ca = create_root_ca(
                country=country_code, organization=organization, key_bits=ca_key_bits, now=now
            )
            write_pem_files(ca, ca_certificate_path, ca_key_path)

        server = None
        if reuse_leaves:
            server = _reusable_pair(
                server_certificate_path,
                server_key_path,
                now,
                _leaf_acceptor(ca.certificate, server_common_name, expected_server_sans),
            )
        if server is None:
            server = issue_certificate(
                ca,
                common_name=server_common_name,
                organization=organization,
                country=country_code,
                dns_names=server_dns,
                ip_addresses=server_ips,
                key_bits=server_key_bits,
                server=True,
                client=False,
                now=now,
            )
            write_pem_files(server, server_certificate_path, server_key_path)

        for common_name, (certificate_path, key_path) in device_paths.items():
            device = None
            if reuse_leaves:
                device = _reusable_pair(
                    certificate_path,
                    key_path,
                    now,
                    _leaf_acceptor(ca.certificate, common_name, None),
                )
            if device is None:
                device = issue_certificate(
                    ca,
                    common_name=common_name,
                    organization=organization,
                    country=country_code,
                    key_bits=device_key_bits,
                    server=False,
                    client=True,
                    now=now,
                )
                write_pem_files(device, certificate_path, key_path)

    return DemoPki(
        directory=directory,
        ca_certificate=ca_certificate_path,
        ca_key=ca_key_path,
        server_certificate=server_certificate_path,
        server_key=server_key_path,
        device_certificates=device_paths,
    )


# ----------------------------------------------------------------------- helpers


def _aware(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise PkiError("now: must be timezone-aware (e.g. datetime.now(UTC))")
    return now.astimezone(UTC)


def _validate_country(country: str) -> str:
    # X.509 countryName is a two-letter ISO 3166 code; the seed's "e.g. Germany" is the
    # device UI's label, the certificate needs "DE".
    if not re.fullmatch(r"[A-Za-z]{2}", country):
        raise PkiError(f"country {country!r}: must be a two-letter ISO 3166 code such as DE")
    return country.upper()


def _validate_text(parameter: str, value: str, limit: int) -> None:
    if not value or not value.strip():
        raise PkiError(f"{parameter}: must not be empty")
    if len(value) > limit:
        raise PkiError(f"{parameter}: {len(value)} characters, X.509 allows at most {limit}")
    if not value.isprintable():
        raise PkiError(f"{parameter} {value!r}: must not contain control characters")


def _validate_valid_days(valid_days: int) -> None:
    if isinstance(valid_days, bool) or valid_days < 1:
        raise PkiError(f"valid_days {valid_days!r}: must be at least 1")


def _validate_device_common_name(common_name: str) -> None:
    # The name becomes a file name: never let an identifier reach a path unchecked.
    if not _DEVICE_COMMON_NAME.fullmatch(common_name) or common_name in {".", ".."}:
        raise PkiError(
            f"device common name {common_name!r}: only letters, digits, '.', '_' and '-' allowed"
        )
    if len(common_name) > _MAX_COMMON_NAME:
        raise PkiError(
            f"device common name {common_name!r}: longer than {_MAX_COMMON_NAME} characters"
        )


def _validate_dns_name(name: str) -> str:
    if not name.isascii():
        raise PkiError(f"dns_names {name!r}: must be ASCII (use the IDNA 'xn--' form)")
    labels = name.removeprefix("*.").split(".")
    if len(name) > _MAX_DNS_NAME or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise PkiError(f"dns_names {name!r}: not a valid DNS name")
    return name


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise PkiError(f"ip_addresses {value!r}: not an IPv4 or IPv6 address") from None


def _subject_alternative_names(
    dns_names: Sequence[str], ip_addresses: Sequence[str]
) -> list[x509.GeneralName]:
    if isinstance(dns_names, str) or isinstance(ip_addresses, str):
        raise PkiError("dns_names/ip_addresses: pass a sequence of strings, not one string")
    names: list[x509.GeneralName] = []
    for dns_name in dict.fromkeys(dns_names):
        names.append(x509.DNSName(_validate_dns_name(dns_name)))
    for address in dict.fromkeys(_parse_ip(value) for value in ip_addresses):
        names.append(x509.IPAddress(address))
    return names


def _split_server_names(server_names: Sequence[str]) -> tuple[list[str], list[str]]:
    dns_names: list[str] = []
    ip_addresses: list[str] = []
    for name in server_names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            dns_names.append(name)
        else:
            ip_addresses.append(name)
    return dns_names, ip_addresses


def _certificate_sans(certificate: x509.Certificate) -> list[x509.GeneralName]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(extension.value)


def _san_sets(names: Sequence[x509.GeneralName]) -> tuple[frozenset[str], frozenset[str]]:
    dns_names = frozenset(name.value.lower() for name in names if isinstance(name, x509.DNSName))
    ip_addresses = frozenset(str(name.value) for name in names if isinstance(name, x509.IPAddress))
    return dns_names, ip_addresses


def _common_name(certificate: x509.Certificate) -> str | None:
    attributes = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _describe(certificate: x509.Certificate) -> str:
    return f"CA {certificate.subject.rfc4514_string()!r}"


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    if not constraints.value.ca:
        return False
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        return True  # RFC 5280: no keyUsage means no restriction
    return usage.value.key_cert_sign


def _check_usable_ca(ca: IssuedCertificate, now: datetime) -> None:
    certificate = ca.certificate
    if not _is_ca(certificate):
        raise PkiError(
            f"{_describe(certificate)}: not a CA certificate (basicConstraints/keyUsage)"
        )
    if now > certificate.not_valid_after_utc:
        raise PkiError(
            f"{_describe(certificate)}: expired on {certificate.not_valid_after_utc:%Y-%m-%d}; "
            "create a new RootCA"
        )
    if now < certificate.not_valid_before_utc:
        raise PkiError(
            f"{_describe(certificate)}: not valid before "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    if not _key_matches(certificate, ca.key):
        raise PkiError(f"{_describe(certificate)}: the CA key does not belong to the certificate")


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


def _authority_key_identifier(ca_certificate: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        public_key = ca_certificate.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise PkiError(f"{_describe(ca_certificate)}: unsupported CA key type") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _public_key_der(
    key: x509.Certificate | PrivateKey,
) -> bytes:
    public_key = key.public_key()
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_matches(certificate: x509.Certificate, key: PrivateKey) -> bool:
    return _public_key_der(certificate) == _public_key_der(key)


def _issued_by(certificate: x509.Certificate, ca_certificate: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _reusable_pair(
    certificate_path: Path,
    key_path: Path,
    now: datetime,
    accept: Callable[[IssuedCertificate], bool],
) -> IssuedCertificate | None:
    """The pair on disk if it can be kept, None when it must be (re)issued.

    Missing files, a key that does not match, a certificate expiring within the renewal
    window or one ``accept`` rejects mean "issue anew"; unreadable or corrupt files
    raise PkiError (see ensure_demo_pki).
    """
    if not certificate_path.exists() or not key_path.exists():
        return None
    certificate = load_certificate(certificate_path)
    key = load_key(key_path)
    if not _key_matches(certificate, key):
        return None
    if (
        not certificate.not_valid_before_utc
        <= now
        <= certificate.not_valid_after_utc - _RENEW_BEFORE
    ):
        return None
    issued = IssuedCertificate(certificate=certificate, key=key)
    return issued if accept(issued) else None


def _leaf_acceptor(
    ca_certificate: x509.Certificate,
    common_name: str,
    subject_alternative_names: tuple[frozenset[str], frozenset[str]] | None,
) -> Callable[[IssuedCertificate], bool]:
    """A check that a leaf on disk is the one ensure_demo_pki would issue now."""

    def accept(issued: IssuedCertificate) -> bool:
        certificate = issued.certificate
        if _common_name(certificate) != common_name:
            return False
        if not _issued_by(certificate, ca_certificate):
            return False
        if subject_alternative_names is None:
            return True
        return _san_sets(_certificate_sans(certificate)) == subject_alternative_names

    return accept


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise _os_error(path, error) from None


def _os_error(path: Path, error: OSError) -> PkiError:
    if isinstance(error, FileNotFoundError):
        return PkiError(f"{path}: file does not exist")
    if isinstance(error, PermissionError):
        return PkiError(f"{path}: permission denied")
    if isinstance(error, IsADirectoryError):
        return PkiError(f"{path}: is a directory, not a file")
    return PkiError(f"{path}: {error.strerror or error}")


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PkiError(f"{directory}: cannot create directory: {error.strerror or error}") from None


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    directory = path.parent
    _make_directory(directory)
    try:
        # mkstemp creates the file with mode 0600, so a key is never readable by others,
        # not even for a moment.
        descriptor, temporary_name = tempfile.mkstemp(
            dir=directory, prefix=f".{path.name}.", suffix=".tmp"
        )
    except OSError as error:
        raise _os_error(path, error) from None
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary_name, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary_name)
        raise _os_error(path, error) from None
    # Make the rename itself durable.
    with contextlib.suppress(OSError):
        directory_descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory_descriptor)
        finally:
            os.close(directory_descriptor)


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    lock_path = directory / _LOCK_FILE_NAME
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise _os_error(lock_path, error) from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock
