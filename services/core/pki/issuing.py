"""Issuing: the provider's RootCA, leaf certificates signed by it, and its CRL.

:func:`create_root_ca` makes the RootCA as the seed describes it (``C=<country>, O=<hoster>,
CN=<hoster> Device Certification Authority``), :func:`issue_certificate` and
:func:`sign_public_key` sign leaves (for a key we generate or one from a device's request), and
:func:`build_crl` signs the revocation list. Every one of them first checks that the CA can issue
at that moment (:func:`check_ca_usable`: a CA certificate, within its validity, its key matching).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.core.pki.keys import (
    IssuedCertificate,
    PkiError,
    PrivateKey,
    PublicKey,
    _check_public_key,
    _key_matches,
    generate_key,
)
from services.core.pki.names import (
    _MAX_COMMON_NAME,
    _MAX_ORGANIZATION,
    _subject_alternative_names,
    _validate_country,
    _validate_text,
)

# Certificates start a little in the past so a device whose clock is slightly behind
# still accepts a certificate issued a moment ago.
_BACKDATE = timedelta(minutes=5)


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
        common_name = _root_common_name(organization)
    _validate_text("common_name", common_name, _MAX_COMMON_NAME)
    _validate_valid_days(valid_days)
    current = _aware(now)
    key = generate_key(key_type, key_bits, curve)
    subject = _root_subject(country_code, organization, common_name)
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


def _root_common_name(organization: str) -> str:
    """The RootCA's default common name (the seed's "<hoster> Device Certification Authority")."""
    return f"{organization} Device Certification Authority"


def _root_subject(country_code: str, organization: str, common_name: str) -> x509.Name:
    """``C=<country>, O=<organization>, CN=<common_name>``: the RootCA's subject (and issuer)."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, country_code),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


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
    subject = _leaf_subject(common_name, organization, country)
    alternative_names = _subject_alternative_names(dns_names, ip_addresses)
    _validate_valid_days(valid_days)
    usages = _extended_key_usages(server=server, client=client)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(current - _BACKDATE, ca.certificate.not_valid_before_utc))
        .not_valid_after(
            min(current + timedelta(days=valid_days), ca.certificate.not_valid_after_utc)
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(public_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_identifier(ca.certificate), critical=False)
    )
    if alternative_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(alternative_names), critical=False
        )
    return builder.sign(private_key=ca.key, algorithm=hashes.SHA256())


def _leaf_subject(common_name: str, organization: str | None, country: str | None) -> x509.Name:
    """``[C=<country>,] [O=<organization>,] CN=<common_name>``; PkiError for an invalid part
    (checked in the order common name, country, organization)."""
    _validate_text("common_name", common_name, _MAX_COMMON_NAME)
    attributes: list[x509.NameAttribute[str]] = []
    if country is not None:
        attributes.append(x509.NameAttribute(NameOID.COUNTRY_NAME, _validate_country(country)))
    if organization is not None:
        _validate_text("organization", organization, _MAX_ORGANIZATION)
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _extended_key_usages(*, server: bool, client: bool) -> list[x509.ObjectIdentifier]:
    """serverAuth and/or clientAuth; PkiError when neither is asked for."""
    usages: list[x509.ObjectIdentifier] = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if not usages:
        raise PkiError("server/client: at least one of them must be True")
    return usages


def _leaf_key_usage(public_key: PublicKey) -> x509.KeyUsage:
    return x509.KeyUsage(
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
    )


def check_ca_usable(ca: IssuedCertificate, now: datetime | None = None) -> None:
    """PkiError when ``ca`` cannot issue now: not a CA, expired, not yet valid, wrong key."""
    _check_usable_ca(ca, _aware(now))


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


def _aware(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise PkiError("now: must be timezone-aware (e.g. datetime.now(UTC))")
    return now.astimezone(UTC)


def _validate_valid_days(valid_days: int) -> None:
    if isinstance(valid_days, bool) or valid_days < 1:
        raise PkiError(f"valid_days {valid_days!r}: must be at least 1")


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


def _authority_key_identifier(ca_certificate: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        public_key = ca_certificate.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise PkiError(f"{_describe(ca_certificate)}: unsupported CA key type") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _issued_by(certificate: x509.Certificate, ca_certificate: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
