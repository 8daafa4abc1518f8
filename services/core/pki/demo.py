"""The demo PKI: a RootCA, a server and device certificates kept in place in one directory.

:func:`ensure_demo_pki` is idempotent: a pair on disk that still fits (subject, subjectAltNames,
issued by the current CA, valid for 30 more days) is kept, anything else is issued anew, and a
new CA re-issues every leaf. Files that are present but unreadable or corrupt raise
:class:`PkiError` instead of being overwritten. Never for production.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from services.core.pki.files import (
    _directory_lock,
    _make_directory,
    load_certificate,
    load_key,
    write_pem_files,
)
from services.core.pki.issuing import (
    _is_ca,
    _issued_by,
    _root_common_name,
    _root_subject,
    create_root_ca,
    issue_certificate,
)
from services.core.pki.keys import (
    IssuedCertificate,
    PkiError,
    _key_matches,
)
from services.core.pki.names import (
    _MAX_COMMON_NAME,
    _MAX_ORGANIZATION,
    _certificate_sans,
    _common_name,
    _san_sets,
    _split_server_names,
    _subject_alternative_names,
    _validate_country,
    _validate_device_common_name,
    _validate_text,
)

# ensure_demo_pki re-issues a certificate that expires within this window.
_RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class DemoPki:
    """Paths of the files ensure_demo_pki keeps in place."""

    directory: Path
    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path
    device_certificates: dict[str, tuple[Path, Path]]  # common name -> (cert, key)


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
    ca_common_name = _root_common_name(organization)
    _validate_text("organization (in the CA common name)", ca_common_name, _MAX_COMMON_NAME)
    ca_subject = _root_subject(country_code, organization, ca_common_name)

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
