"""The provider's sections: contacts, directory, the Frontend plan and the CA.

``contacts`` (the contacts.csv drop), ``directory`` (the LDAP(S) service and its limits),
``frontend_plan`` (NAT maps, SessionBorder budgets; :func:`parse_shared_map` also serves
``services/frontend``) and ``ca`` (the RootCA's files, certificate roll-out to devices, who signs
their requests).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from services.core.config.base import _check, _choice, _range

__all__ = [
    "DEFAULT_SHARED_MAPS",
    "CaSettings",
    "ContactsSettings",
    "DirectorySettings",
    "FrontendPlanSettings",
    "parse_shared_map",
]


@dataclasses.dataclass(frozen=True)
class ContactsSettings:
    """The contacts drop (services/contacts/): contacts.csv uploads, versions, LDIF feed."""

    # Largest contacts.csv one PUT may carry (bytes; replaces limits.max_body_bytes); 413.
    max_body_bytes: int = dataclasses.field(
        default=20 * 1024 * 1024, metadata=_check(_range(1, 2**31))
    )
    # Most contacts (records after the header) one file may hold; more: 413.
    max_rows: int = dataclasses.field(default=100_000, metadata=_check(_range(1, 10_000_000)))
    # Share of invalid records (0..1) above which nothing changes and the answer is 422.
    max_rejected_share: float = dataclasses.field(default=0.2, metadata=_check(_range(0, 1)))
    # Versions kept besides the current one (rollback targets).
    keep_versions: int = dataclasses.field(default=10, metadata=_check(_range(0, 10000)))
    # Numbers without a prefix of at most this many digits are short internal numbers (kept as
    # digits); 0 = refused. The update variable contacts-short-digits wins per customer.
    short_number_max_digits: int = dataclasses.field(default=0, metadata=_check(_range(0, 15)))
    # Most fields in one CSV line and cells in the whole file: more is refused early with 413,
    # so a file of millions of empty columns costs no memory.
    max_columns: int = dataclasses.field(default=512, metadata=_check(_range(8, 100_000)))
    max_cells: int = dataclasses.field(default=5_000_000, metadata=_check(_range(100, 10**9)))
    # Uploads checked at once per node; more wait their turn (memory of concurrent uploads).
    max_concurrent_checks: int = dataclasses.field(default=2, metadata=_check(_range(1, 64)))


@dataclasses.dataclass(frozen=True)
class DirectorySettings:
    """The directory service (services/directory/): each customer's contacts over LDAP(S)."""

    # Largest LDAP message a client may send (bytes); larger: notice of disconnection, close.
    max_message_bytes: int = dataclasses.field(default=65536, metadata=_check(_range(512, 2**24)))
    # Deepest nesting of and/or/not a search filter may have (phones send 2).
    max_filter_depth: int = dataclasses.field(default=16, metadata=_check(_range(1, 100)))
    # Most entries one search returns (the client's smaller size limit wins), then
    # sizeLimitExceeded with the entries up to the limit.
    size_limit: int = dataclasses.field(default=500, metadata=_check(_range(1, 1_000_000)))
    # Seconds one search may run (the client's smaller time limit wins): timeLimitExceeded.
    time_limit: float = dataclasses.field(default=10.0, metadata=_check(_range(0.1, 3600)))
    # Seconds a connection may stay silent between messages (PBXs keep theirs open).
    idle_timeout: float = dataclasses.field(default=600.0, metadata=_check(_range(1, 86400)))
    # Seconds for the rest of a message once its first byte arrived, and for a client to take
    # our answer.
    read_timeout: float = dataclasses.field(default=10.0, metadata=_check(_range(0.1, 600)))
    # Open connections per listener and process; more are closed at once.
    max_connections: int = dataclasses.field(default=1000, metadata=_check(_range(1, 1_000_000)))
    # Of those, open connections from one source address (IPv6: per /64).
    max_connections_per_address: int = dataclasses.field(
        default=256, metadata=_check(_range(1, 1_000_000))
    )
    # Seconds a connection may stay without a successful bind before it is closed.
    bind_timeout: float = dataclasses.field(default=10.0, metadata=_check(_range(0.1, 3600)))
    # Failed binds per source address (IPv6: per /64): a burst, refilled at this rate per second.
    bind_failure_burst: int = dataclasses.field(default=10, metadata=_check(_range(1, 1_000_000)))
    bind_failure_per_second: float = dataclasses.field(
        default=0.2, metadata=_check(_range(0.001, 100_000))
    )
    # How telephoneNumber/mobile are returned unless the customer's update variable
    # directory-number-format says otherwise: e164 (+497031730090), international
    # (00497031730090), national (07031730090) or digits (497031730090).
    number_format: str = dataclasses.field(
        default="e164", metadata=_check(_choice("e164", "international", "national", "digits"))
    )
    # Build every customer's directory in the background at start and right after each change
    # (else: when first searched).
    preload: bool = True


