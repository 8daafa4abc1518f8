"""``pbxfront ca …``: the provider's RootCA and the certificates issued from it.

The seed's chapter "Certificates": one RootCA (``C=<country>, O=<hoster>, CN=<hoster> Device
Certification Authority``, RSA 4096, 20 years) from which every device certificate is derived,
so browsers and phones trust everything after importing one root. The CA key and certificate
live in files (``[ca]`` settings); what was issued and revoked lives in PostgreSQL, so every
node serves the same CRL (``GET /DRIVE/CF0/update/ca.crl`` on the device listener).

``pbxfront ca queue`` shows the signing requests nodes without the CA key queued for the signing
node (``ca.signer``), their age, and whether a signing node is working the queue.

Passphrases never come from argv: ``ca.passphrase_file`` or ``PBXFRONT_CA_PASSPHRASE`` for the
CA key, ``--p12-passphrase-file`` or ``PBXFRONT_P12_PASSPHRASE`` for PKCS#12 bundles.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import ipaddress
import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.ca.repository import CaRepository, SigningQueueRepository, serial_hex
from services.core import pki
from services.core.commands import (
    JSON,
    Bind,
    Commands,
    argument,
    device_mac,
    print_json,
    print_table,
    record_audit,
)
from services.core.config import Settings
from services.core.errors import UsageError
from services.core.inventory import load_inventory
from services.core.inventory.variables import LayeredVariables, device_scopes

CA_PASSPHRASE_ENV = "PBXFRONT_CA_PASSPHRASE"  # noqa: S105 - a variable name
P12_PASSPHRASE_ENV = "PBXFRONT_P12_PASSPHRASE"  # noqa: S105 - a variable name
# Output file names: never a path.
_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def ca_passphrase(settings: Settings) -> bytes | None:
    return pki.read_passphrase(settings.ca.passphrase_file, os.environ.get(CA_PASSPHRASE_ENV))


async def load_ca(settings: Settings) -> pki.IssuedCertificate:
    certificate_path, key_path = settings.ca.paths(settings.data_dir)
    if not certificate_path.exists():
        raise UsageError(
            f"{certificate_path}: no RootCA yet; run `pbxfront ca init --country DE "
            "--organization <hoster>` (or set ca.certificate / ca.key)"
        )
    return await asyncio.to_thread(
        pki.load_certificate_authority, certificate_path, key_path, ca_passphrase(settings)
    )


async def usable_ca(settings: Settings, pool: asyncpg.Pool) -> pki.IssuedCertificate:
    """The CA, refusing an expired, not yet valid or retired (revoked) one."""
    ca = await load_ca(settings)
    pki.check_ca_usable(ca)
    record = await CaRepository(pool).get(serial_hex(ca.certificate.serial_number))
    if record is not None and record.revoked_at is not None:
        raise UsageError(
            f"the RootCA {ca.certificate.subject.rfc4514_string()} was revoked on "
            f"{record.revoked_at:%Y-%m-%d}; create a new one with `pbxfront ca init`"
        )
    return ca


def fingerprint(ca: pki.IssuedCertificate) -> str:
    return pki.certificate_fingerprint(ca.certificate)


# --- init --------------------------------------------------------------------------------------


async def ca_init(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    certificate_path, key_path = settings.ca.paths(settings.data_dir)
    for path in (certificate_path, key_path):
        if path.exists():
            raise UsageError(
                f"{path}: exists already; a new RootCA invalidates every certificate issued "
                "from the old one, so move the old files away first if that is what you want"
            )
    passphrase = ca_passphrase(settings)
    ca = await asyncio.to_thread(
        pki.create_root_ca,
        country=args.country,
        organization=args.organization,
        common_name=args.common_name,
        key_type=args.key_type,
        key_bits=args.key_bits,
        curve=args.curve,
        valid_days=args.valid_days,
    )
    await asyncio.to_thread(pki.write_pem_files, ca, certificate_path, key_path, passphrase)
    async with pool.acquire() as connection, connection.transaction():
        await CaRepository(connection).record(
            ca.certificate, ca_fingerprint=fingerprint(ca), kind="root"
        )
        await _audit_certificate(connection, "ca.init", ca.certificate, "root")
    certificate = ca.certificate
    print(f"RootCA {certificate.subject.rfc4514_string()}")
    print(f"  serial {serial_hex(certificate.serial_number)}")
    print(f"  valid until {certificate.not_valid_after_utc:%Y-%m-%d}")
    print(f"  certificate {certificate_path}")
    print(f"  key         {key_path} (mode 0600{', encrypted' if passphrase else ''})")
    print(
        "next: add the certificate to listeners.<devices>.client_ca (next to the innovaphone "
        "device CA bundle); `pbxfront ca export-trust` gives browsers and devices the root"
    )
    return 0


async def _audit_certificate(
    connection: asyncpg.Connection, action: str, certificate: x509.Certificate, kind: str
) -> None:
    await record_audit(
        connection,
        action,
        "certificate",
        serial_hex(certificate.serial_number),
        after={
            "kind": kind,
            "subject": certificate.subject.rfc4514_string(),
            "not_after": certificate.not_valid_after_utc.isoformat(),
        },
    )


# --- issue -------------------------------------------------------------------------------------


def _inventory_device(inventory: Any, mac: str) -> tuple[Any, Any, Any, dict[str, str]]:
    device = next((d for d in inventory.devices if d.mac == mac), None)
    if device is None:
        raise UsageError(f"no device {mac} in the inventory")
    customer = next(c for c in inventory.customers if c.id == device.customer)
    frontend = next(f for f in inventory.frontends if f.id == customer.frontend)
    values = LayeredVariables(inventory.variables).values(device_scopes(device, customer))
    return device, customer, frontend, values


async def _device_request(
    args: argparse.Namespace, pool: asyncpg.Pool
) -> tuple[pki.CertificateNames, str | None]:
    """(names, device MAC) for `ca issue device`, from the inventory or the arguments."""
    if args.device:
        mac = device_mac(args.device)
        async with pool.acquire() as connection:
            inventory = await load_inventory(connection)
        device, _customer, frontend, values = _inventory_device(inventory, mac)
        # The seed: a device with an internal address only gets the address of the NAT router
        # it is reached through as its external one; for pbxfront's devices that is the Frontend.
        external = args.external or values.get("cert-external") or frontend.public_address
        internal = args.internal or values.get("cert-internal") or None
        extra_dns = args.dns or values.get("cert-dns") or None
        names = pki.device_certificate_names(
            args.common_name or device.hardware_id,
            external=external,
            internal=internal,
            extra_dns=extra_dns,
        )
        return names, mac
    if not args.common_name or not args.external:
        raise UsageError(
            "ca issue device: give --device MAC (inventory), "
            "or --common-name NAME --external ADDRESS"
        )
    names = pki.device_certificate_names(
        args.common_name, external=args.external, internal=args.internal, extra_dns=args.dns
    )
    return names, None


async def _frontend_request(args: argparse.Namespace, pool: asyncpg.Pool) -> pki.CertificateNames:
    dns_names = [args.fqdn, *(args.dns or [])]
    ip_addresses = list(args.ip or [])
    if args.frontend:
        # The seed: every IPVA and Linux AP of a Frontend cluster uses the one certificate for
        # the Frontend's FQDN, so it may carry the addresses of several Frontends.
        async with pool.acquire() as connection:
            inventory = await load_inventory(connection)
        for frontend_id in args.frontend:
            frontend = next((f for f in inventory.frontends if f.id == frontend_id), None)
            if frontend is None:
                raise UsageError(f"no Frontend {frontend_id} in the inventory")
            for address in (frontend.public_address, frontend.internal_address):
                try:
                    ip_addresses.append(str(ipaddress.ip_address(address)))
                except ValueError:
                    dns_names.append(address)
    return pki.CertificateNames(
        args.fqdn, tuple(dict.fromkeys(dns_names)), tuple(dict.fromkeys(ip_addresses))
    )


def _p12_passphrase(args: argparse.Namespace) -> bytes:
    file = Path(args.p12_passphrase_file) if args.p12_passphrase_file else None
    passphrase = pki.read_passphrase(file, os.environ.get(P12_PASSPHRASE_ENV))
    if passphrase is None:
        raise UsageError(f"--p12 needs --p12-passphrase-file FILE or {P12_PASSPHRASE_ENV}")
    return passphrase


def _write_outputs(
    out: Path,
    stem: str,
    issued: pki.IssuedCertificate,
    ca: pki.IssuedCertificate,
    p12_passphrase: bytes | None,
) -> list[Path]:
    certificate_path, key_path = out / f"{stem}.pem", out / f"{stem}.key"
    pki.write_pem_files(issued, certificate_path, key_path)
    # For servers that want the chain in one file (the root is the trust anchor, so optional).
    chain_path = out / f"{stem}-chain.pem"
    _write_public(chain_path, issued.certificate_pem() + _pem(ca.certificate))
    der_path = out / f"{stem}.der"
    _write_public(der_path, pki.certificate_der(issued.certificate))
    written = [certificate_path, key_path, chain_path, der_path]
    if p12_passphrase is not None:
        p12_path = out / f"{stem}.p12"
        data = pki.pkcs12_bundle(issued, p12_passphrase, name=stem, chain=[ca.certificate])
        descriptor = os.open(p12_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        written.append(p12_path)
    return written


async def ca_issue(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    p12_passphrase = _p12_passphrase(args) if args.p12 else None
    device_mac: str | None = None
    if args.kind == "device":
        names, device_mac = await _device_request(args, pool)
        valid_days = args.valid_days or settings.ca.device_valid_days
    elif args.kind == "frontend":
        names = await _frontend_request(args, pool)
        valid_days = args.valid_days or settings.ca.server_valid_days
    else:
        domain = args.domain.removeprefix("*.")
        names = pki.CertificateNames(f"*.{domain}", (f"*.{domain}", domain))
        valid_days = args.valid_days or settings.ca.server_valid_days
    ca = await usable_ca(settings, pool)
    issued = await asyncio.to_thread(
        pki.issue_certificate,
        ca,
        common_name=names.common_name,
        organization=pki.subject_value(ca.certificate, x509.NameOID.ORGANIZATION_NAME),
        country=pki.subject_value(ca.certificate, x509.NameOID.COUNTRY_NAME),
        dns_names=names.dns_names,
        ip_addresses=names.ip_addresses,
        key_type=args.key_type,
        key_bits=args.key_bits,
        curve=args.curve,
        valid_days=valid_days,
        server=True,
        # Devices also present their certificate as TLS clients (update polls, backups).
        client=args.kind == "device",
    )
    stem = args.name or names.common_name.replace("*", "wildcard")
    if not _STEM.fullmatch(stem):
        raise UsageError(f"--name {stem!r}: letters, digits, '.', '_' and '-' only")
    out = Path(args.out)
    written = await asyncio.to_thread(_write_outputs, out, stem, issued, ca, p12_passphrase)
    async with pool.acquire() as connection, connection.transaction():
        await CaRepository(connection).record(
            issued.certificate,
            ca_fingerprint=fingerprint(ca),
            kind=args.kind,
            device_mac=device_mac,
        )
        await _audit_certificate(connection, "ca.issue", issued.certificate, args.kind)
    certificate = issued.certificate
    print(f"issued {args.kind} certificate {names.describe()}")
    print(f"  serial {serial_hex(certificate.serial_number)}")
    print(f"  valid until {certificate.not_valid_after_utc:%Y-%m-%d}")
    for path in written:
        print(f"  {path}")
    return 0


# --- list, revoke, export-trust ----------------------------------------------------------------


async def ca_list(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    current = None
    if not args.all_cas:
        ca = await load_ca(settings)
        current = fingerprint(ca)
    records = await CaRepository(pool).issued(
        ca_fingerprint=current, include_revoked=not args.valid
    )
    if args.json:
        print_json(records)
        return 0
    now = datetime.now(UTC)
    rows: list[tuple[str, ...]] = [("SERIAL", "KIND", "NAME", "VALID UNTIL", "STATE", "SANS")]
    for record in records:
        if record.revoked_at is not None:
            state = f"revoked {record.revoked_at:%Y-%m-%d}"
        elif record.not_after < now:
            state = "expired"
        else:
            state = "valid"
        sans = ",".join([*record.dns_names, *record.ip_addresses]) or "-"
        rows.append(
            (
                record.serial,
                record.kind,
                record.common_name,
                f"{record.not_after:%Y-%m-%d}",
                state,
                sans,
            )
        )
    print_table(rows)
    return 0


async def ca_revoke(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    serial = args.serial.lower().replace(":", "").lstrip("0") or "0"
    if not all(c in "0123456789abcdef" for c in serial) or len(serial) > 40:
        raise UsageError(f"serial {args.serial!r}: hex digits as `pbxfront ca list` shows them")
    async with pool.acquire() as connection, connection.transaction():
        record, newly = await CaRepository(connection).revoke(serial, args.reason)
        if record is not None and newly:
            await record_audit(
                connection,
                "ca.revoke",
                "certificate",
                serial,
                before={"kind": record.kind, "common_name": record.common_name},
                after={"revoked": True, "reason": args.reason},
            )
    if record is None:
        raise UsageError(f"no certificate with serial {serial} was issued here")
    if not newly:
        print(f"{serial} ({record.common_name}) was revoked already on {record.revoked_at}")
        return 0
    what = "RootCA retired: nothing more is issued from it" if record.kind == "root" else "revoked"
    print(f"{serial} ({record.kind} {record.common_name}): {what} ({args.reason})")
    print("the CRL on every node includes it within a minute (GET /DRIVE/CF0/update/ca.crl)")
    return 0


async def ca_export_trust(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    certificate_path, _key = settings.ca.paths(settings.data_dir)
    if not certificate_path.exists():
        raise UsageError(f"{certificate_path}: no RootCA yet; run `pbxfront ca init` first")
    certificate = await asyncio.to_thread(pki.load_certificate, certificate_path)
    forms = {
        # Browsers ("certificate.crt" in the seed's "Browser Installation of the Root
        # Certificate"), curl --cacert, listeners.*.client_ca.
        "pem": _pem(certificate),
        "der": pki.certificate_der(certificate),
        # Device scripts and my.innovaphone's "Trust" field carry certificates as hex DER
        # (protocol.md §9, the same form as X509/REQUESTRESPONSE).
        "hex": (pki.certificate_to_hex_der(certificate) + "\n").encode(),
    }
    if args.out:
        out = Path(args.out)
        names = {"pem": "root.pem", "der": "root.crt", "hex": "root.hex"}
        for form, data in forms.items():
            path = out / names[form]
            await asyncio.to_thread(_write_public, path, data)
            print(f"{form}: {path}")
        print(f"sha256 fingerprint {pki.certificate_fingerprint(certificate)}")
        return 0
    sys.stdout.buffer.write(forms[args.format])
    sys.stdout.flush()
    return 0


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


async def ca_queue(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    """The signing queue (ca.signer): requests nodes without the CA key queued, their age, and
    whether a signing node is working it. Exit 1 when requests wait and no signing node was
    seen recently (for monitoring)."""
    repository = SigningQueueRepository(pool)
    requests = await repository.requests(include_done=args.all, limit=args.limit)
    signers = await repository.signers()
    # A signing node sweeps every ca.queue_interval seconds; three missed sweeps: down.
    recent = max(3 * settings.ca.queue_interval, 60.0)
    alive = [s for s in signers if s.age <= recent]
    waiting = [r for r in requests if r.state == "waiting"]
    # A request only a signing node holding its RootCA can sign.
    served = {s.ca_fingerprint for s in alive}
    orphaned = [r for r in waiting if r.ca_fingerprint not in served]
    stuck = bool(orphaned)
    if args.json:
        print(
            json.dumps(
                {
                    "requests": [r.as_json() for r in requests],
                    "signers": [
                        {**s.__dict__, "seen_at": s.seen_at.isoformat(), "alive": s in alive}
                        for s in signers
                    ],
                    "waiting": len(waiting),
                    "oldest_waiting_seconds": max((r.age for r in waiting), default=None),
                    "signing_node_alive": bool(alive),
                    "waiting_without_signer": len(orphaned),
                },
                indent=2,
            )
        )
        return 1 if stuck else 0
    for request in requests:
        device = request.hardware_id or request.mac
        line = (
            f"{request.id:>6}  {request.state:<8} {device}  CN={request.common_name}  "
            f"queued by {request.requested_by} {request.requested_at:%Y-%m-%d %H:%M:%S}"
        )
        if request.state == "waiting":
            line += f"  waiting {request.age:.0f} s"
            if request in orphaned:
                line += f"  (RootCA {request.ca_fingerprint[:16]}…: no signing node holds it)"
        else:
            line += f"  after {request.age:.0f} s by {request.signed_by or '-'}"
            line += f"  serial {request.serial}" if request.serial else ""
            line += f"  ({request.error})" if request.error else ""
        print(line)
    if waiting:
        print(f"{len(waiting)} waiting, the oldest for {max(r.age for r in waiting):.0f} s")
    else:
        print("no request waiting")
    for signer in signers:
        state = "working" if signer in alive else "NOT SEEN recently (down?)"
        print(
            f"signing node {signer.node}: last sweep {signer.age:.0f} s ago, RootCA "
            f"{signer.ca_fingerprint[:16]}…  {state}"
        )
    if stuck:
        print(
            f"{len(orphaned)} request(s) wait for a signing node that is not running: no node "
            'holding their RootCA key (ca.signer = "sign") swept the queue recently'
        )
    return 1 if stuck else 0


# --- parser ------------------------------------------------------------------------------------


def _key_options(parser: argparse.ArgumentParser, default_bits: int) -> None:
    parser.add_argument("--key-type", choices=("rsa", "ecdsa"), default="rsa")
    parser.add_argument(
        "--key-bits", type=int, default=default_bits, help=f"RSA bits (default {default_bits})"
    )
    parser.add_argument("--curve", choices=("P-256", "P-384"), default="P-256", help="for ecdsa")


def _issue_options(parser: argparse.ArgumentParser) -> None:
    _key_options(parser, 4096)
    parser.add_argument("--out", default=".", metavar="DIR", help="where the files go")
    parser.add_argument("--name", help="file name stem (default: the common name)")
    parser.add_argument("--valid-days", type=int, help="default: ca.device/server_valid_days")
    parser.add_argument("--p12", action="store_true", help="also write <name>.p12 (PKCS#12)")
    parser.add_argument("--p12-passphrase-file", metavar="FILE", help=f"else ${P12_PASSPHRASE_ENV}")


def register(commands: Any, common: argparse.ArgumentParser, bind: Bind) -> None:
    ca = Commands(commands, common, bind).group("ca", "the provider RootCA and its certificates")
    ca.add(
        "init",
        ca_init,
        "create the RootCA (RSA 4096, 20 years, as the seed says)",
        argument("--country", required=True, help="two-letter code, e.g. DE"),
        argument("--organization", required=True, help="the hoster's name"),
        argument("--common-name", help='default: "<organization> Device Certification Authority"'),
        functools.partial(_key_options, default_bits=4096),
        argument("--valid-days", type=int, default=20 * 365, help="default 7300 (20 years)"),
    )

    issue = ca.group("issue", "issue a certificate from the RootCA", dest="kind")
    issue.add(
        "device",
        ca_issue,
        "CN = NetBIOS name; DNS/IP 1 = external, DNS/IP 2 = internal address",
        argument("--device", metavar="MAC", help="an inventory device"),
        argument("--common-name", help="default: the device's hardware id"),
        argument(
            "--external", help="default: update variable cert-external, else its Frontend's address"
        ),
        argument("--internal", help="default: update variable cert-internal"),
        argument("--dns", help="DNS name 3 (default: update variable cert-dns)"),
        _issue_options,
    )
    issue.add(
        "frontend",
        ca_issue,
        "a Frontend's FQDN (one certificate per cluster)",
        argument("--fqdn", required=True),
        argument("--dns", action="append", help="more DNS names (repeatable)"),
        argument("--ip", action="append", help="IP addresses (repeatable)"),
        argument(
            "--frontend",
            action="append",
            metavar="ID",
            help="add this inventory Frontend's public/internal address (repeatable: a cluster)",
        ),
        _issue_options,
    )
    issue.add(
        "wildcard",
        ca_issue,
        "*.<domain> for every device of a Frontend cluster",
        argument("--domain", required=True, help="e.g. hoster.tld"),
        _issue_options,
    )

    ca.add(
        "list",
        ca_list,
        "certificates issued here",
        argument("--valid", action="store_true", help="hide revoked ones"),
        argument(
            "--all-cas",
            action="store_true",
            help="also those of earlier RootCAs (needs no CA file)",
        ),
        JSON,
    )
    ca.add(
        "revoke",
        ca_revoke,
        "revoke a certificate (the RootCA's serial retires it)",
        argument("serial", metavar="SERIAL"),
        argument("--reason", choices=pki.REVOCATION_REASONS, default="unspecified"),
    )
    ca.add(
        "queue",
        ca_queue,
        "signing requests waiting for the signing node (ca.signer), their age; exit 1 when "
        "requests wait and no signing node was seen",
        argument("--all", action="store_true", help="also signed, failed, dropped ones"),
        argument(
            "--limit",
            type=int,
            default=100,
            help="at most this many requests (default %(default)s)",
        ),
        argument("--json", action="store_true", help="print JSON instead of lines"),
    )
    ca.add(
        "export-trust",
        ca_export_trust,
        "the RootCA as PEM (browsers), DER, hex (devices)",
        argument("--format", choices=("pem", "der", "hex"), default="pem"),
        argument("--out", metavar="DIR", help="write root.pem, root.crt, root.hex there"),
    )
