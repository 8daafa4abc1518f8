"""services.core.pki against the real openssl command line and a real TLS handshake."""

from __future__ import annotations

import os
import re
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.core.pki import (
    DemoPki,
    IssuedCertificate,
    PkiError,
    certificate_fingerprint,
    certificate_to_hex_der,
    create_root_ca,
    ensure_demo_pki,
    generate_key,
    issue_certificate,
    load_certificate,
    load_certificate_chain,
    load_issued,
    load_key,
    write_pem_files,
)

DEVICE_CN = "IP232-00-90-33-12-34-56"
OTHER_DEVICE_CN = "IPVA-a8-5a-38"


def openssl(*arguments: str | Path) -> subprocess.CompletedProcess[str]:
    """Run openssl; the caller checks returncode (failures are part of some tests)."""
    return subprocess.run(
        ["openssl", *map(str, arguments)], capture_output=True, text=True, timeout=60, check=False
    )


def openssl_text(path: Path) -> str:
    result = openssl("x509", "-in", path, "-noout", "-text")
    assert result.returncode == 0, result.stderr
    return result.stdout


def openssl_date(path: Path, which: str) -> datetime:
    result = openssl("x509", "-in", path, "-noout", f"-{which}")
    assert result.returncode == 0, result.stderr
    value = result.stdout.strip().split("=", 1)[1]
    return datetime.strptime(value, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)


def common_name(certificate: x509.Certificate) -> str:
    value = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    return value


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture(scope="module")
def ca() -> IssuedCertificate:
    return create_root_ca(country="DE", organization="Hoster", key_bits=2048)


@pytest.fixture(scope="module")
def other_ca() -> IssuedCertificate:
    return create_root_ca(country="DE", organization="Hoster", key_bits=2048)


# ------------------------------------------------------------------------ RootCA


def test_root_ca_defaults_match_the_seed(tmp_path: Path) -> None:
    root = create_root_ca(country="de", organization="Hoster")  # defaults: RSA 4096, 20 years
    certificate_path, key_path = tmp_path / "ca.pem", tmp_path / "ca.key"
    write_pem_files(root, certificate_path, key_path)

    text = openssl_text(certificate_path)
    subject = openssl("x509", "-in", certificate_path, "-noout", "-subject", "-nameopt", "RFC2253")
    assert (
        subject.stdout.strip() == "subject=CN=Hoster Device Certification Authority,O=Hoster,C=DE"
    )
    assert "Public-Key: (4096 bit)" in text
    assert re.search(r"X509v3 Basic Constraints: critical\s+CA:TRUE\n", text), text
    assert re.search(r"X509v3 Key Usage: critical\s+Certificate Sign, CRL Sign\n", text), text
    assert "X509v3 Subject Key Identifier" in text
    assert "sha256WithRSAEncryption" in text
    lifetime = openssl_date(certificate_path, "enddate") - openssl_date(
        certificate_path, "startdate"
    )
    assert timedelta(days=20 * 365) <= lifetime <= timedelta(days=20 * 365, hours=1)
    # Self-signed and usable as its own trust anchor.
    verified = openssl("verify", "-x509_strict", "-CAfile", certificate_path, certificate_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_root_ca_common_name_and_curve_can_be_chosen() -> None:
    root = create_root_ca(
        country="AT",
        organization="Hoster",
        common_name="Hoster Root",
        key_type="ecdsa",
        curve="P-384",
    )
    assert common_name(root.certificate) == "Hoster Root"
    assert isinstance(root.key, ec.EllipticCurvePrivateKey)
    assert root.key.curve.name == "secp384r1"


# ------------------------------------------------------------------------ leaves


def test_leaf_verifies_against_the_ca_with_openssl(tmp_path: Path, ca: IssuedCertificate) -> None:
    leaf = issue_certificate(
        ca,
        common_name="frontend.example.net",
        organization="Hoster",
        country="DE",
        dns_names=["frontend.example.net", "212.124.38.120"],
        ip_addresses=["192.0.2.10", "2001:db8::1"],
    )
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.certificate_pem())
    leaf_path, key_path = tmp_path / "leaf.pem", tmp_path / "leaf.key"
    write_pem_files(leaf, leaf_path, key_path)

    for purpose in ("sslserver", "sslclient"):
        result = openssl(
            "verify", "-x509_strict", "-purpose", purpose, "-CAfile", ca_path, leaf_path
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == f"{leaf_path}: OK"

    text = openssl_text(leaf_path)
    assert "Public-Key: (2048 bit)" in text
    assert "DNS:frontend.example.net" in text
    assert "DNS:212.124.38.120" in text  # the seed puts addresses into DNS names too
    assert "IP Address:192.0.2.10" in text
    assert re.search(r"X509v3 Basic Constraints: critical\s+CA:FALSE\n", text), text
    assert re.search(r"X509v3 Key Usage: critical\s+Digital Signature, Key Encipherment\n", text)
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "sha256WithRSAEncryption" in text

    alternative_names = leaf.certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert [str(address) for address in alternative_names.get_values_for_type(x509.IPAddress)] == [
        "192.0.2.10",
        "2001:db8::1",
    ]
    authority_key_id = leaf.certificate.extensions.get_extension_for_class(
        x509.AuthorityKeyIdentifier
    ).value.key_identifier
    subject_key_id = ca.certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value.digest
    assert authority_key_id == subject_key_id
    assert leaf.certificate.issuer == ca.certificate.subject


def test_leaf_from_another_ca_fails_openssl_verify(
    tmp_path: Path, ca: IssuedCertificate, other_ca: IssuedCertificate
) -> None:
    # Same subject, different key: only the signature tells them apart.
    assert other_ca.certificate.subject == ca.certificate.subject
    leaf = issue_certificate(other_ca, common_name="frontend.example.net")
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.certificate_pem())
    write_pem_files(leaf, tmp_path / "leaf.pem", tmp_path / "leaf.key")
    result = openssl("verify", "-CAfile", ca_path, tmp_path / "leaf.pem")
    assert result.returncode != 0


