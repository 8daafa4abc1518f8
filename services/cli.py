"""``pbxfront`` command line. Every command takes ``--config FILE`` (repeatable) or, without it,
``PBXFRONT_CONFIG`` (colon-separated), plus ``--set key.path=value`` overrides, and works on the
same database as ``serve`` with that config (the embedded PostgreSQL is shared).

Secrets are never read from argv: passwords come from a prompt, a file or an environment variable.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

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
    args: argparse.Namespace, work: Callable[[Settings, asyncpg.Pool], Awaitable[int]]
) -> int:
    settings = _settings(args)

    async def run() -> int:
        async with open_database(settings) as pool:
            return await work(settings, pool)

    return asyncio.run(run())


def _bind(work: Work) -> Handler:
    """A service's ``work(args, settings, pool)`` as an argparse handler (see core.commands)."""

    def handler(args: argparse.Namespace) -> int:
        async def run(settings: Settings, pool: asyncpg.Pool) -> int:
            try:
                return await work(args, settings, pool)
            except DomainError as error:
                raise UsageError(str(error)) from None

        return _with_database(args, run)

    return handler


def _read_secret(prompt: str, *, file: str | None, env: str) -> str:
    if file:
        try:
            return Path(file).read_text("utf-8").rstrip("\r\n")
        except OSError as error:
            raise UsageError(f"{file}: {error.strerror}") from None
    value = os.environ.get(env)
    if value:
        return value
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise UsageError(f"no password: give --password-file, set {env}, or type it")
        return line.rstrip("\r\n")
    first = getpass.getpass(prompt)
    if getpass.getpass("again: ") != first:
        raise UsageError("the two passwords differ")
    return first


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
    async def work(_settings: Settings, pool: asyncpg.Pool) -> int:
        # open_database already migrated; report the state.
        return await _print_status(pool)

    return _with_database(args, work)


def cmd_db_status(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def run() -> int:
        async with open_database(settings, run_migrations=False) as pool:
            return await _print_status(pool)

    return asyncio.run(run())


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


# --- accounts --------------------------------------------------------------------------------


async def _audit_account(
    connection: asyncpg.Connection,
    action: str,
    name: str,
    *,
    before: list[str] | None = None,
    after: list[str] | None = None,
) -> None:
    from services.core import audit

    await audit.record(
        connection,
        actor=audit.cli_actor(),
        action=action,
        object_type="account",
        object_id=name,
        before=None if before is None else {"roles": before},
        after={"roles": after, "password": "(set)"} if after is not None else None,
    )


def cmd_accounts_add(args: argparse.Namespace) -> int:
    from services.core.auth import AccountError, AccountRepository, parse_roles

    try:
        roles = parse_roles(args.role)
    except AccountError as error:
        raise UsageError(str(error)) from None
    password = _read_secret(
        f"password for {args.name}: ", file=args.password_file, env="PBXFRONT_ACCOUNT_PASSWORD"
    )

    async def work(_settings: Settings, pool: asyncpg.Pool) -> int:
        try:
            async with pool.acquire() as connection, connection.transaction():
                await AccountRepository(connection).add(args.name, roles, password)
                await _audit_account(connection, "account.add", args.name, after=sorted(roles))
        except AccountError as error:
            raise UsageError(str(error)) from None
        print(f"account {args.name} added with roles {', '.join(sorted(roles))}")
        return 0

    return _with_database(args, work)


def cmd_accounts_passwd(args: argparse.Namespace) -> int:
    from services.core.auth import AccountError, AccountRepository

    password = _read_secret(
        f"new password for {args.name}: ", file=args.password_file, env="PBXFRONT_ACCOUNT_PASSWORD"
    )

    async def work(_settings: Settings, pool: asyncpg.Pool) -> int:
        try:
            async with pool.acquire() as connection, connection.transaction():
                changed = await AccountRepository(connection).set_password(args.name, password)
                if changed:
                    await _audit_account(connection, "account.password", args.name)
        except AccountError as error:
            raise UsageError(str(error)) from None
        if not changed:
            raise UsageError(f"no account {args.name}")
        print(f"password of {args.name} changed; its API tokens were revoked")
        return 0

    return _with_database(args, work)


def cmd_accounts_remove(args: argparse.Namespace) -> int:
    from services.core.auth import AccountRepository

    async def work(_settings: Settings, pool: asyncpg.Pool) -> int:
        async with pool.acquire() as connection, connection.transaction():
            account = await AccountRepository(connection).get(args.name)
            removed = await AccountRepository(connection).remove(args.name)
            if removed and account is not None:
                await _audit_account(
                    connection, "account.remove", args.name, before=sorted(account.roles)
                )
        if not removed:
            raise UsageError(f"no account {args.name}")
        print(f"account {args.name} removed")
        return 0

    return _with_database(args, work)


def cmd_accounts_list(args: argparse.Namespace) -> int:
    from services.core.auth import AccountRepository

    async def work(_settings: Settings, pool: asyncpg.Pool) -> int:
        accounts = await AccountRepository(pool).list()
        if args.json:
            print(
                json.dumps([{"name": a.name, "roles": sorted(a.roles)} for a in accounts], indent=2)
            )
        else:
            for account in accounts:
                print(f"{account.name}\t{','.join(sorted(account.roles))}")
        return 0

    return _with_database(args, work)


# --- parser ----------------------------------------------------------------------------------


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
        prog="pbxfront", description=__doc__.split("\n")[0] if __doc__ else None
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    database = commands.add_parser("db", help="database schema").add_subparsers(
        dest="action", required=True
    )
    migrate = database.add_parser("migrate", parents=[common], help="apply pending migrations")
    migrate.set_defaults(handler=cmd_db_migrate)
    status = database.add_parser(
        "status", parents=[common], help="list migrations (exit 1 if any pending)"
    )
    status.set_defaults(handler=cmd_db_status)

    from services.core import inventory_cli

    inventory_cli.register(commands, common, _bind)

    accounts = commands.add_parser(
        "accounts", help="operator, reader, sender and provider accounts"
    )
    account_actions = accounts.add_subparsers(dest="action", required=True)
    add = account_actions.add_parser("add", parents=[common], help="create an account")
    add.add_argument("name")
    add.add_argument(
        "--role",
        action="append",
        required=True,
        help="admin, operator, directory-reader, event-sender, provider (repeatable)",
    )
    add.add_argument(
        "--password-file", metavar="FILE", help="else $PBXFRONT_ACCOUNT_PASSWORD or a prompt"
    )
    add.set_defaults(handler=cmd_accounts_add)
    passwd = account_actions.add_parser("passwd", parents=[common], help="set a new password")
    passwd.add_argument("name")
    passwd.add_argument("--password-file", metavar="FILE")
    passwd.set_defaults(handler=cmd_accounts_passwd)
    remove = account_actions.add_parser("remove", parents=[common], help="delete an account")
    remove.add_argument("name")
    remove.set_defaults(handler=cmd_accounts_remove)
    listing = account_actions.add_parser("list", parents=[common], help="list accounts and roles")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_accounts_list)

    from services.frontend import cli as frontend_cli
    from services.update import cli as update_cli

    # `scripts check` also names the Frontend plan's violations (composed here: the update
    # package does not import the frontend package).
    update_cli.register(commands, common, _bind, extra_checks=[frontend_cli.plan_problems])
    frontend_cli.register(commands, common, _bind)

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