# The seed's "Kerberos" section: the UDP NAT maps every Frontend needs so CPE reach the Kerberos
# servers (kerbhost = h-kerberos1ip, kerbhost-dup = h-kerberos2ip).
DEFAULT_SHARED_MAPS = (
    "kpasswd-dup udp 7465 #(h-kerberos2ip) 464",
    "kpasswd udp 7464 #(h-kerberos1ip) 464",
    "kerberos-dup udp 7089 #(h-kerberos2ip) 88",
    "kerberos udp 7088 #(h-kerberos1ip) 88",
)
_SHARED_MAP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_SHARED_MAP_ADDRESS = re.compile(
    r"#\([A-Za-z0-9][A-Za-z0-9_.-]{0,63}\)|[A-Za-z0-9][A-Za-z0-9.:-]{0,252}"
)


def parse_shared_map(text: str) -> tuple[str, str, int, str, int]:
    """``"metadir tcp 7714 10.0.0.20 714"`` -> (name, protocol, external port, address, internal
    port); the address may be ``#(variable)``, resolved at the Frontend's layer. ValueError with
    the reason otherwise."""
    parts = text.split()
    if len(parts) != 5:
        raise ValueError(
            f"{text!r}: must be 'name protocol external-port address internal-port', "
            "e.g. 'metadir tcp 7714 10.0.0.20 714'"
        )
    name, protocol, external, address, internal = parts
    if not _SHARED_MAP_NAME.fullmatch(name):
        raise ValueError(f"{text!r}: the name must be lower-case letters, digits, '-', '_'")
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"{text!r}: the protocol must be tcp or udp")
    ports = []
    for port in (external, internal):
        if not re.fullmatch(r"\d{1,5}", port) or not 1 <= int(port) <= 65535:
            raise ValueError(f"{text!r}: ports must be 1..65535")
        ports.append(int(port))
    if not _SHARED_MAP_ADDRESS.fullmatch(address):
        raise ValueError(f"{text!r}: the address must be an IP address, a host name or #(variable)")
    return name, protocol, ports[0], address, ports[1]


def _shared_maps(value: tuple[str, ...]) -> str | None:
    names: set[str] = set()
    for text in value:
        try:
            name = parse_shared_map(text)[0]
        except ValueError as error:
            return str(error)
        if name in names:
            return f"the name {name!r} is used twice"
        names.add(name)
    return None