def test_client_only_ecdsa_leaf(tmp_path: Path, ca: IssuedCertificate) -> None:
    leaf = issue_certificate(ca, common_name=DEVICE_CN, key_type="ecdsa", server=False)
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.certificate_pem())
    write_pem_files(leaf, tmp_path / "device.pem", tmp_path / "device.key")

    as_client = openssl(
        "verify", "-purpose", "sslclient", "-CAfile", ca_path, tmp_path / "device.pem"
    )
    assert as_client.returncode == 0, as_client.stdout + as_client.stderr
    as_server = openssl(
        "verify", "-purpose", "sslserver", "-CAfile", ca_path, tmp_path / "device.pem"
    )
    assert as_server.returncode != 0

    text = openssl_text(tmp_path / "device.pem")
    assert "NIST CURVE: P-256" in text
    assert re.search(r"X509v3 Key Usage: critical\s+Digital Signature\n", text), text
    usages = leaf.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        leaf.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_leaf_uses_a_given_key(ca: IssuedCertificate) -> None:
    key = generate_key("ecdsa", curve="P-384")
    leaf = issue_certificate(ca, common_name=DEVICE_CN, key=key)
    assert leaf.key is key
    assert leaf.certificate.public_key() == key.public_key()


def test_expired_ca_refuses_to_issue() -> None:
    issued_at = datetime(2000, 1, 1, tzinfo=UTC)
    old_ca = create_root_ca(
        country="DE", organization="Hoster", key_bits=2048, valid_days=365, now=issued_at
    )
    # While the CA is valid it issues, and the leaf does not outlive it.
    leaf = issue_certificate(old_ca, common_name=DEVICE_CN, now=issued_at + timedelta(days=100))
    assert leaf.certificate.not_valid_after_utc == old_ca.certificate.not_valid_after_utc
    with pytest.raises(PkiError, match="expired on 2000-12-31"):
        issue_certificate(old_ca, common_name=DEVICE_CN, now=issued_at + timedelta(days=366))
    with pytest.raises(PkiError, match="expired"):
        issue_certificate(old_ca, common_name=DEVICE_CN)  # now = today
    with pytest.raises(PkiError, match="not valid before"):
        issue_certificate(old_ca, common_name=DEVICE_CN, now=issued_at - timedelta(days=1))


def test_a_leaf_is_not_a_ca(ca: IssuedCertificate) -> None:
    leaf = issue_certificate(ca, common_name="frontend.example.net")
    with pytest.raises(PkiError, match="not a CA"):
        issue_certificate(leaf, common_name=DEVICE_CN)


