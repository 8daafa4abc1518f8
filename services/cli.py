"""``pbxfront`` command line. Every command takes ``--config FILE`` (repeatable) or, without it,
``PBXFRONT_CONFIG`` (colon-separated), plus ``--set key.path=value`` overrides, and works on the
same database as ``serve`` with that config (the embedded PostgreSQL is shared).

Secrets are never read from argv: passwords come from a prompt, a file or an environment variable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from services.core.commands import Handler, Work
from services.core.config import (
    ConfigError,
    Settings,
    cli_overrides,
    config_files_from_env,
    load_settings,
)
from services.core.db import DatabaseConfigError, open_database
from services.core.errors import DomainError, UsageError
from services.core.pki import PkiError
from services.core.tls import TlsConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

DESCRIPTION = """\
pbxfront: the services a hosted-PBX provider runs on its Frontends for innovaphone devices
(update, redirect, backup, events, contacts, directory, admin).

Every command reads its settings from --config FILE (repeatable, later files win) or, without
one, from the colon-separated list in $PBXFRONT_CONFIG, plus --set KEY=VALUE overrides, and works
on the same database as 'pbxfront serve' with those settings."""

EPILOG = """\
Start with 'pbxfront init' (a starter /etc/pbxfront and /var/lib/pbxfront) or try the demo:
'pbxfront serve --config config/demo.toml'. 'pbxfront COMMAND --help' describes a command.
Passwords and other secrets are never read from the command line."""


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pbxfront")
    except metadata.PackageNotFoundError:  # pragma: no cover - a bare checkout
        return "unknown"


def _settings(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Settings:
    files = [Path(p) for p in args.config] if args.config else config_files_from_env(os.environ)
    overrides = cli_overrides(args.set or [])
    if extra:
        for key, value in extra.items():
            node = overrides
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return load_settings(files, overrides=overrides)


def _with_database(
    args: argparse.Namespace,
    work: Callable[[Settings, asyncpg.Pool], Awaitable[int]],
    *,
    run_migrations: bool = True,
) -> int:
    settings = _settings(args)

    async def run() -> int:
        async with open_database(settings, run_migrations=run_migrations) as pool:
            return await work(settings, pool)

    return asyncio.run(run())


def _with_dsn(args: argparse.Namespace, what: str, tool: Callable[[str], Awaitable[T]]) -> T:
    """``tool(dsn)`` on the database of the settings (the embedded server started for it and
    stopped after), for pg_dump and pg_restore; their failure is a usage error of ``what``."""
    from services.core.db import BackupError, database_dsn

    settings = _settings(args)

    async def run() -> T:
        async with database_dsn(settings) as dsn:
            try:
                return await tool(dsn)
            except BackupError as error:
                raise UsageError(f"{what}: {error}") from None

    return asyncio.run(run())


def _bind(work: Work) -> Handler:
    """A service's ""work(args, settings, pool)"" as an argparse handler (see core.commands)."""

    def handler(args: argparse.Namespace) -> int:
        async def run(settings: Settings, pool: asyncpg.Pool) -> int:
            try:
                return await work(args, settings, pool)
            except DomainError as error:
                raise UsageError(str(error)) from None

        return _with_database(args, run)

    return handler


# --- serve -----------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from services import serve
    from services.core.db import EmbeddedPostgres, PostgresSupervisor, configured_dsn
    from services.core.runner import check_tls, configure_logging, run_node

    settings = _settings(args)
    configure_logging(settings.logging.level)
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    factories = serve.service_factories()
    listeners = settings.listeners_for(only)
    if not listeners:
        raise UsageError("nothing to serve: no listener carries the selected services")
    serve.check_services(listeners, factories)
    demo = None
    if settings.demo.enabled:
        demo = serve.prepare_demo_pki(settings)
        settings = serve.with_demo_tls(settings, demo)
        listeners = settings.listeners_for(only)
    check_tls(listeners)
    workers = args.workers if args.workers is not None else settings.workers
    if workers == 0:
        workers = os.cpu_count() or 1

    async def prepare(dsn: str) -> None:
        from services.core.db import create_pool, migrate

        pool = await create_pool(dsn, settings.database)
        try:
            async with pool.acquire() as connection:
                await migrate(connection)
            if demo is not None:
                await serve.apply_demo_inventory(settings, pool)
        finally:
            await pool.close()

    embedded = None
    supervisor = None
    dsn = configured_dsn(settings.database)
    if not dsn:
        embedded = EmbeddedPostgres(settings.data_dir)
        dsn = embedded.start()
        # serve owns this server: restart it if it dies (kill -9, OOM killer).
        supervisor = PostgresSupervisor(embedded)
        supervisor.start()
    try:
        asyncio.run(prepare(dsn))
        ready_file = Path(args.ready_file) if args.ready_file else None
        return run_node(
            settings,
            listeners,
            factories,
            dsn,
            workers=workers,
            ready_file=ready_file,
            announce=lambda addresses: serve.print_try_it(settings, addresses, demo),
        )
    finally:
        if supervisor is not None:
            supervisor.stop()
        if embedded is not None:
            embedded.stop()


