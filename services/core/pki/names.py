"""Names in certificates: subjects, subjectAltNames, the seed's device certificate names.

:class:`CertificateNames` is what a certificate is issued for (CN, DNS and IP subjectAltNames);
:func:`device_certificate_names` derives it the way the seed's "Device Certificates" section does
(CN = hardware id, external then internal address), :func:`certificate_names` reads it back from
a certificate or a signing request. The checks of countries, texts against the RFC 5280 bounds,
DNS names, IP addresses and device common names (which become file names) live here too.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from services.core.pki.keys import (
    PkiError,
)

# RFC 5280 upper bounds (ub-common-name, ub-organization-name).
_MAX_COMMON_NAME = 64
_MAX_ORGANIZATION = 64
_MAX_DNS_NAME = 253  # RFC 1035
# Device common names become file names in ensure_demo_pki: only these characters.
_DEVICE_COMMON_NAME = re.compile(r"[A-Za-z0-9._-]+")
_DNS_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


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
    common_name = _common_name(item) or ""
    names = _certificate_sans(item)
    dns_names = tuple(name.value for name in names if isinstance(name, x509.DNSName))
    ip_addresses = tuple(str(name.value) for name in names if isinstance(name, x509.IPAddress))
    return CertificateNames(common_name, dns_names, ip_addresses)


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


def _certificate_sans(
    certificate: x509.Certificate | x509.CertificateSigningRequest,
) -> list[x509.GeneralName]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(extension.value)


def _san_sets(names: Sequence[x509.GeneralName]) -> tuple[frozenset[str], frozenset[str]]:
    dns_names = frozenset(name.value.lower() for name in names if isinstance(name, x509.DNSName))
    ip_addresses = frozenset(str(name.value) for name in names if isinstance(name, x509.IPAddress))
    return dns_names, ip_addresses


def _common_name(certificate: x509.Certificate | x509.CertificateSigningRequest) -> str | None:
    attributes = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def subject_value(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    """The first value of attribute ``oid`` in the certificate's subject (None without one), so
    a certificate issued by a CA can carry the CA's own organisation and country."""
    attributes = certificate.subject.get_attributes_for_oid(oid)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")