def test_ca_key_must_match_the_ca(ca: IssuedCertificate, other_ca: IssuedCertificate) -> None:
    mixed = IssuedCertificate(certificate=ca.certificate, key=other_ca.key)
    with pytest.raises(PkiError, match="does not belong"):
        issue_certificate(mixed, common_name=DEVICE_CN)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(
            lambda ca: issue_certificate(ca, common_name="x", ip_addresses=["192.0.2.300"]),
            "ip_addresses '192.0.2.300'",
            id="bad-ip",
        ),
        pytest.param(
            lambda ca: issue_certificate(ca, common_name="x", ip_addresses=["frontend.example"]),
            "not an IPv4 or IPv6 address",
            id="name-as-ip",
        ),
        pytest.param(
            lambda ca: issue_certificate(ca, common_name="x", dns_names=["bad name"]),
            "not a valid DNS name",
            id="bad-dns",
        ),
        pytest.param(
            lambda ca: issue_certificate(ca, common_name="x", country="Germany"),
            "two-letter",
            id="leaf-country",
        ),
        pytest.param(
            lambda ca: issue_certificate(ca, common_name="x", key_type="dsa"),
            "key_type 'dsa'",
            id="leaf-key-type",
        ),
        pytest.param(
            lambda ca: issue_certificate(ca, common_name="x", server=False, client=False),
            "at least one",
            id="no-purpose",
        ),
        pytest.param(
            lambda ca: issue_certificate(ca, common_name="x" * 65),
            "at most 64",
            id="long-cn",
        ),
        pytest.param(
            lambda ca: issue_certificate(ca, common_name="x", now=datetime(2030, 1, 1)),
            "timezone-aware",
            id="naive-now",
        ),
        pytest.param(
            lambda ca: create_root_ca(country="Germany", organization="Hoster", key_bits=2048),
            "country 'Germany'",
            id="ca-country",
        ),
        pytest.param(
            lambda ca: create_root_ca(country="D1", organization="Hoster", key_bits=2048),
            "two-letter",
            id="ca-country-digit",
        ),
        pytest.param(lambda ca: generate_key("dsa"), "key_type 'dsa'", id="key-type"),
        pytest.param(lambda ca: generate_key("rsa", bits=1024), "2048", id="rsa-too-small"),
        pytest.param(lambda ca: generate_key("ecdsa", curve="P-521"), "curve 'P-521'", id="curve"),
    ],
)
def test_invalid_parameters_raise_pki_error(
    ca: IssuedCertificate, call: Callable[[IssuedCertificate], object], message: str
) -> None:
    with pytest.raises(PkiError, match=re.escape(message)):
        call(ca)


def test_generate_key_types() -> None:
    rsa_key = generate_key("rsa", bits=2048)
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    assert rsa_key.key_size == 2048
    ec_key = generate_key("ecdsa")
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey)
    assert ec_key.curve.name == "secp256r1"


# ------------------------------------------------------------------------- files


def test_write_pem_files_modes_chain_and_no_leftovers(
    tmp_path: Path, ca: IssuedCertificate
) -> None:
    leaf = issue_certificate(ca, common_name="frontend.example.net")
    directory = tmp_path / "new" / "dir"
    certificate_path, key_path = directory / "server.pem", directory / "server.key"
    with umask(0):  # an open umask must not make the key readable
        write_pem_files(leaf, certificate_path, key_path, chain=[ca.certificate])
    assert file_mode(key_path) == 0o600
    assert file_mode(certificate_path) == 0o644
    assert sorted(path.name for path in directory.iterdir()) == ["server.key", "server.pem"]

    chain = load_certificate_chain(certificate_path)
    assert [certificate_fingerprint(item) for item in chain] == [
        certificate_fingerprint(leaf.certificate),
        certificate_fingerprint(ca.certificate),
    ]
    assert load_certificate(certificate_path) == leaf.certificate
    reloaded = load_issued(certificate_path, key_path)
    assert reloaded.certificate == leaf.certificate

    # Overwriting replaces both files and keeps the modes, even with a strict umask.
    second = issue_certificate(ca, common_name="frontend.example.net")
    with umask(0o077):
        write_pem_files(second, certificate_path, key_path)
    assert file_mode(certificate_path) == 0o644
    assert file_mode(key_path) == 0o600
    assert load_issued(certificate_path, key_path).certificate == second.certificate
    assert sorted(path.name for path in directory.iterdir()) == ["server.key", "server.pem"]


