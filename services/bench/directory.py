"""``pbxfront bench directory``: PBXs and phones search a large directory over LDAP."""

from __future__ import annotations

import dataclasses
import random
import secrets
import time
from typing import Any

import asyncpg

from services.bench import ldap, seed
from services.bench.environment import BenchOptions, environment, listener
from services.bench.ldap import run_ldap_load
from services.bench.measure import Row, fixed_rate, measure


def scenario_directory(options: BenchOptions, log: Any) -> list[Row]:
    """PBXs and phones search the directory while it holds ``options.directory_customers`` x
    ``options.contacts`` contacts: reverse lookups in the national form (as a PBX presents a
    caller), name searches with the phone template's filter, and lookups of unknown numbers;
    goal p99 <= 20 ms at a fixed rate."""
    customers = options.directory_customers
    contacts = options.contacts
    password = secrets.token_urlsafe(12)
    plain = listener("directory", ["directory"])

    async def prepare(connection: asyncpg.Connection) -> None:
        await seed.directory_contacts(connection, customers, contacts, password)

    log(f"directory: loading {customers:,} customers x {contacts:,} contacts ...")
    chooser = random.Random(3)  # noqa: S311 - which numbers and names are asked for
    searches: list[ldap.Search] = []
    attributes = ("sn", "givenName", "company", "telephoneNumber", "mobile")
    for _ in range(20_000):
        c = chooser.randrange(customers)
        customer = seed.directory_customer(c)
        base = f"dc={customer}"
        kind = chooser.random()
        if kind < 0.6:
            national = "0" + seed.directory_number(c, chooser.randrange(contacts))[3:]
            search_filter = ldap.any_of(
                ldap.equality("telephoneNumber", national), ldap.equality("mobile", national)
            )
        elif kind < 0.9:
            name = seed.SURNAMES[chooser.randrange(len(seed.SURNAMES))][:3]
            search_filter = ldap.any_of(*(ldap.prefix(a, name) for a in ("sn", "givenName", "o")))
        else:
            search_filter = ldap.equality("telephoneNumber", f"0899{chooser.randrange(10**6)}")
        searches.append(
            ldap.Search(customer, password, ldap.search_request(base, search_filter, attributes))
        )
    rows: list[Row] = []
    with environment(options, log, listeners=plain, prepare=prepare) as env:
        target = env.target("directory")
        # Every worker builds every directory after start (directory.preload), in the
        # background: wait until three probes in a row over all customers are fast, so the build
        # is not what is measured.
        warm = ldap.LdapLoad(
            target.host, target.port, searches[:2000], duration=2.0, concurrency=8, rate=200.0
        )
        started = time.monotonic()
        deadline = started + 30 + customers * contacts / 2000
        settled = 0
        while settled < 3 and time.monotonic() < deadline:
            probe = run_ldap_load(warm)
            fast = probe.errors == 0 and probe.requests and probe.percentile(0.99) < 20
            settled = settled + 1 if fast else 0
        waited = time.monotonic() - started
        log(
            f"directories built in every worker ({waited:.0f} s)"
            if settled == 3
            else f"searches still slow after {waited:.0f} s of warming up; measuring anyway"
        )
        load = ldap.LdapLoad(
            target.host,
            target.port,
            searches,
            duration=options.duration,
            processes=options.process_count,
            concurrency=options.concurrency,
            rate=options.rate,
        )
        log(f"directory searches at a fixed {options.rate:,.0f}/s and flat out:")
        fixed = measure(env, f"directory search at {options.rate:,.0f}/s", "pbxfront", load, log)
        rows.append(fixed_rate(fixed, options.rate, 20.0))
        rows.append(
            measure(
                env,
                "directory search, flat out",
                "pbxfront",
                dataclasses.replace(load, rate=None),
                log,
            )
        )
    return rows