# --- db --------------------------------------------------------------------------------------


def cmd_db_migrate(args: argparse.Namespace) -> int:
    # open_database already migrated; report the state.
    return _with_database(args, lambda _settings, pool: _print_status(pool))


def cmd_db_status(args: argparse.Namespace) -> int:
    return _with_database(args, lambda _settings, pool: _print_status(pool), run_migrations=False)


def cmd_db_backup(args: argparse.Namespace) -> int:
    from services.core.db import backup_database

    file = Path(args.file)
    tools = _with_dsn(args, "db backup", lambda dsn: backup_database(dsn, file))
    print(f"wrote {file} ({file.stat().st_size} bytes, {tools.pg_dump})")
    return 0


def cmd_db_restore(args: argparse.Namespace) -> int:
    from services.core.db import restore_database

    file = Path(args.file)
    tools = _with_dsn(args, "db restore", lambda dsn: restore_database(dsn, file, force=args.force))
    print(f"restored {file} ({tools.pg_restore}); 'pbxfront db status' shows its schema")
    return 0


async def _print_status(pool: asyncpg.Pool) -> int:
    from services.core.db import migration_status

    async with pool.acquire() as connection:
        rows = await migration_status(connection)
    pending = 0
    for row in rows:
        state = f"applied {row.applied_at}" if row.applied_at else "pending"
        pending += row.applied_at is None
        print(f"{row.version:03d}_{row.name}: {state}")
    return 0 if not pending else 1


# --- init ------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from services.core.install import init

    report = init(Path(args.config_dir), Path(args.data_dir))
    for path in report.written:
        print(f"wrote {path}")
    for path in report.kept:
        print(f"kept  {path} (exists)")
    print(
        f"next: edit {Path(args.config_dir) / 'pbxfront.toml'}, install "
        f"{Path(args.config_dir) / 'pbxfront.service'} as /etc/systemd/system/pbxfront.service"
    )
    return 0


# --- parser ----------------------------------------------------------------------------------

# Help for arguments that several service CLIs share (by destination name), so every argument of
# every command has one without each service module repeating these lines. A command's own help
# text always wins; "_ARGUMENT_HELP_BY_COMMAND" ("<command path> <dest>") wins over the plain one.
_ARGUMENT_HELP = {
    "json": "print JSON instead of text",
    "customer": "only this customer (its id in the inventory, e.g. Kuenkel00001)",
    "mac": "the device's MAC address (009033010203; dashes or colons are fine)",
    "limit": "at most this many rows (default %(default)s)",
    "dry_run": "only show what would change; change nothing",
    "password_file": "read the password from this file (else $PBXFRONT_ACCOUNT_PASSWORD or a "
    "prompt)",
    "provider": "the redirect provider id (default %(default)s)",
    "frontend": "only devices handed to this Frontend id",
    "key_type": "key algorithm: %(choices)s (default %(default)s)",
    "file": "the file to read",
}
_ARGUMENT_HELP_BY_COMMAND = {
    "pbxfront inventory apply file": "the inventory TOML file (format: "
    "config/inventory.example.toml)",
    "pbxfront accounts add name": "the account name (letters, digits, _ . @ -)",
    "pbxfront accounts passwd name": "the account whose password to change",
    "pbxfront accounts remove name": "the account to delete",
    "pbxfront scripts render device": "the device: MAC address or hardware id",
    "pbxfront scripts render phase": "which command file to render: %(choices)s "
    "(default %(default)s)",
    "pbxfront devices adopt customer": "the customer the device is added to",
    "pbxfront devices adopt device_class": "device class: %(choices)s (default %(default)s)",
    "pbxfront devices adopt cpe_id": "the seed's CPE id for the device (default: none)",
    "pbxfront devices adopt name": "a display name for the device",
    "pbxfront firmware add file": "the firmware image (e.g. ip232.bin)",
    "pbxfront redirect providers add id": "the provider id (letters, digits, _ . -)",
    "pbxfront redirect providers add name": "the provider's display name",
    "pbxfront redirect keys add provider": "the provider the API key belongs to",
    "pbxfront redirect keys add description": "what the key is for (shown in 'keys list')",
    "pbxfront redirect keys list provider": "only this provider's keys",
    "pbxfront redirect keys revoke key_id": "the key id as 'keys list' shows it",
    "pbxfront redirect list provider": "only devices of this provider",
    "pbxfront backups versions limit": "at most this many versions (default %(default)s)",
    "pbxfront backups alerts limit": "at most this many alerts (default %(default)s)",
    "pbxfront events tail lines": "show this many recent events first (default %(default)s)",
    "pbxfront events show id": "the event id (as 'events list' shows it)",
    "pbxfront ca issue frontend fqdn": "the Frontend's DNS name, the certificate's CN",
    "pbxfront ca revoke serial": "the certificate serial (hex, as 'ca list' shows it)",
    "pbxfront ca revoke reason": "the CRL reason: %(choices)s (default %(default)s)",
    "pbxfront ca export-trust format": "encoding: %(choices)s (default %(default)s)",
    "pbxfront contacts show customer": "the customer id",
    "pbxfront contacts history customer": "the customer id",
    "pbxfront contacts rollback customer": "the customer id",
    "pbxfront contacts ldif customer": "the customer id",
    "pbxfront directory search customer": "search this customer's directory (customer id)",
    "pbxfront directory search limit": "at most this many entries (default %(default)s)",
    "pbxfront bench scenario": "what to measure: %(choices)s",
}