def test_write_pem_files_refuses_one_path_for_both(tmp_path: Path, ca: IssuedCertificate) -> None:
    with pytest.raises(PkiError, match="different files"):
        write_pem_files(ca, tmp_path / "both.pem", tmp_path / "both.pem")
    assert not (tmp_path / "both.pem").exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_load_key_refuses_a_key_others_can_read(
    tmp_path: Path, ca: IssuedCertificate, mode: int
) -> None:
    key_path = tmp_path / "ca.key"
    write_pem_files(ca, tmp_path / "ca.pem", key_path)
    assert isinstance(load_key(key_path), rsa.RSAPrivateKey)  # 0600 as written: accepted
    key_path.chmod(mode)
    with pytest.raises(PkiError) as raised:
        load_key(key_path)
    assert str(raised.value) == f"{key_path}: mode {mode:04o} is readable by others; chmod 600"
    with pytest.raises(PkiError, match="chmod 600"):
        load_issued(tmp_path / "ca.pem", key_path)
    # The caller can opt out (e.g. a key inside a container's read-only secret mount).
    assert load_key(key_path, check_mode=False).private_numbers() == ca.key.private_numbers()


def test_encrypted_key(tmp_path: Path, ca: IssuedCertificate) -> None:
    leaf = issue_certificate(ca, common_name=DEVICE_CN)
    key_path = tmp_path / "device.key"
    write_pem_files(leaf, tmp_path / "device.pem", key_path, passphrase=b"secret")
    assert key_path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    loaded = load_key(key_path, b"secret")
    assert loaded.public_key() == leaf.key.public_key()
    with pytest.raises(PkiError, match="passphrase is needed"):
        load_key(key_path)
    with pytest.raises(PkiError, match="wrong passphrase"):
        load_key(key_path, b"wrong")
    # openssl reads it too.
    result = openssl("pkey", "-in", key_path, "-passin", "pass:secret", "-noout")
    assert result.returncode == 0, result.stderr


def test_unencrypted_key_is_pkcs8(ca: IssuedCertificate) -> None:
    assert ca.key_pem().startswith(b"-----BEGIN PRIVATE KEY-----")
    with pytest.raises(PkiError, match="passphrase"):
        ca.key_pem(b"")


def test_load_errors_name_the_file(tmp_path: Path, ca: IssuedCertificate) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(PkiError, match=f"^{re.escape(str(missing))}: file does not exist$"):
        load_certificate(missing)
    with pytest.raises(PkiError, match=f"^{re.escape(str(missing))}: file does not exist$"):
        load_key(missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    garbage.chmod(0o600)
    with pytest.raises(PkiError, match=f"^{re.escape(str(garbage))}: not a PEM certificate"):
        load_certificate(garbage)
    with pytest.raises(PkiError, match=f"^{re.escape(str(garbage))}: not a PEM private key"):
        load_key(garbage)
    with pytest.raises(PkiError, match="not a regular file"):
        load_key(tmp_path)


def test_load_issued_refuses_a_key_of_another_certificate(
    tmp_path: Path, ca: IssuedCertificate
) -> None:
    first = issue_certificate(ca, common_name=DEVICE_CN)
    second = issue_certificate(ca, common_name=DEVICE_CN)
    write_pem_files(first, tmp_path / "first.pem", tmp_path / "first.key")
    write_pem_files(second, tmp_path / "second.pem", tmp_path / "second.key")
    with pytest.raises(PkiError, match=r"second\.key: key does not belong"):
        load_issued(tmp_path / "first.pem", tmp_path / "second.key")


def test_fingerprint_and_hex_der_match_openssl(tmp_path: Path, ca: IssuedCertificate) -> None:
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.certificate_pem())
    result = openssl("x509", "-in", path, "-noout", "-fingerprint", "-sha256")
    assert result.returncode == 0, result.stderr
    expected = result.stdout.strip().split("=", 1)[1].replace(":", "").lower()
    assert certificate_fingerprint(ca.certificate) == expected

    der = openssl("x509", "-in", path, "-outform", "DER", "-out", tmp_path / "ca.der")
    assert der.returncode == 0, der.stderr
    hex_der = certificate_to_hex_der(ca.certificate)
    assert hex_der == (tmp_path / "ca.der").read_bytes().hex()
    assert re.fullmatch(r"[0-9a-f]+", hex_der)


# ---------------------------------------------------------------------- demo PKI


