"""``pbxfront accounts``: operator, reader, sender and provider accounts (argon2 passwords,
roles, an event sender's customer bindings), each change in the audit trail. Passwords are read
before the database is opened: from ``--password-file``, ``$PBXFRONT_ACCOUNT_PASSWORD``, standard
input or a prompt, never from argv."""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

import asyncpg

from services.core.commands import Bind
from services.core.config import Settings
from services.core.errors import UsageError


def read_secret(prompt: str, *, file: str | None, env: str) -> str:
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


def _add_account(args: argparse.Namespace, bind: Bind) -> int:
    from services.core.auth import AccountError, AccountRepository, parse_roles

    try:
        roles = parse_roles(args.role)
    except AccountError as error:
        raise UsageError(str(error)) from None
    password = read_secret(
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

    return bind(lambda _args, settings, pool: work(settings, pool))(args)


def _set_password(args: argparse.Namespace, bind: Bind) -> int:
    from services.core.auth import AccountError, AccountRepository

    password = read_secret(
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

    return bind(lambda _args, settings, pool: work(settings, pool))(args)


def _remove_account(args: argparse.Namespace, bind: Bind) -> int:
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

    return bind(lambda _args, settings, pool: work(settings, pool))(args)


def _bind_customers(args: argparse.Namespace, bind: Bind) -> int:
    from services.core import errors
    from services.core.senderscope import SenderScopeRepository

    if bool(args.all) == bool(args.customer):
        raise UsageError("accounts bind: give --customer C (repeatable) or --all")

    async def work(_settings: Settings, pool: asyncpg.Pool) -> int:
        scopes = SenderScopeRepository(pool)
        try:
            await scopes.bind(args.name, None if args.all else list(args.customer))
        except errors.NotFound as error:
            raise UsageError(str(error)) from None
        scope = await scopes.scope(args.name)
        print(f"account {args.name} may write events and backups for: {scope.describe()}")
        return 0

    return bind(lambda _args, settings, pool: work(settings, pool))(args)


def _unbind_customers(args: argparse.Namespace, bind: Bind) -> int:
    from services.core.senderscope import SenderScopeRepository

    async def work(_settings: Settings, pool: asyncpg.Pool) -> int:
        scopes = SenderScopeRepository(pool)
        removed = await scopes.unbind(args.name, list(args.customer) if args.customer else None)
        scope = await scopes.scope(args.name)
        print(f"removed {removed} binding(s); account {args.name}: {scope.describe()}")
        return 0

    return bind(lambda _args, settings, pool: work(settings, pool))(args)


def _list_accounts(args: argparse.Namespace, bind: Bind) -> int:
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

    return bind(lambda _args, settings, pool: work(settings, pool))(args)


def register(commands: Any, common: argparse.ArgumentParser, bind: Bind) -> None:
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
    add.set_defaults(handler=functools.partial(_add_account, bind=bind))
    passwd = account_actions.add_parser("passwd", parents=[common], help="set a new password")
    passwd.add_argument("name")
    passwd.add_argument("--password-file", metavar="FILE")
    passwd.set_defaults(handler=functools.partial(_set_password, bind=bind))
    remove = account_actions.add_parser("remove", parents=[common], help="delete an account")
    remove.add_argument("name")
    remove.set_defaults(handler=functools.partial(_remove_account, bind=bind))
    binding = account_actions.add_parser(
        "bind",
        parents=[common],
        help="let an event-sender account write events and backups for these customers' devices",
    )
    binding.add_argument("name", help="the event-sender account")
    binding.add_argument(
        "--customer",
        action="append",
        metavar="ID",
        help="a customer id from the inventory (repeatable; added to the present bindings)",
    )
    binding.add_argument("--all", action="store_true", help="every customer, present and future")
    binding.set_defaults(handler=functools.partial(_bind_customers, bind=bind))
    unbind = account_actions.add_parser(
        "unbind", parents=[common], help="remove an event-sender account's customer bindings"
    )
    unbind.add_argument("name", help="the event-sender account")
    unbind.add_argument(
        "--customer", action="append", metavar="ID", help="only this customer (repeatable)"
    )
    unbind.set_defaults(handler=functools.partial(_unbind_customers, bind=bind))
    listing = account_actions.add_parser("list", parents=[common], help="list accounts and roles")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=functools.partial(_list_accounts, bind=bind))