@dataclasses.dataclass(frozen=True)
class FrontendPlanSettings:
    """The Frontend plan (services/frontend/): NAT maps, SessionBorder objects, budgets."""

    # Seed "Frontend/NAT": about 290 NAT maps fit a Frontend (the config line's length limit).
    max_maps: int = dataclasses.field(default=290, metadata=_check(_range(1, 100_000)))
    # Seed: 2 maps per customer and about 20 reserved for shared services give 135 customers.
    max_customers: int = dataclasses.field(default=135, metadata=_check(_range(1, 100_000)))
    shared_reserve: int = dataclasses.field(default=20, metadata=_check(_range(0, 100_000)))
    # Seed scheme: 4-digit external ports, the first digit the service (8 HTTPS, 9 LDAPS to the
    # PBX), the other three the last octet of the customer PBX's address (9007 -> 10.0.0.7:636).
    https_digit: int = dataclasses.field(default=8, metadata=_check(_range(1, 9)))
    ldaps_digit: int = dataclasses.field(default=9, metadata=_check(_range(1, 9)))
    https_port: int = dataclasses.field(default=443, metadata=_check(_range(1, 65535)))
    ldaps_port: int = dataclasses.field(default=636, metadata=_check(_range(1, 65535)))
    # Maps every customer of the Frontend shares: "name protocol external-port address
    # internal-port", the address an IP, a host name or #(variable) (Frontend layer).
    shared_maps: tuple[str, ...] = dataclasses.field(
        default=DEFAULT_SHARED_MAPS, metadata=_check(_shared_maps)
    )
    # The shared map that is the directory (Metadir in the seed): customer PBXs need
    # `config add PBX0 /ldap-default-addr <its address> /ldap-default-port <its port>`. Empty:
    # not checked.
    directory_map: str = ""
    # Seed "Frontend/NAT": the UDP NAT port range (IP4/General/Settings); size 0 = max_customers.
    udp_nat_first: int = dataclasses.field(default=40000, metadata=_check(_range(1, 65535)))
    udp_nat_size: int = dataclasses.field(default=0, metadata=_check(_range(0, 65535)))
    # The Frontend's UDP-RTP port range (seed: 16384 / 32767 by default).
    rtp_first: int = dataclasses.field(default=16384, metadata=_check(_range(1, 65535)))
    rtp_last: int = dataclasses.field(default=32767, metadata=_check(_range(1, 65535)))
    # [NC] The PBX0 config option behind "No of Regs w/o Pwd" (seed "Security": must be 0 on a
    # Frontend); the seed does not name it. Empty: backups are not checked for it.
    regs_without_password_option: str = ""


@dataclasses.dataclass(frozen=True)
class CaSettings:
    """The provider CA (`pbxfront ca`) and certificate roll-out to devices."""

    # The RootCA's certificate and key (PEM); empty: <data_dir>/ca/root.pem and root.key.
    certificate: Path | None = None
    key: Path | None = None
    # A file holding the key's passphrase (else env PBXFRONT_CA_PASSPHRASE; neither: unencrypted).
    passphrase_file: Path | None = None
    # Days a device / Frontend / wildcard certificate is valid (825: what Apple accepts).
    device_valid_days: int = dataclasses.field(default=825, metadata=_check(_range(1, 7300)))
    server_valid_days: int = dataclasses.field(default=825, metadata=_check(_range(1, 7300)))
    # Roll provider certificates out to devices (protocol.md §9); update variable cert-rollout
    # (on/off, any layer) wins per customer or device.
    rollout: bool = False
    # Renew a device certificate this many days before it expires (PHPUS `renew`).
    renew_days: int = dataclasses.field(default=30, metadata=_check(_range(0, 3650)))
    # RSA key size the device is told to generate (`/key <n>-bit`).
    request_key_bits: int = dataclasses.field(
        default=2048,
        metadata=_check(lambda v: None if v in (2048, 4096) else "must be 2048 or 4096"),
    )
    # Hours after which a device with a current certificate is asked again what it has.
    recheck_hours: float = dataclasses.field(default=24.0, metadata=_check(_range(0.01, 8760)))
    # Polls a step may wait for the device's upload before the roll-out stops with an error.
    max_attempts: int = dataclasses.field(default=10, metadata=_check(_range(1, 1000)))
    # Days the CRL served on the device listener is valid (re-signed on demand before then).
    crl_valid_days: int = dataclasses.field(default=7, metadata=_check(_range(1, 365)))
    # Who signs device requests of the roll-out: "sign" (this node holds the key: signs its own
    # and every queued request), "queue" (no key here: requests wait in PostgreSQL for a signing
    # node), "auto" ("sign" when the key file exists, else "queue").
    signer: str = dataclasses.field(
        default="auto", metadata=_check(_choice("auto", "sign", "queue"))
    )
    # Seconds between sweeps of the signing queue on a signing node (NOTIFY wakes it sooner).
    queue_interval: float = dataclasses.field(default=30.0, metadata=_check(_range(0.1, 3600)))

    def paths(self, data_dir: Path) -> tuple[Path, Path]:
        """(certificate, key) with the defaults under ``data_dir`` filled in."""
        return (
            self.certificate or data_dir / "ca" / "root.pem",
            self.key or data_dir / "ca" / "root.key",
        )
