"""Typed, layered settings: defaults < TOML files (in order) < ``PBXFRONT_*`` env < CLI ``--set``.

Every key is a field of a frozen dataclass below; ``config/pbxfront.example.toml`` documents
each one (a test keeps the two in step). Loading validates types and ranges and fails with a
:class:`ConfigError` whose message names the key path
(``listeners.devices.port: must be 0..65535``).
Nothing here touches the network, the database or the file system beyond reading the TOML files.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ENV_PREFIX = "PBXFRONT_"
# `PBXFRONT_DATABASE__URL` -> database.url; a double underscore separates levels because keys
# themselves contain single underscores.
ENV_SEPARATOR = "__"
# Variables that configure the CLI itself rather than a settings key.
ENV_RESERVED = frozenset(
    {
        "PBXFRONT_CONFIG",
        "PBXFRONT_ACCOUNT_PASSWORD",
        "PBXFRONT_CA_PASSPHRASE",
        "PBXFRONT_P12_PASSPHRASE",
    }
)

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


class ConfigError(Exception):
    """A settings problem; the message starts with the key path or the file."""


def _range(low: float, high: float) -> typing.Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be {low}..{high}"

    return check


def _choice(*allowed: str) -> typing.Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be one of {', '.join(allowed)}"

    return check


def _check(validator: typing.Callable[[Any], str | None]) -> dict[str, Any]:
    return {"check": validator}


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


@dataclasses.dataclass(frozen=True)
class UpdateSettings:
    # The script templates (the seed's /DRIVE/CF0/update/ tree) and the firmware store.
    scripts_dir: Path = Path("staging_scripts")
    firmware_dir: Path = Path("firmware")
    # Minutes between polls a device is told to use; "stale" = not seen for 3 intervals.
    poll_interval: int = dataclasses.field(default=15, metadata=_check(_range(1, 1440)))
    # Base URL written into scripts (update URL, firmware, backup, events), e.g.
    # "https://fe1.hoster.example". Empty: the scheme and Host of each request.
    public_url: str = ""
    # Seconds between checks of the scripts folder for changed files.
    reload_interval: float = dataclasses.field(default=2.0, metadata=_check(_range(0.1, 3600)))
    # Paths of innovaphone's PHP update server (PHPUS) that devices moved from it still poll:
    # `GET <path>` moves the device to update.txt, `PUT`/`POST <path>?mode=backup` is a backup.
    # An entry starting with "*" matches every path ending in the rest ("*/update.php").
    phpus_paths: tuple[str, ...] = dataclasses.field(
        default=("/update.php", "/DRIVE/CF0/update/update.php"),
        metadata=_check(lambda v: _phpus_paths(v)),
    )
    # First words (or "word word") of script lines allowed besides protocol.md's grammar.
    extra_commands: tuple[str, ...] = ()
    # Seconds between batched writes of device status (one statement for all polls since the
    # last); 0 writes as soon as a poll is answered.
    status_flush_interval: float = dataclasses.field(default=0.05, metadata=_check(_range(0, 60)))
    # Where firmware comes from: "files" (firmware_dir on this node, `pbxfront firmware add` on
    # each node) or "database" (added once on any node, stored in PostgreSQL, served by every
    # node from firmware_cache_dir after a SHA-256 check).
    firmware_source: str = dataclasses.field(
        default="files", metadata=_check(_choice("files", "database"))
    )
    # firmware_source = "database": this node's copies; empty: <data_dir>/firmware-cache.
    firmware_cache_dir: Path | None = None
    # Seconds after which a cached firmware file is hashed again before it is served (it is
    # always hashed when its size, time or inode changed).
    firmware_verify_interval: float = dataclasses.field(
        default=3600.0, metadata=_check(_range(1, 10**7))
    )
    # Where devices' scripts come from: "files" (scripts_dir on this node, re-read on change) or
    # "database" (the version published with `pbxfront scripts publish`, the same on every node).
    scripts_source: str = dataclasses.field(
        default="files", metadata=_check(_choice("files", "database"))
    )
    # Seconds between checks of an open canary roll-out (`pbxfront rollouts`); 0: only by
    # `pbxfront rollouts advance`.
    rollout_check_interval: float = dataclasses.field(
        default=10.0, metadata=_check(_range(0, 3600))
    )
    # protocol.md §10 (PHPUS "grace"): a changed script file reaches devices only once it is
    # this many seconds old, so a half-saved file is never sent; until then the previous
    # version of the whole tree is served.
    grace_seconds: float = dataclasses.field(default=90.0, metadata=_check(_range(0, 86400)))
    # protocol.md §10: staging turns fast polling on with `mod cmd UP1 provision <n>` and
    # `config add UP1 /poll 1`; the first update reply turns it off again.
    provision_minutes: int = dataclasses.field(default=5, metadata=_check(_range(1, 60)))
    # A device's `ver` names the wanted build but its PROT/BOOT does not: firmware lines are sent
    # this many times, then withheld and the device is shown as firmware-stuck.
    firmware_attempts: int = dataclasses.field(default=3, metadata=_check(_range(1, 100)))
    # protocol.md §10: models that get no firmware / no boot code (PHPUS nofirmdev/nobootdev).
    firmware_none: tuple[str, ...] = ("swphone", "mypbxi", "ipbs", "ipbs2", "pbl")
    boot_none: tuple[str, ...] = (
        "ipva",
        "ipvadect",
        "swphone",
        "mypbxa",
        "mypbxi",
        "ipbs",
        "ipbs2",
        "pbl",
    )
    # Per-model file names, "model=file" (PHPUS <filenames>): what the device is told to load.
    firmware_names: tuple[str, ...] = dataclasses.field(
        default=("mypbxa=mypbx.apk",), metadata=_check(lambda v: _model_names(v))
    )
    boot_names: tuple[str, ...] = dataclasses.field(
        default=("mypbxa=alt-bootnomodel.bin",), metadata=_check(lambda v: _model_names(v))
    )
    # A poll from a device not in the inventory: "refuse" (404, recorded for `devices adopt`) or
    # "script" (the provider's unknown.txt, rendered without any customer data; also recorded).
    unknown_devices: str = dataclasses.field(
        default="refuse", metadata=_check(_choice("refuse", "script"))
    )
    # Polls naming devices not in the inventory, per source address (IPv6: per /64): a burst,
    # refilled at this rate per second; past it 429. Stops enumerating the inventory by sn=.
    unknown_burst: int = dataclasses.field(default=20, metadata=_check(_range(1, 1_000_000)))
    unknown_per_second: float = dataclasses.field(
        default=0.2, metadata=_check(_range(0.001, 100_000))
    )
    # Rows kept of unknown devices; a new one past this replaces the longest unseen.
    unknown_max_rows: int = dataclasses.field(default=10_000, metadata=_check(_range(10, 10**7)))
    # A PROVEN unknown device (client certificate) whose redirect mapping has a fact "customer"
    # naming an inventory customer is added to it at its first poll (audited, device.auto_adopt).
    auto_adopt: bool = False


def _model_names(value: Any) -> str | None:
    for item in value:
        model, sep, name = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z0-9-]{1,32}", model):
            return f"{item!r}: must be model=file, model in lower case (e.g. mypbxa=mypbx.apk)"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name) or ".." in name:
            return f"{item!r}: file name: letters, digits, . _ - only"
    return None


_PHPUS_PATH = re.compile(r"(\*|)(/[A-Za-z0-9._~-]+)*/[A-Za-z0-9_~-][A-Za-z0-9._~-]*\.php")


def _phpus_paths(value: Any) -> str | None:
    for path in value:
        if not isinstance(path, str) or not _PHPUS_PATH.fullmatch(path) or "/../" in path:
            return (
                f"{path!r}: must be a path ending in a .php file name, e.g. "
                '"/update.php", or "*/update.php" for any path ending so'
            )
    return None


_REDIRECT_URL_FIELDS = {"public_address": "192.0.2.1", "frontend": "sb1", "index": 1}


def _redirect_url_template(value: Any) -> str | None:
    if not re.fullmatch(r"https?://[^\s#?]+", value):
        return "must be an http(s) URL without spaces, query or fragment"
    try:
        value.format(**_REDIRECT_URL_FIELDS)
    except (KeyError, IndexError, ValueError):
        return "placeholders: only {public_address}, {frontend} and {index}"
    return None


def _redirect_url_arguments(value: Any) -> str | None:
    # protocol.md §1: the device expands #m #h #t #i; nothing here may break the command line.
    return None if re.fullmatch(r"[A-Za-z0-9=&#%_.~-]*", value) else "must be like sn=#m&hwid=#h"


def _redirect_paths(value: Any) -> str | None:
    for path in value:
        if not re.fullmatch(r"/[A-Za-z0-9._/-]{1,200}", path) or "//" in path or ".." in path:
            return f"{path!r}: must be a plain absolute path such as /redirect/init"
    return None


@dataclasses.dataclass(frozen=True)
class RedirectSettings:
    # Where a registered device is sent: its Frontend's staging URL, from the inventory's
    # Frontend. Placeholders: {public_address}, {frontend}, {index}. A mapping with its own URL
    # uses that instead.
    frontend_url: str = dataclasses.field(
        default="https://{public_address}/DRIVE/CF0/update/staging.txt",
        metadata=_check(_redirect_url_template),
    )
    # Appended (after "?") to a target URL without a query; the device expands #m #h #t #i.
    url_arguments: str = dataclasses.field(
        default="sn=#m&hwid=#h&type=#t&ip=#i", metadata=_check(_redirect_url_arguments)
    )
    # Paths answering like /redirect.php and /init.
    extra_paths: tuple[str, ...] = dataclasses.field(default=(), metadata=_check(_redirect_paths))
    # Lookups of unregistered devices per source address (IPv6: per /64): a burst, refilled at
    # this rate per second. An address out of tokens gets 429 for every lookup.
    unknown_burst: int = dataclasses.field(default=30, metadata=_check(_range(1, 1_000_000)))
    unknown_per_second: float = dataclasses.field(
        default=0.5, metadata=_check(_range(0.001, 100_000))
    )
    # Provider API: seconds a signature's timestamp may differ from the server's clock.
    signature_max_skew: int = dataclasses.field(default=300, metadata=_check(_range(5, 3600)))
    # Provider API: rows one bulk import may carry (more: 413).
    import_max_rows: int = dataclasses.field(default=50_000, metadata=_check(_range(1, 1_000_000)))
    # Seconds a transfer token stays valid.
    transfer_token_lifetime: float = dataclasses.field(
        default=7 * 86400.0, metadata=_check(_range(60, 365 * 86400))
    )


def _regex_list(value: Any) -> str | None:
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as error:
            return f"{pattern!r} is not a regular expression: {error}"
    return None


def _digest_algorithms(value: Any) -> str | None:
    if not value:
        return "must name at least one of SHA-256, MD5"
    unknown = [v for v in value if v not in ("SHA-256", "MD5")]
    return f"unknown algorithm {unknown[0]!r} (known: SHA-256, MD5)" if unknown else None


@dataclasses.dataclass(frozen=True)
class BackupSettings:
    # Largest config a device may PUT (bytes; limits.max_body_bytes applies too); larger gets 413.
    max_body_bytes: int = dataclasses.field(
        default=4 * 1024 * 1024, metadata=_check(_range(1, 2**31))
    )
    # Regular expressions of lines to ignore when comparing versions, besides protocol.md §5's.
    ignore_patterns: tuple[str, ...] = dataclasses.field(default=(), metadata=_check(_regex_list))
    # Retention defaults (a customer's update variables backup-keep-last/-days/-months win):
    # the last N changed versions, plus one a day for D days, plus one a month for M months.
    keep_last: int = dataclasses.field(default=10, metadata=_check(_range(1, 100000)))
    keep_days: int = dataclasses.field(default=14, metadata=_check(_range(0, 3650)))
    keep_months: int = dataclasses.field(default=12, metadata=_check(_range(0, 1200)))
    # Hours without any PUT before a device's backup counts as stale (alert); variable
    # backup-stale-hours wins per customer.
    stale_after_hours: float = dataclasses.field(default=48.0, metadata=_check(_range(1, 87600)))
    # Seconds between retention/staleness runs (one node of the cluster runs each); 0 = never
    # (then only `pbxfront backups prune`).
    prune_interval: float = dataclasses.field(default=3600.0, metadata=_check(_range(0, 86400 * 7)))
    # Options whose value is a secret, redacted in diffs and `show` unless asked otherwise.
    secret_options: tuple[str, ...] = ("/pwd", "/password", "/pw", "/key")
    # `vars create <name> <flags> <value>`: values whose flags contain all letters of one of
    # these are redacted.
    secret_var_flags: tuple[str, ...] = ("pb",)
    # HTTP Digest (RFC 7616) algorithms offered to devices, preferred first.
    digest_algorithms: tuple[str, ...] = dataclasses.field(
        default=("SHA-256", "MD5"), metadata=_check(_digest_algorithms)
    )
    # Seconds a Digest nonce stays valid; an older one is answered with stale=true.
    digest_nonce_lifetime: float = dataclasses.field(
        default=300.0, metadata=_check(_range(1, 86400))
    )


def _event_destinations(value: Any) -> str | None:
    # The URL grammar lives with the forwarder (services/events/syslog.py parses it again and
    # reports details); here only what a config file can get wrong at a glance.
    for url in value:
        if not re.fullmatch(
            r"(udp|tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}(\?\S*)?", url
        ):
            return f"{url!r}: must be like udp://host:514, tcp://host:514 or tls://host:6514"
    return None


@dataclasses.dataclass(frozen=True)
class EventsSettings:
    """The events service (services/events/): alarm and log intake, store, syslog forwarding."""

    # Paths devices POST (or GET, the HTTP log format) events to, on the device listeners.
    paths: tuple[str, ...] = dataclasses.field(
        default=("/events",), metadata=_check(_redirect_paths)
    )
    # Largest event body (bytes; limits.max_body_bytes applies too); larger gets 413.
    max_body_bytes: int = dataclasses.field(default=65536, metadata=_check(_range(1, 2**31)))
    digest_algorithms: tuple[str, ...] = dataclasses.field(
        default=("SHA-256", "MD5"), metadata=_check(_digest_algorithms)
    )
    digest_nonce_lifetime: float = dataclasses.field(
        default=300.0, metadata=_check(_range(1, 86400))
    )
    # Per sending device (or, for an account without a named device, per account and address):
    # events and body bytes per minute; past either, 429 with Retry-After; 0 = unlimited.
    quota_events_per_minute: int = dataclasses.field(
        default=600, metadata=_check(_range(0, 10_000_000))
    )
    quota_bytes_per_minute: int = dataclasses.field(
        default=4 * 1024 * 1024, metadata=_check(_range(0, 2**40))
    )
    # Group commit: seconds the writer waits for more events before one transaction, and the
    # most events per transaction.
    commit_window: float = dataclasses.field(default=0.001, metadata=_check(_range(0, 1)))
    commit_batch: int = dataclasses.field(default=500, metadata=_check(_range(1, 100_000)))
    # Device timestamps further ahead of / behind the receive time are kept but flagged.
    time_future_limit: float = dataclasses.field(
        default=3600.0, metadata=_check(_range(0, 10 * 365 * 86400))
    )
    time_past_limit: float = dataclasses.field(
        default=30 * 86400.0, metadata=_check(_range(0, 10 * 365 * 86400))
    )
    # Retention (one node runs it): days to keep, events kept per device; 0 = unlimited.
    retention_days: float = dataclasses.field(default=90.0, metadata=_check(_range(0, 36500)))
    retention_per_device: int = dataclasses.field(
        default=10000, metadata=_check(_range(0, 100_000_000))
    )
    retention_interval: float = dataclasses.field(
        default=3600.0, metadata=_check(_range(0, 7 * 86400))
    )
    # Syslog destinations: udp://host:port, tcp://host:port (RFC 6587 octet counting),
    # tls://host:port (RFC 5425); options as a query: ?ca=FILE&format=rfc3164&name=NAME.
    destinations: tuple[str, ...] = dataclasses.field(
        default=(), metadata=_check(_event_destinations)
    )
    # Syslog facility of forwarded events.
    facility: str = dataclasses.field(
        default="local0",
        metadata=_check(_choice(*(f"local{i}" for i in range(8)), "user", "daemon")),
    )
    # Forward a repeat of an active alarm again (then it is also kept as its own row).
    forward_repeats: bool = False
    # A destination seen for the first time starts at the oldest stored event or after the
    # newest.
    new_destination_start: str = dataclasses.field(
        default="beginning", metadata=_check(_choice("beginning", "end"))
    )
    # Seconds a TCP/TLS connection must survive after a batch before the batch counts as
    # delivered (syslog has no acknowledgement; a connection lost sooner re-sends it).
    confirm_delay: float = dataclasses.field(default=2.0, metadata=_check(_range(0, 600)))
    # Reconnect backoff ceiling (seconds), events per send, largest syslog message (bytes).
    reconnect_max_delay: float = dataclasses.field(
        default=30.0, metadata=_check(_range(0.05, 3600))
    )
    forward_batch: int = dataclasses.field(default=500, metadata=_check(_range(1, 100_000)))
    max_message_bytes: int = dataclasses.field(default=8192, metadata=_check(_range(480, 65000)))


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


@dataclasses.dataclass(frozen=True)
class TlsSettings:
    """TLS session-ticket keys shared by every node through PostgreSQL (core/ticketstore.py)."""

    # Hours a listener's shared ticket key is used before a node replaces it. Tickets under the
    # old key then get a full handshake (once per device): OpenSSL takes one key (README,
    # Production).
    ticket_key_rotation_hours: float = dataclasses.field(
        default=24.0, metadata=_check(_range(0.01, 8760))
    )
    # Seconds between a node's checks of the shared key (to take a new one, or rotate it).
    ticket_key_check_seconds: float = dataclasses.field(
        default=60.0, metadata=_check(_range(0.1, 3600))
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    # The directory every relative path of these settings is resolved against (data_dir,
    # scripts, firmware, certificates ...). Empty: relative paths stay relative to the working
    # directory. The systemd unit sets it (PBXFRONT_BASE_DIR=/var/lib/pbxfront), so a relative
    # default never lands under "/".
    base_dir: Path | None = None
    # Where pbxfront keeps local state: the embedded PostgreSQL, demo certificates.
    data_dir: Path = Path("var")
    # This node's Frontend id in the inventory (e.g. "sb1").
    frontend: str = "sb1"
    # Worker processes per node; 0 = one per CPU core.
    workers: int = dataclasses.field(default=0, metadata=_check(_range(0, 256)))
    tls: TlsSettings = TlsSettings()
    database: DatabaseSettings = DatabaseSettings()
    listeners: dict[str, ListenerSettings] = dataclasses.field(default_factory=dict)
    limits: LimitSettings = LimitSettings()
    logging: LoggingSettings = LoggingSettings()
    demo: DemoSettings = DemoSettings()
    admin: AdminSettings = AdminSettings()
    inventory: InventorySettings = InventorySettings()
    update: UpdateSettings = UpdateSettings()
    backup: BackupSettings = BackupSettings()
    redirect: RedirectSettings = RedirectSettings()
    events: EventsSettings = EventsSettings()
    contacts: ContactsSettings = ContactsSettings()
    directory: DirectorySettings = DirectorySettings()
    ca: CaSettings = CaSettings()
    frontend_plan: FrontendPlanSettings = FrontendPlanSettings()

    def listeners_for(self, only: Iterable[str] | None = None) -> dict[str, ListenerSettings]:
        """The listeners to open. With ``only``, each keeps just those services and a listener
        left without any is not opened; without it, every listener opens (one with no services
        still answers ``/healthz``)."""
        if only is None:
            return dict(self.listeners)
        wanted = set(only)
        result: dict[str, ListenerSettings] = {}
        for name, listener in self.listeners.items():
            services = tuple(s for s in listener.services if s in wanted)
            if services:
                result[name] = dataclasses.replace(listener, services=services)
        return result


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _coerce(annotation: Any, value: Any, path: str) -> Any:
    """Turn a TOML/env value into ``annotation``'s type or raise ConfigError naming ``path``."""
    inner, optional = _unwrap_optional(annotation)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path}: must not be empty")
    origin = typing.get_origin(inner)
    if dataclasses.is_dataclass(inner) and isinstance(inner, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: must be a table")
        return _build(inner, value, path)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: must be a table")
        _, value_type = typing.get_args(inner)
        return {str(key): _coerce(value_type, item, f"{path}.{key}") for key, item in value.items()}
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(inner)
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: must be a list")
        return tuple(_coerce(item_type, item, f"{path}[{i}]") for i, item in enumerate(value))
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{path}: must be true or false, not {value!r}")
    if inner is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: must be an integer, not {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise ConfigError(f"{path}: must be an integer, not {value!r}")
    if inner is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: must be a number, not {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: must be a number, not {value!r}")
    if inner is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: must be a string, not {value!r}")
    if inner is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: must be a non-empty path string")
        # Relative paths are relative to the working directory (the README runs from the checkout).
        return Path(value).expanduser()
    raise ConfigError(f"{path}: unsupported setting type {inner!r}")  # pragma: no cover


def _build(cls: type[Any], values: Mapping[str, Any], path: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"{where}{unknown[0]}: unknown key (known here: {', '.join(sorted(fields))})"
        )
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        key_path = f"{path}.{name}" if path else name
        converted = _coerce(hints[name], value, key_path)
        check = fields[name].metadata.get("check")
        if check is not None and converted is not None:
            problem = check(converted)
            if problem:
                raise ConfigError(f"{key_path}: {problem}")
        kwargs[name] = converted
    return cls(**kwargs)


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merge(dict(result[key]), value)
        else:
            result[key] = value
    return result


def _set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = [p for p in dotted.split(".") if p]
    if not parts:
        raise ConfigError(f"{dotted!r}: empty key")
    node = target
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is not a table")
        node = child
    node[parts[-1]] = value


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: not readable") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``PBXFRONT_LIMITS__MAX_BODY_BYTES=10`` -> ``{"limits": {"max_body_bytes": "10"}}``."""
    result: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_RESERVED:
            continue
        dotted = ".".join(part.lower() for part in name[len(ENV_PREFIX) :].split(ENV_SEPARATOR))
        _set_path(result, dotted, value)
    return result


def cli_overrides(assignments: Sequence[str]) -> dict[str, Any]:
    """``--set database.pool_max_size=20`` pairs; values are parsed as TOML when they can be."""
    result: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep:
            raise ConfigError(f"--set {assignment!r}: expected key.path=value")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        _set_path(result, key.strip(), value)
    return result


def config_files_from_env(environ: Mapping[str, str]) -> list[Path]:
    raw = environ.get("PBXFRONT_CONFIG", "")
    return [Path(part) for part in raw.split(":") if part]


def load_settings(
    files: Sequence[Path] = (),
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build :class:`Settings` from the layers; raise :class:`ConfigError` on the first problem."""
    merged: dict[str, Any] = {}
    for path in files:
        merged = _merge(merged, read_toml(path))
    merged = _merge(merged, env_overrides(os.environ if environ is None else environ))
    if overrides:
        merged = _merge(merged, overrides)
    settings: Settings = _build(Settings, merged, "")
    if settings.base_dir is not None:
        if not settings.base_dir.is_absolute():
            raise ConfigError("base_dir: must be an absolute path")
        settings = _resolved(settings, settings.base_dir)
    validate(settings)
    return settings


def _resolved(value: Any, base: Path) -> Any:
    """``value`` with every relative Path in it (dataclasses, tuples, dicts) made absolute
    against ``base``."""
    if isinstance(value, Path):
        return value if value.is_absolute() else base / value
    if isinstance(value, tuple):
        return tuple(_resolved(item, base) for item in value)
    if isinstance(value, dict):
        return {key: _resolved(item, base) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            field.name: _resolved(getattr(value, field.name), base)
            for field in dataclasses.fields(value)
        }
        return dataclasses.replace(value, **changes)
    return value


def validate(settings: Settings) -> None:
    """Cross-field checks a single field's validator cannot make."""
    if settings.database.pool_min_size > settings.database.pool_max_size:
        raise ConfigError("database.pool_min_size: must not exceed database.pool_max_size")
    if settings.update.public_url and not re.fullmatch(
        r"https?://[A-Za-z0-9.-]+(:\d{1,5})?", settings.update.public_url
    ):
        raise ConfigError("update.public_url: must be like https://fe1.hoster.example[:port]")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", settings.frontend):
        raise ConfigError("frontend: must be a safe id such as sb1")
    plan = settings.frontend_plan
    if plan.https_digit == plan.ldaps_digit:
        raise ConfigError("frontend_plan.ldaps_digit: must differ from frontend_plan.https_digit")
    if plan.rtp_first > plan.rtp_last:
        raise ConfigError("frontend_plan.rtp_first: must not exceed frontend_plan.rtp_last")
    for name, listener in settings.listeners.items():
        where = f"listeners.{name}"
        for service in listener.services:
            if service not in SERVICE_NAMES:
                raise ConfigError(
                    f"{where}.services: unknown service {service!r} "
                    f"(known: {', '.join(SERVICE_NAMES)})"
                )
        demo_fills_in = settings.demo.enabled
        if (
            listener.tls
            and not demo_fills_in
            and (listener.certificate is None or listener.key is None)
        ):
            raise ConfigError(f"{where}: tls = true needs certificate and key")
        if listener.request_client_certificate and not listener.tls:
            raise ConfigError(f"{where}.request_client_certificate: needs tls = true")
        streams = [service for service in listener.services if service in STREAM_SCHEMES]
        if streams and len(listener.services) > 1:
            raise ConfigError(
                f"{where}.services: {streams[0]!r} speaks its own protocol and cannot share a "
                "listener with other services"
            )
        if (
            listener.request_client_certificate
            and not listener.client_ca
            and not settings.demo.enabled
        ):
            raise ConfigError(f"{where}.client_ca: needed when request_client_certificate = true")


def documented_keys(cls: type[Any] = Settings, prefix: str = "") -> list[str]:
    """Every settings key as a dotted path (``listeners.*.port`` for table entries)."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        path = f"{prefix}{field.name}"
        inner, _ = _unwrap_optional(hints[field.name])
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            keys.extend(documented_keys(inner, f"{path}."))
        elif typing.get_origin(inner) is dict:
            _, value_type = typing.get_args(inner)
            if dataclasses.is_dataclass(value_type) and isinstance(value_type, type):
                keys.extend(documented_keys(value_type, f"{path}.*."))
            else:
                keys.append(f"{path}.*")
        else:
            keys.append(path)
    return keys
