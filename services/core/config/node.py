"""The node's own sections: listeners, TLS, database, limits, logging, demo, admin, inventory.

What one pbxfront node listens on (address, port, the services mounted there, its TLS
certificate and key, whether it asks for client certificates and which trust anchors verify
them), the names a listener may mount (:data:`SERVICE_NAMES`, :data:`STREAM_SCHEMES` for the
services that speak their own protocol), its PostgreSQL pool, the request and connection limits
of every listener, logging, the demo switch, the admin API, console and metrics settings, and the
guard on ``inventory apply --prune``. Nothing here is seen by a device's scripts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from services.core.config.base import _check, _choice, _range

__all__ = [
    "SERVICE_NAMES",
    "STREAM_SCHEMES",
    "AdminSettings",
    "DatabaseSettings",
    "DemoSettings",
    "InventorySettings",
    "LimitSettings",
    "ListenerSettings",
    "LoggingSettings",
    "TlsSettings",
]

# "noop" is the benchmark baseline (services/bench/noop.py), mounted by `pbxfront bench`;
# "metrics" serves /metrics without login on a private scrape listener.
SERVICE_NAMES = (
    "update",
    "redirect",
    "backup",
    "events",
    "contacts",
    "directory",
    "admin",
    "metrics",
    "noop",
)
# Services that speak their own protocol on a listener of their own (not HTTP), with the URL
# schemes of their plain and TLS listeners.
STREAM_SCHEMES = {"directory": ("ldap", "ldaps")}


@dataclasses.dataclass(frozen=True)
class TlsSettings:
    """TLS session-ticket keys shared by every node through PostgreSQL (core/ticketstore.py)."""

    # Hours a listener's shared ticket key is used before a node replaces it; the old key stays
    # accepted as the previous one until the next rotation (README, Production).
    ticket_key_rotation_hours: float = dataclasses.field(
        default=24.0, metadata=_check(_range(0.01, 8760))
    )
    # Seconds between a node's checks of the shared key (to take a new one, or rotate it).
    ticket_key_check_seconds: float = dataclasses.field(
        default=60.0, metadata=_check(_range(0.1, 3600))
    )


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    # Empty: start the embedded PostgreSQL under <data_dir>/postgres (pgserver).
    url: str = ""
    # A file holding the DSN (keeps a password out of the TOML and out of argv).
    url_file: Path | None = None
    pool_min_size: int = dataclasses.field(default=1, metadata=_check(_range(0, 100)))
    # At least 2: the update service keeps one connection listening for inventory changes.
    pool_max_size: int = dataclasses.field(default=10, metadata=_check(_range(2, 1000)))
    # Seconds; bounds how long a request waits for PostgreSQL before answering 503.
    connect_timeout: float = dataclasses.field(default=2.0, metadata=_check(_range(0.1, 60)))
    command_timeout: float = dataclasses.field(default=5.0, metadata=_check(_range(0.1, 600)))
    acquire_timeout: float = dataclasses.field(default=2.0, metadata=_check(_range(0.1, 60)))


@dataclasses.dataclass(frozen=True)
class ListenerSettings:
    host: str = "127.0.0.1"
    port: int = dataclasses.field(default=0, metadata=_check(_range(0, 65535)))
    services: tuple[str, ...] = ()
    tls: bool = True
    certificate: Path | None = None
    key: Path | None = None
    # Ask devices for a client certificate and verify it against these trust anchors.
    request_client_certificate: bool = False
    client_ca: tuple[Path, ...] = ()
    # Seconds for the TLS handshake and for the request headers to arrive.
    handshake_timeout: float = dataclasses.field(default=10.0, metadata=_check(_range(0.1, 300)))


@dataclasses.dataclass(frozen=True)
class LimitSettings:
    max_body_bytes: int = dataclasses.field(
        default=4 * 1024 * 1024, metadata=_check(_range(1, 2**31))
    )
    max_query_bytes: int = dataclasses.field(default=4096, metadata=_check(_range(64, 65536)))
    max_header_bytes: int = dataclasses.field(default=16384, metadata=_check(_range(1024, 65536)))
    header_timeout: float = dataclasses.field(default=10.0, metadata=_check(_range(0.1, 300)))
    request_timeout: float = dataclasses.field(default=30.0, metadata=_check(_range(0.1, 3600)))
    keepalive_timeout: float = dataclasses.field(default=15.0, metadata=_check(_range(0, 3600)))
    shutdown_timeout: float = dataclasses.field(default=10.0, metadata=_check(_range(0, 600)))
    # Authentication failures on every HTTP path (core.authguard), per source address (IPv6:
    # per /64): a burst, refilled at this rate per second; out of tokens: 429 for every
    # credentialed request from that address.
    auth_failure_burst: int = dataclasses.field(default=20, metadata=_check(_range(1, 1_000_000)))
    auth_failure_per_second: float = dataclasses.field(
        default=0.2, metadata=_check(_range(0.0001, 100_000))
    )
    # The same per account (from any address); an exhausted account is refused only from
    # addresses that have not authenticated as it within auth_trusted_seconds.
    auth_account_failure_burst: int = dataclasses.field(
        default=50, metadata=_check(_range(1, 1_000_000))
    )
    auth_account_failure_per_second: float = dataclasses.field(
        default=0.5, metadata=_check(_range(0.0001, 100_000))
    )
    auth_trusted_seconds: float = dataclasses.field(
        default=86400.0, metadata=_check(_range(0, 365 * 86400))
    )
    # argon2 password checks running at once per node (each takes argon2's 64 MiB), and how many
    # may wait for a turn; beyond that 503 with Retry-After.
    hash_concurrency: int = dataclasses.field(default=2, metadata=_check(_range(1, 64)))
    hash_queue: int = dataclasses.field(default=64, metadata=_check(_range(0, 100_000)))
    # /metrics on the admin listener needs an admin or operator account (Basic or bearer token);
    # false serves it to anyone who reaches the listener. A listener with the "metrics" service
    # serves it without authentication (for a private scrape port).
    metrics_auth: bool = True
    # Open connections per HTTP listener and worker process, in total and per source address
    # (IPv6: per /64); more are closed at accept (core/guard.py).
    max_connections: int = dataclasses.field(default=10_000, metadata=_check(_range(1, 1_000_000)))
    max_connections_per_address: int = dataclasses.field(
        default=256, metadata=_check(_range(1, 1_000_000))
    )


@dataclasses.dataclass(frozen=True)
class LoggingSettings:
    level: str = dataclasses.field(
        default="INFO", metadata=_check(_choice("DEBUG", "INFO", "WARNING", "ERROR"))
    )
    access_log: bool = True


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    # Generate a demo CA, server and device certificates under <data_dir>/pki and apply the
    # inventory file below at start-up.  Never for production.
    enabled: bool = False
    inventory: Path | None = None
    organization: str = "pbxfront demo"
    country: str = "DE"


@dataclasses.dataclass(frozen=True)
class AdminSettings:
    # Seconds an issued API token stays valid.
    token_lifetime: float = dataclasses.field(
        default=3600.0, metadata=_check(_range(60, 31 * 86400))
    )
    # Operator console (/ui/): seconds a login lasts at most, and without any request.
    console_session_lifetime: float = dataclasses.field(
        default=28800.0, metadata=_check(_range(60, 31 * 86400))
    )
    console_idle_timeout: float = dataclasses.field(
        default=1800.0, metadata=_check(_range(30, 31 * 86400))
    )
    # Failed console logins allowed in a burst, per address and per account name, and how
    # many more per second are allowed after that.
    console_login_failure_burst: int = dataclasses.field(
        default=5, metadata=_check(_range(1, 1_000_000))
    )
    console_login_failure_per_second: float = dataclasses.field(
        default=0.05, metadata=_check(_range(0.0001, 1000))
    )
    # Seconds between two runs of the node's metrics collector (the /metrics gauges read from
    # PostgreSQL: devices by state, stale backups, events backlog, certificate expiry).
    metrics_interval: float = dataclasses.field(default=15.0, metadata=_check(_range(0.1, 3600)))
    # Where the worker processes of one node keep their metric files (prometheus-client
    # multiprocess mode), emptied at every start; empty: <data_dir>/metrics.
    metrics_dir: Path | None = None
    # An event-sender account bound to no customer (`pbxfront accounts bind`) may write events
    # and backups for every customer's devices, as before bindings existed. Default: refused
    # (403 and a security-log line); turn on only while you bind the existing accounts.
    unbound_senders_any_customer: bool = False


@dataclasses.dataclass(frozen=True)
class InventorySettings:
    # `inventory apply --prune` refuses without --force to remove more than this share of the
    # stored customers and devices (0.2 = 20 %).
    max_prune_share: float = dataclasses.field(default=0.2, metadata=_check(_range(0, 1)))