def _fill_missing_help(parser: argparse.ArgumentParser, path: str) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                _fill_missing_help(sub, f"{path} {name}")
            continue
        if action.help is None:
            action.help = _ARGUMENT_HELP_BY_COMMAND.get(
                f"{path} {action.dest}", _ARGUMENT_HELP.get(action.dest)
            )


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise LookupError(parser.prog)  # pragma: no cover - a wiring mistake


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        action="append",
        metavar="FILE",
        help="settings file (TOML), repeatable, later files win; default: $PBXFRONT_CONFIG",
    )
    common.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set database.pool_max_size=20",
    )
    parser = argparse.ArgumentParser(
        prog="pbxfront",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"pbxfront {_version()}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser(
        "init",
        help="write a starter configuration and state directory (never overwrites a file)",
    )
    init.add_argument(
        "--config-dir",
        default="/etc/pbxfront",
        metavar="DIR",
        help="settings, examples, alert rules, systemd unit (default %(default)s)",
    )
    init.add_argument(
        "--data-dir",
        default="/var/lib/pbxfront",
        metavar="DIR",
        help="scripts, firmware store, embedded PostgreSQL (default %(default)s)",
    )
    init.set_defaults(handler=cmd_init)

    serve = commands.add_parser("serve", parents=[common], help="run the listeners")
    serve.add_argument(
        "--only", metavar="SERVICES", help="comma-separated subset, e.g. update,backup"
    )
    serve.add_argument(
        "--workers", type=int, metavar="N", help="worker processes (0 = one per core)"
    )
    serve.add_argument(
        "--ready-file", metavar="FILE", help="write the listeners' URLs here (JSON) when ready"
    )
    serve.set_defaults(handler=cmd_serve)

    database = commands.add_parser("db", help="database schema, backup and restore").add_subparsers(
        dest="action", required=True
    )
    migrate = database.add_parser("migrate", parents=[common], help="apply pending migrations")
    migrate.set_defaults(handler=cmd_db_migrate)
    status = database.add_parser(
        "status", parents=[common], help="list migrations (exit 1 if any pending)"
    )
    status.set_defaults(handler=cmd_db_status)
    backup = database.add_parser(
        "backup",
        parents=[common],
        help="write the whole database to FILE (pg_dump custom format; serve may keep running)",
    )
    backup.add_argument(
        "file", metavar="FILE", help="the backup file to write (replaced if it exists)"
    )
    backup.set_defaults(handler=cmd_db_backup)
    restore = database.add_parser(
        "restore",
        parents=[common],
        help="replace the database with a 'db backup' file (all or nothing; stop serve first)",
    )
    restore.add_argument("file", metavar="FILE", help="a file written by 'pbxfront db backup'")
    restore.add_argument(
        "--force",
        action="store_true",
        help="restore even while other sessions (a running serve) use the database",
    )
    restore.set_defaults(handler=cmd_db_restore)

    from services.core import accounts_cli
    from services.core.inventory import cli as inventory_cli

    inventory_cli.register(commands, common, _bind)
    accounts_cli.register(commands, common, _bind)

    from services.frontend import cli as frontend_cli
    from services.update import cli as update_cli

    # `scripts check` also names the Frontend plan's violations (composed here: the update
    # package does not import the frontend package).
    update_cli.register(commands, common, _bind, extra_checks=[frontend_cli.plan_problems])
    frontend_cli.register(commands, common, _bind)
    # One-step onboarding and RMA compose the inventory and the redirect service
    # (services/onboard.py), under the update service's "devices" group.
    from services import onboard

    onboard.register(_subcommands(commands.choices["devices"]), common, _bind)

    from services.redirect import cli as redirect_cli

    redirect_cli.register(commands, common, _bind)

    from services.backup import cli as backup_cli

    backup_cli.register(commands, common, _bind)

    from services.events import cli as events_cli

    events_cli.register(commands, common, _bind)

    from services.ca import cli as ca_cli

    ca_cli.register(commands, common, _bind)

    from services.contacts import cli as contacts_cli

    contacts_cli.register(commands, common, _bind)

    from services.directory import cli as directory_cli

    directory_cli.register(commands, common, _bind)

    from services.bench import cli as bench_cli

    bench_cli.register(commands, common, _settings)
    _fill_missing_help(parser, "pbxfront")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("pgserver").setLevel(logging.ERROR)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (ConfigError, DatabaseConfigError, UsageError, TlsConfigError, PkiError) as error:
        print(f"pbxfront: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