def make_demo(directory: Path, devices: list[str]) -> DemoPki:
    return ensure_demo_pki(
        directory,
        organization="Hoster",
        country="DE",
        server_names=["localhost", "frontend.example.net", "127.0.0.1", "::1"],
        device_common_names=devices,
    )


def fingerprints(demo: DemoPki) -> dict[str, str]:
    result = {
        "ca": certificate_fingerprint(load_certificate(demo.ca_certificate)),
        "server": certificate_fingerprint(load_certificate(demo.server_certificate)),
    }
    for name, (certificate_path, _key_path) in demo.device_certificates.items():
        result[name] = certificate_fingerprint(load_certificate(certificate_path))
    return result


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo(tmp_path_factory.mktemp("demo") / "pki", [DEVICE_CN, OTHER_DEVICE_CN])


def test_demo_pki_layout(demo: DemoPki) -> None:
    directory = demo.directory
    assert demo.ca_certificate == directory / "ca.pem"
    assert demo.ca_key == directory / "ca.key"
    assert demo.server_certificate == directory / "server.pem"
    assert demo.server_key == directory / "server.key"
    assert demo.device_certificates == {
        DEVICE_CN: (
            directory / "devices" / f"{DEVICE_CN}.pem",
            directory / "devices" / f"{DEVICE_CN}.key",
        ),
        OTHER_DEVICE_CN: (
            directory / "devices" / f"{OTHER_DEVICE_CN}.pem",
            directory / "devices" / f"{OTHER_DEVICE_CN}.key",
        ),
    }
    for key_path in [
        demo.ca_key,
        demo.server_key,
        *(key for _, key in demo.device_certificates.values()),
    ]:
        assert file_mode(key_path) == 0o600

    ca = load_issued(demo.ca_certificate, demo.ca_key)
    assert common_name(ca.certificate) == "Hoster Device Certification Authority"

    server = load_certificate(demo.server_certificate)
    assert common_name(server) == "localhost"
    alternative_names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alternative_names.get_values_for_type(x509.DNSName) == [
        "localhost",
        "frontend.example.net",
    ]
    assert [str(value) for value in alternative_names.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "::1",
    ]
    server_check = openssl(
        "verify",
        "-x509_strict",
        "-purpose",
        "sslserver",
        "-CAfile",
        demo.ca_certificate,
        demo.server_certificate,
    )
    assert server_check.returncode == 0, server_check.stdout + server_check.stderr

    for name, (certificate_path, key_path) in demo.device_certificates.items():
        device = load_issued(certificate_path, key_path)
        assert common_name(device.certificate) == name
        usages = device.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        device_check = openssl(
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            demo.ca_certificate,
            certificate_path,
        )
        assert device_check.returncode == 0, device_check.stdout + device_check.stderr


