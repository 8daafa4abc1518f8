"""`pbxfront ca` as a new user runs it (subprocesses on a real PostgreSQL), checked with the real
openssl binary; curl trusting only the exported root reaches a real listener; bad input."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from services.core import pki
from services.core.config import ListenerSettings, Settings
from tests.conftest import curl, start_services

ROOT = Path(__file__).resolve().parent.parent
PBXFRONT = [sys.executable, "-m", "services.cli"]
CA_NAME = "Hoster Device Certification Authority"


def openssl(*arguments: str | Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["openssl", *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


class Cli:
    def __init__(self, data_dir: Path, database_url: str) -> None:
        self.data_dir = data_dir
        self.options = [
            "--set",
            f'data_dir="{data_dir}"',
            "--set",
            f'database.url="{database_url}"',
        ]

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, status: int = 0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*PBXFRONT, *args, *self.options],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **(env or {})},
            check=False,
        )
        assert result.returncode == status, result.stdout + result.stderr
        return result

    @property
    def root(self) -> Path:
        return self.data_dir / "ca" / "root.pem"

    @property
    def key(self) -> Path:
        return self.data_dir / "ca" / "root.key"


@pytest.fixture
def cli(tmp_path: Path, database_url: str) -> Cli:
    return Cli(tmp_path / "data", database_url)


def validity_days(path: Path) -> float:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    return lifetime.total_seconds() / 86400


def test_root_ca_device_and_frontend_as_the_seed_says(cli: Cli, tmp_path: Path) -> None:
    out = cli("ca", "init", "--country", "DE", "--organization", "Hoster").stdout
    assert f"RootCA CN={CA_NAME},O=Hoster,C=DE" in out
    assert cli.key.stat().st_mode & 0o777 == 0o600
    text = openssl("x509", "-in", cli.root, "-noout", "-text")
    assert f"Subject: C = DE, O = Hoster, CN = {CA_NAME}" in text
    assert "Public-Key: (4096 bit)" in text
    assert "X509v3 Basic Constraints: critical\n                CA:TRUE" in text
    assert "X509v3 Key Usage: critical\n                Certificate Sign, CRL Sign" in text
    assert 20 * 365 <= validity_days(cli.root) <= 20 * 365 + 1
    openssl("verify", "-x509_strict", "-CAfile", cli.root, cli.root)

    cli("inventory", "apply", str(ROOT / "config" / "inventory.example.toml"))
    issued = tmp_path / "issued"
    out = cli(
        "ca", "issue", "frontend", "--fqdn", "sb1.hoster.tld", "--frontend", "sb1",
        "--key-bits", "2048", "--out", str(issued),
    ).stdout  # fmt: skip
    assert "CN=sb1.hoster.tld, DNS:sb1.hoster.tld, IP:192.0.2.10, IP:10.0.0.10" in out
    # The customer PBX (IPVA) has only an internal address: the Frontend's external one is
    # DNS/IP 1 (the seed: "the IP address of the NAT router used to access the device").
    out = cli(
        "ca", "issue", "device", "--device", "00-90-33-a8-5a-38", "--internal", "10.0.1.1",
        "--dns", "pbx.kuenkel.example", "--key-bits", "2048", "--out", str(issued),
    ).stdout  # fmt: skip
    assert "issued device certificate CN=IPVA-a8-5a-38" in out
    for name in ("sb1.hoster.tld", "IPVA-a8-5a-38"):
        assert (issued / f"{name}.key").stat().st_mode & 0o777 == 0o600
        assert "OK" in openssl(
            "verify", "-x509_strict", "-CAfile", cli.root, issued / f"{name}.pem"
        )
        assert "OK" in openssl("verify", "-CAfile", cli.root, issued / f"{name}-chain.pem")
        der = openssl("x509", "-inform", "DER", "-in", issued / f"{name}.der", "-noout", "-subject")
        assert name in der
    device = openssl("x509", "-in", issued / "IPVA-a8-5a-38.pem", "-noout", "-text")
    assert "Subject: C = DE, O = Hoster, CN = IPVA-a8-5a-38" in device
    assert f"Issuer: C = DE, O = Hoster, CN = {CA_NAME}" in device
    assert "Public-Key: (2048 bit)" in device
    assert (
        "DNS:192.0.2.10, DNS:10.0.1.1, DNS:pbx.kuenkel.example, "
        "IP Address:192.0.2.10, IP Address:10.0.1.1" in device
    )
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in device
    assert 824 <= validity_days(issued / "IPVA-a8-5a-38.pem") <= 826
    frontend = openssl("x509", "-in", issued / "sb1.hoster.tld.pem", "-noout", "-text")
    assert "DNS:sb1.hoster.tld, IP Address:192.0.2.10, IP Address:10.0.0.10" in frontend
    assert "TLS Web Client Authentication" not in frontend

    listing = cli("ca", "list").stdout
    assert all(name in listing for name in (CA_NAME, "sb1.hoster.tld", "IPVA-a8-5a-38"))

    # The root in the forms the seed needs: PEM for browsers, DER, hex for device scripts.
    exported = cli("ca", "export-trust", "--out", str(tmp_path / "trust")).stdout
    assert "sha256 fingerprint" in exported
    root = x509.load_pem_x509_certificate(cli.root.read_bytes())
    assert (tmp_path / "trust" / "root.pem").read_bytes() == cli.root.read_bytes()
    assert (tmp_path / "trust" / "root.crt").read_bytes() == root.public_bytes(
        serialization.Encoding.DER
    )
    hex_form = cli("ca", "export-trust", "--format", "hex").stdout.strip()
    assert bytes.fromhex(hex_form) == root.public_bytes(serialization.Encoding.DER)


def test_ecdsa_root_wildcard_and_pkcs12(cli: Cli, tmp_path: Path) -> None:
    cli(
        "ca", "init", "--country", "de", "--organization", "Hoster", "--key-type", "ecdsa",
        "--curve", "P-384",
    )  # fmt: skip
    assert "ASN1 OID: secp384r1" in openssl("x509", "-in", cli.root, "-noout", "-text")
    env = {"PBXFRONT_P12_PASSPHRASE": "browser-import"}
    out = tmp_path / "issued"
    cli(
        "ca", "issue", "wildcard", "--domain", "hoster.tld", "--key-type", "ecdsa", "--p12",
        "--out", str(out), env=env,
    )  # fmt: skip
    text = openssl("x509", "-in", out / "wildcard.hoster.tld.pem", "-noout", "-text")
    assert "Subject: C = DE, O = Hoster, CN = *.hoster.tld" in text
    assert "DNS:*.hoster.tld, DNS:hoster.tld" in text
    assert "OK" in openssl("verify", "-CAfile", cli.root, out / "wildcard.hoster.tld.pem")
    assert (out / "wildcard.hoster.tld.p12").stat().st_mode & 0o777 == 0o600
    bundle = openssl(
        "pkcs12", "-in", out / "wildcard.hoster.tld.p12", "-passin", "env:PBXFRONT_P12_PASSPHRASE",
        "-nokeys", env=env,
    )  # fmt: skip
    assert "subject=C = DE, O = Hoster, CN = *.hoster.tld" in bundle
    assert f"subject=C = DE, O = Hoster, CN = {CA_NAME}" in bundle
    # Without a passphrase there is no PKCS#12 (never an unprotected key bundle).
    result = cli(
        "ca", "issue", "wildcard", "--domain", "hoster.tld", "--p12", "--out", str(out), status=2
    )
    assert "--p12 needs --p12-passphrase-file FILE or PBXFRONT_P12_PASSPHRASE" in result.stderr


def test_revoke_list_and_retire_the_root(cli: Cli, tmp_path: Path) -> None:
    cli("ca", "init", "--country", "DE", "--organization", "Hoster", "--key-bits", "2048")
    out = cli(
        "ca", "issue", "device", "--common-name", "IP232-01-02-03", "--external", "192.0.2.10",
        "--key-bits", "2048", "--out", str(tmp_path),
    ).stdout  # fmt: skip
    serial = next(line.split()[1] for line in out.splitlines() if line.strip().startswith("serial"))
    cli("ca", "revoke", serial.upper(), "--reason", "key_compromise")
    again = cli("ca", "revoke", serial).stdout
    assert "was revoked already" in again
    listing = cli("ca", "list").stdout
    row = next(line for line in listing.splitlines() if line.startswith(serial))
    assert "revoked" in row
    assert serial not in cli("ca", "list", "--valid").stdout
    unknown = cli("ca", "revoke", "abcdef", status=2)
    assert "no certificate with serial abcdef" in unknown.stderr
    bad = cli("ca", "revoke", "xyz", status=2)
    assert "hex digits" in bad.stderr
    # Revoking the RootCA's own serial retires it: nothing more is issued from it.
    root = x509.load_pem_x509_certificate(cli.root.read_bytes())
    cli("ca", "revoke", format(root.serial_number, "x"))
    refused = cli(
        "ca", "issue", "wildcard", "--domain", "hoster.tld", "--key-bits", "2048",
        "--out", str(tmp_path), status=2,
    )  # fmt: skip
    assert "was revoked" in refused.stderr


def test_bad_input_is_refused_with_the_reason(cli: Cli, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    # No CA yet.
    missing = cli("ca", "issue", "wildcard", "--domain", "x.tld", "--out", out, status=2)
    assert "no RootCA yet; run `pbxfront ca init" in missing.stderr
    bad_country = cli("ca", "init", "--country", "Germany", "--organization", "H", status=2)
    assert "must be a two-letter ISO 3166 code" in bad_country.stderr
    assert not cli.key.exists()

    env = {"PBXFRONT_CA_PASSPHRASE": "ca-secret"}
    cli("ca", "init", "--country", "DE", "--organization", "Hoster", "--key-bits", "2048", env=env)
    assert b"ENCRYPTED PRIVATE KEY" in cli.key.read_bytes()
    twice = cli("ca", "init", "--country", "DE", "--organization", "Hoster", status=2)
    assert "exists already" in twice.stderr
    issue = ["ca", "issue", "wildcard", "--domain", "hoster.tld", "--key-bits", "2048"]
    no_passphrase = cli(*issue, "--out", out, status=2)
    assert "key is encrypted; a passphrase is needed" in no_passphrase.stderr
    cli(*issue, "--out", out, env=env)

    cli.key.chmod(0o644)
    too_open = cli(*issue, "--out", out, env=env, status=2)
    assert "root.key: mode 0644 is readable by others; chmod 600" in too_open.stderr
    cli.key.chmod(0o600)

    bad_address = cli(
        "ca", "issue", "device", "--common-name", "IP232-01-02-03", "--external", "not an address",
        "--out", out, env=env, status=2,
    )  # fmt: skip
    assert "not a valid DNS name" in bad_address.stderr
    not_in_inventory = cli(
        "ca", "issue", "device", "--device", "00-90-33-ff-ff-ff", "--out", out, env=env, status=2
    )
    assert "no device 009033ffffff in the inventory" in not_in_inventory.stderr
    bad_name = cli(*issue, "--name", "../escape", "--out", out, env=env, status=2)
    assert "letters, digits" in bad_name.stderr


def test_issuing_with_an_expired_ca_is_refused(cli: Cli, tmp_path: Path) -> None:
    # pki refuses to make an expired CA, so build one by hand.
    key = pki.generate_key("rsa", 2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hoster"),
            x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
        ]
    )
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=400))
        .not_valid_after(now - timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pki.write_pem_files(pki.IssuedCertificate(certificate, key), cli.root, cli.key)
    result = cli(
        "ca", "issue", "wildcard", "--domain", "hoster.tld", "--out", str(tmp_path), status=2
    )
    assert "expired on" in result.stderr
    assert "create a new RootCA" in result.stderr


async def test_curl_trusting_only_the_exported_root_reaches_a_listener(
    cli: Cli, tmp_path: Path, pool: asyncpg.Pool
) -> None:
    def prepare() -> None:
        cli("ca", "init", "--country", "DE", "--organization", "Hoster", "--key-bits", "2048")
        cli(
            "ca", "issue", "frontend", "--fqdn", "localhost", "--ip", "127.0.0.1",
            "--key-bits", "2048", "--out", str(tmp_path / "tls"),
        )  # fmt: skip
        cli("ca", "export-trust", "--out", str(tmp_path / "trust"))

    await asyncio.to_thread(prepare)
    listener = ListenerSettings(
        port=0,
        services=("update",),
        tls=True,
        certificate=tmp_path / "tls" / "localhost-chain.pem",
        key=tmp_path / "tls" / "localhost.key",
    )
    node = await start_services(Settings(), pool, {"devices": listener})
    try:
        port = node.addresses["devices"].rsplit(":", 1)[1]
        for url in (f"https://127.0.0.1:{port}/healthz", f"https://localhost:{port}/healthz"):
            status, body = await curl("--cacert", str(tmp_path / "trust" / "root.pem"), url)
            assert status == 200, body
        # And a root it does not trust: no answer at all (no -k anywhere).
        status, _ = await curl(
            "--cacert", str(ROOT / "config" / "demo.toml"), f"https://127.0.0.1:{port}/healthz"
        )
        assert status == 0
    finally:
        await node.stop()


def _request(bits: int, common_name: str = "IP232-01-02-03") -> bytes:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.DER)


def test_signing_requests_are_checked_before_anything_is_signed() -> None:
    good = _request(2048)
    assert pki.certificate_names(pki.load_signing_request(good)).common_name == "IP232-01-02-03"
    with pytest.raises(pki.PkiError, match="RSA key of 1024 bits: at least 2048"):
        pki.load_signing_request(_request(1024))
    tampered = bytearray(good)
    tampered[-5] ^= 0xFF  # inside the signature
    with pytest.raises(pki.PkiError, match="signature does not verify"):
        pki.load_signing_request(bytes(tampered))
    with pytest.raises(pki.PkiError, match="not a DER PKCS#10 request"):
        pki.load_signing_request(good[:100])
    with pytest.raises(pki.PkiError, match="at most 16384"):
        pki.load_signing_request(b"0" * 20000)
    with pytest.raises(pki.PkiError, match="empty"):
        pki.load_signing_request(b"")
    with pytest.raises(pki.PkiError, match="not hex digits"):
        pki.hex_to_bytes("30820g", "X509/REQUEST")


def test_device_names_follow_the_seed() -> None:
    names = pki.device_certificate_names(
        "IPVA-a8-5a-38", external="fe1.hoster.tld", internal="10.0.1.1", extra_dns="pbx.example"
    )
    assert names.dns_names == ("fe1.hoster.tld", "10.0.1.1", "pbx.example")
    assert names.ip_addresses == ("10.0.1.1",)
    same = pki.CertificateNames(
        "IPVA-a8-5a-38", ("PBX.example", "10.0.1.1", "fe1.hoster.tld"), ("10.0.1.1",)
    )
    assert names.same_as(same)
    assert not names.same_as(pki.CertificateNames("IPVA-a8-5a-38", names.dns_names, ()))
    with pytest.raises(pki.PkiError, match="needs an external address"):
        pki.device_certificate_names("IPVA-a8-5a-38", external=" ")