def test_demo_pki_is_idempotent_and_recreates_a_deleted_device(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    first = make_demo(directory, [DEVICE_CN, OTHER_DEVICE_CN])
    before = fingerprints(first)

    second = make_demo(directory, [DEVICE_CN, OTHER_DEVICE_CN])
    assert second == first
    assert fingerprints(second) == before

    device_certificate, _device_key = first.device_certificates[DEVICE_CN]
    device_certificate.unlink()
    third = make_demo(directory, [DEVICE_CN, OTHER_DEVICE_CN])
    after = fingerprints(third)
    assert device_certificate.exists()
    assert after[DEVICE_CN] != before[DEVICE_CN]
    assert {name: value for name, value in after.items() if name != DEVICE_CN} == {
        name: value for name, value in before.items() if name != DEVICE_CN
    }
    result = openssl("verify", "-CAfile", third.ca_certificate, device_certificate)
    assert result.returncode == 0, result.stdout + result.stderr

    # A newly listed device is added without touching the others.
    fourth = make_demo(directory, [DEVICE_CN, OTHER_DEVICE_CN, "IP112-00-90-33-00-00-01"])
    assert {name: value for name, value in fingerprints(fourth).items() if name in after} == after
    assert "IP112-00-90-33-00-00-01" in fourth.device_certificates


def test_demo_pki_new_ca_reissues_everything(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    before = fingerprints(make_demo(directory, [DEVICE_CN]))
    (directory / "ca.key").unlink()
    after = fingerprints(make_demo(directory, [DEVICE_CN]))
    assert all(after[name] != before[name] for name in before)


def test_demo_pki_refuses_an_exposed_key(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    demo = make_demo(directory, [DEVICE_CN])
    demo.server_key.chmod(0o644)
    with pytest.raises(PkiError, match=r"server\.key: mode 0644 is readable by others"):
        make_demo(directory, [DEVICE_CN])


@pytest.mark.parametrize("bad_name", ["../x", "..", "a/b", "/etc/passwd", "", "x y", "dev\n", "ü"])
def test_demo_pki_refuses_a_device_name_that_is_not_a_file_name(
    tmp_path: Path, bad_name: str
) -> None:
    directory = tmp_path / "pki"
    with pytest.raises(PkiError, match="device common name"):
        make_demo(directory, [DEVICE_CN, bad_name])
    assert list(tmp_path.iterdir()) == []  # nothing was written, not even the directory


# --------------------------------------------------------------------------- TLS


@dataclass
class HandshakeOutcome:
    server_peer_certificate: dict[str, Any] | None = None
    server_error: BaseException | None = None
    client_received: bytes | None = None
    client_error: BaseException | None = None


def handshake(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, server_hostname: str
) -> HandshakeOutcome:
    """One TLS connection over a loopback socket pair, the server side in a thread."""
    outcome = HandshakeOutcome()
    server_socket, client_socket = socket.socketpair()
    server_socket.settimeout(10)
    client_socket.settimeout(10)

    def serve() -> None:
        try:
            with server_context.wrap_socket(server_socket, server_side=True) as connection:
                outcome.server_peer_certificate = connection.getpeercert()
                connection.sendall(b"hello")
        except OSError as error:  # ssl.SSLError is an OSError
            outcome.server_error = error
        finally:
            server_socket.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_context.wrap_socket(
            client_socket, server_hostname=server_hostname
        ) as connection:
            outcome.client_received = connection.recv(5)
    except OSError as error:
        outcome.client_error = error
    finally:
        client_socket.close()
        thread.join(timeout=10)
    assert not thread.is_alive()
    return outcome


def server_context(demo: DemoPki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(demo.server_certificate, demo.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=demo.ca_certificate)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def client_context(ca_file: Path, certificate: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if certificate is not None:
        context.load_cert_chain(*certificate)
    return context


@pytest.mark.parametrize("server_hostname", ["localhost", "frontend.example.net", "127.0.0.1"])
def test_tls_handshake_with_a_device_certificate(demo: DemoPki, server_hostname: str) -> None:
    client = client_context(demo.ca_certificate, demo.device_certificates[DEVICE_CN])
    outcome = handshake(server_context(demo), client, server_hostname)
    assert outcome.server_error is None
    assert outcome.client_error is None
    assert outcome.client_received == b"hello"
    assert outcome.server_peer_certificate is not None
    subject = dict(item[0] for item in outcome.server_peer_certificate["subject"])
    assert subject["commonName"] == DEVICE_CN
    assert subject["organizationName"] == "Hoster"


def test_tls_server_requires_a_client_certificate(demo: DemoPki) -> None:
    client = client_context(demo.ca_certificate, None)
    outcome = handshake(server_context(demo), client, "localhost")
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert outcome.server_peer_certificate is None
    assert outcome.client_received != b"hello"


def test_tls_server_refuses_a_device_of_another_ca(
    tmp_path: Path, demo: DemoPki, other_ca: IssuedCertificate
) -> None:
    stranger = issue_certificate(other_ca, common_name=DEVICE_CN, server=False)
    certificate_path, key_path = tmp_path / "stranger.pem", tmp_path / "stranger.key"
    write_pem_files(stranger, certificate_path, key_path)
    client = client_context(demo.ca_certificate, (certificate_path, key_path))
    outcome = handshake(server_context(demo), client, "localhost")
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert outcome.server_peer_certificate is None


def test_tls_client_refuses_a_server_of_another_ca(
    tmp_path: Path, demo: DemoPki, other_ca: IssuedCertificate
) -> None:
    other_ca_path = tmp_path / "other-ca.pem"
    other_ca_path.write_bytes(other_ca.certificate_pem())
    client = client_context(other_ca_path, demo.device_certificates[DEVICE_CN])
    outcome = handshake(server_context(demo), client, "localhost")
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert outcome.server_peer_certificate is None


def test_tls_client_checks_the_server_name(demo: DemoPki) -> None:
    client = client_context(demo.ca_certificate, demo.device_certificates[DEVICE_CN])
    outcome = handshake(server_context(demo), client, "other.example.net")
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert "other.example.net" in str(outcome.client_error)
