"""The directory service against real clients: OpenLDAP's ldapsearch/ldapwhoami and ldap3, over
LDAP and LDAPS (session certificates), on the real listener started by the runner, with the
contacts in a real PostgreSQL (inserted with SQL as the contacts service commits them)."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import dataclasses
import logging
import os
import warnings
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from pyasn1.codec.ber import decoder  # type: ignore[import-untyped]

from services.core.auth import AccountRepository, Role
from services.core.config import (
    ConfigError,
    DirectorySettings,
    LimitSettings,
    ListenerSettings,
    Settings,
    load_settings,
)
from services.core.inventory import apply_inventory, parse_inventory
from services.core.numbering import NumberingPlan
from services.core.resources import Resources
from services.core.runner import Node, ServiceFactories, start_node
from services.directory import ber, protocol
from services.directory import cli as directory_cli
from services.directory.app import create_service
from services.directory.backend import bind_target
from services.directory.dn import escape, parse
from services.directory.filters import (
    And,
    Equality,
    FilterSyntaxError,
    GreaterOrEqual,
    Not,
    Or,
    Present,
    Substrings,
    matches,
    parse_filter,
)
from services.directory.index import Contact, CustomerDirectory, CustomerRecord, ascii_fold
from services.directory.numbers import display, normalize_query, variants
from services.directory.server import DirectoryServer
from tests.conftest import SessionPki, peer_program, run_wired_cli, start_services, until

# ldap3 2.9 imports names pyasn1 0.6 deprecated (tagMap, typeMap); the suite turns warnings into
# errors, and this one is ldap3's to fix.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import ldap3  # type: ignore[import-untyped]
    from ldap3.protocol.rfc4511 import LDAPMessage  # type: ignore[import-untyped]

KUENKEL = "Kuenkel00001"
KUENKEL_PASSWORD = "kuenkel-registration"
OTHER = "Other00002"
OTHER_PASSWORD = "other-registration"
GIGA = "Giga00003"
GIGA_PASSWORD = "giga-registration"
READER_PASSWORD = "reader-password-long"

INVENTORY = f"""
[[frontends]]
id = "sb1"
public_address = "192.0.2.10"
internal_address = "10.0.0.10"
index = 1

[[customers]]
id = "{KUENKEL}"
frontend = "sb1"
name = "Kuenkel GmbH"
system_name = "kuenkel.example"
country_code = "49"
area_code = "7031"
registration_password = "{KUENKEL_PASSWORD}"

[[customers]]
id = "{OTHER}"
frontend = "sb1"
name = "Other AG"
system_name = "other.example"
country_code = "49"
area_code = "89"
registration_password = "{OTHER_PASSWORD}"

[[customers]]
id = "{GIGA}"
frontend = "sb1"
name = "Giga KG"
system_name = "giga.example"
country_code = "49"
area_code = "30"
registration_password = "{GIGA_PASSWORD}"

[customers.variables]
directory-quirks = "gigaset,ascii"
directory-number-format = "national"
"""

# (surname, given name, company, business E.164, mobile E.164)
KUENKEL_CONTACTS = [
    ("Müller", "Jürgen", "Kuenkel GmbH", "+497031730090", "+491701234567"),
    ("Mueller", "Anna", "", "+4989123456", None),
    ("Schmidt", "Karl", "Müllerei Schmidt", "+43125252525", None),
    ("Weiß", "Eva", "", "123", None),
]
OTHER_CONTACTS = [
    ("Geheim", "Gustav", "Other AG", "+4989555000", None),
]
GIGA_CONTACTS = [
    ("Bäcker", "Jörg", "", "+4930123456", None),
]


async def put_contacts(
    pool: asyncpg.Pool,
    customer: str,
    contacts: Sequence[tuple[str, str, str, str | None, str | None]],
) -> int:
    """A new current version, committed and announced as the contacts service does it."""
    async with pool.acquire() as connection, connection.transaction():
        version: int = await connection.fetchval(
            "SELECT coalesce(max(version), 0) + 1 FROM contact_versions WHERE customer = $1",
            customer,
        )
        await connection.execute(
            """INSERT INTO contact_versions (customer, version, uploaded_by, source_sha256,
                   source_encoding, accepted, rejected)
               VALUES ($1, $2, $1, $3, 'utf-8', $4, 0)""",
            customer,
            version,
            bytes(32),
            len(contacts),
        )
        for line, (surname, given, company, business, mobile) in enumerate(contacts, start=2):
            await connection.execute(
                """INSERT INTO contact_entries (customer, version, line, surname, given_name,
                       company, business_phone, business_e164, mobile_phone, mobile_e164)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
                customer,
                version,
                line,
                surname,
                given,
                company,
                business or "",
                business,
                mobile or "",
                mobile,
            )
        await make_current(connection, customer, version)
    return version


async def make_current(connection: asyncpg.Connection, customer: str, version: int) -> None:
    await connection.execute(
        """INSERT INTO contact_current (customer, version) VALUES ($1, $2)
           ON CONFLICT (customer) DO UPDATE SET version = $2, changed_at = now()""",
        customer,
        version,
    )
    await connection.execute("SELECT pg_notify('pbxfront_contacts', $1)", customer)


@dataclasses.dataclass
class Site:
    node: Node
    pool: asyncpg.Pool
    pki: SessionPki

    @property
    def server(self) -> DirectoryServer:
        service = self.node.streams["directory"]
        assert isinstance(service, DirectoryServer)
        return service

    @property
    def plain(self) -> str:
        return self.node.addresses["plain"]

    @property
    def secure(self) -> str:
        return self.node.addresses["secure"]

    def port(self, name: str = "plain") -> int:
        return int(self.node.addresses[name].rsplit(":", 1)[1])


def directory_listeners(
    pki: SessionPki, handshake_timeout: float = 10.0
) -> dict[str, ListenerSettings]:
    return {
        "plain": ListenerSettings(port=0, services=("directory",), tls=False),
        "secure": ListenerSettings(
            port=0,
            services=("directory",),
            tls=True,
            certificate=pki.server_certificate,
            key=pki.server_key,
            handshake_timeout=handshake_timeout,
        ),
    }


@pytest.fixture
async def start_site(pool: asyncpg.Pool, session_pki: SessionPki) -> AsyncIterator[Any]:
    async with pool.acquire() as connection:
        await apply_inventory(connection, parse_inventory(INVENTORY, "test inventory"))
    await put_contacts(pool, KUENKEL, KUENKEL_CONTACTS)
    await put_contacts(pool, OTHER, OTHER_CONTACTS)
    await put_contacts(pool, GIGA, GIGA_CONTACTS)
    await AccountRepository(pool).add("reader", frozenset({Role.DIRECTORY_READER}), READER_PASSWORD)
    await AccountRepository(pool).add("operator", frozenset({Role.OPERATOR}), READER_PASSWORD)
    nodes: list[Node] = []

    async def start(
        handshake_timeout: float = 10.0, limits: LimitSettings | None = None, **directory: Any
    ) -> Site:
        settings = Settings(
            directory=DirectorySettings(**directory), limits=limits or LimitSettings()
        )
        listeners = directory_listeners(session_pki, handshake_timeout)
        node = await start_services(settings, pool, listeners)
        nodes.append(node)
        site = Site(node, pool, session_pki)
        await until(lambda: site.server.cache.live)
        return site

    yield start
    for node in nodes:
        await node.stop()


@pytest.fixture
async def site(start_site: Any) -> Site:
    started: Site = await start_site()
    return started


# --- OpenLDAP's clients ------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    def values(self, attribute: str) -> list[str]:
        """LDIF values of ``attribute`` (``name:: base64`` for non-ASCII ones)."""
        found = []
        for line in self.stdout.splitlines():
            name, _, value = line.partition(":")
            if name.lower() != attribute.lower():
                continue
            if value.startswith(":"):
                found.append(base64.b64decode(value[1:].strip()).decode("utf-8"))
            else:
                found.append(value.strip())
        return found

    @property
    def dns(self) -> list[str]:
        return self.values("dn")


async def run(program: str, *arguments: str, env: dict[str, str] | None = None) -> Outcome:
    process = await asyncio.create_subprocess_exec(
        program,
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # No system ldap.conf (its TLS or base settings would change the outcome).
        env={**os.environ, "LDAPCONF": "/dev/null", "LDAPTLS_REQCERT": "demand", **(env or {})},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode is not None
    return Outcome(process.returncode, stdout.decode(), stderr.decode())


async def ldapsearch(
    url: str,
    bind: str | None,
    password: str | None,
    base: str,
    search_filter: str,
    *attributes: str,
    options: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Outcome:
    program = peer_program("ldapsearch", "ldap-utils")
    arguments = ["-H", url, "-x", "-LLL", "-o", "ldif-wrap=no", *options, "-b", base]
    if bind is not None:
        arguments += ["-D", bind, "-w", password or ""]
    return await run(program, *arguments, search_filter, *attributes, env=env)


async def test_phone_name_search_with_ldapsearch(site: Site) -> None:
    """The seed's phone template: attr='sn,givenName,company', prefix search on all three."""
    outcome = await ldapsearch(
        site.plain,
        KUENKEL,
        KUENKEL_PASSWORD,
        f"dc={KUENKEL}",
        "(|(sn=Mül*)(givenName=Mül*)(o=Mül*))",
        "sn",
        "givenName",
        "company",
        "telephoneNumber",
        "mobile",
    )
    assert outcome.code == 0, outcome.stderr
    # Müller by surname, Schmidt by company "Müllerei"; not Mueller (no folding by default).
    assert sorted(outcome.values("sn")) == ["Müller", "Schmidt"]
    assert "Müllerei Schmidt" in outcome.values("company")
    assert "+497031730090" in outcome.values("telephoneNumber")
    assert "+491701234567" in outcome.values("mobile")
    # Case-insensitive with umlauts: casefold, not ASCII lower().
    upper = await ldapsearch(
        site.plain, KUENKEL, KUENKEL_PASSWORD, f"dc={KUENKEL}", "(cn=JÜRG*)", "cn"
    )
    assert upper.values("cn") == ["Jürgen Müller"]


@pytest.mark.parametrize(
    "bind",
    [KUENKEL, f"dc={KUENKEL}", f"cn={KUENKEL},dc={KUENKEL}", "kuenkel00001"],
)
async def test_bind_name_forms(site: Site, bind: str) -> None:
    whoami = await run(
        peer_program("ldapwhoami", "ldap-utils"), "-H", site.plain, "-x", "-D", bind,
        "-w", KUENKEL_PASSWORD,
    )  # fmt: skip
    assert whoami.code == 0, whoami.stderr
    assert whoami.stdout.strip() == f"dn:dc={KUENKEL}"


async def test_reverse_lookup_in_every_number_form(site: Site) -> None:
    forms = [
        "+497031730090",
        "00497031730090",
        "07031730090",
        "730090",
        "497031730090",
        "07031 730090",
        "+49 7031/730-090",
        "+49 \\287031\\29 730-090",  # "(7031)", parentheses escaped as RFC 4515 wants
    ]
    for form in forms:
        outcome = await ldapsearch(
            site.plain,
            KUENKEL,
            KUENKEL_PASSWORD,
            f"dc={KUENKEL}",
            f"(telephoneNumber={form})",
            "cn",
            "telephoneNumber",
        )
        assert outcome.code == 0, (form, outcome.stderr)
        assert outcome.values("cn") == ["Jürgen Müller"], form
        assert outcome.values("telephoneNumber") == ["+497031730090"]
    # The PBX's reverse lookup: one filter over every number attribute of the template.
    mobile = await ldapsearch(
        site.plain,
        KUENKEL,
        KUENKEL_PASSWORD,
        f"dc={KUENKEL}",
        "(|(telephoneNumber=01701234567)(mobile=01701234567))",
        "cn",
    )
    assert mobile.values("cn") == ["Jürgen Müller"]
    # Another area code: no local form, national works; a foreign number by its 00 form.
    munich = await ldapsearch(
        site.plain, KUENKEL, KUENKEL_PASSWORD, f"dc={KUENKEL}", "(telephoneNumber=089123456)", "sn"
    )
    assert munich.values("sn") == ["Mueller"]
    nothing = await ldapsearch(
        site.plain, KUENKEL, KUENKEL_PASSWORD, f"dc={KUENKEL}", "(telephoneNumber=123456)", "sn"
    )
    assert nothing.code == 0
    assert nothing.dns == []
    vienna = await ldapsearch(
        site.plain,
        KUENKEL,
        KUENKEL_PASSWORD,
        f"dc={KUENKEL}",
        "(telephoneNumber=0043125252525)",
        "sn",
    )
    assert vienna.values("sn") == ["Schmidt"]
    internal = await ldapsearch(
        site.plain, KUENKEL, KUENKEL_PASSWORD, f"dc={KUENKEL}", "(telephoneNumber=123)", "sn"
    )
    assert internal.values("sn") == ["Weiß"]
    # Substring on numbers, separators ignored.
    suffix = await ldapsearch(
        site.plain, KUENKEL, KUENKEL_PASSWORD, f"dc={KUENKEL}", "(telephoneNumber=*730 090)", "sn"
    )
    assert suffix.values("sn") == ["Müller"]


async def test_customers_see_only_their_own_subtree(site: Site) -> None:
    mine = await ldapsearch(
        site.plain, OTHER, OTHER_PASSWORD, f"dc={OTHER}", "(objectClass=person)", "sn"
    )
    assert mine.values("sn") == ["Geheim"]
    # Another customer's base: the same answer as a base that does not exist.
    theirs = await ldapsearch(
        site.plain, OTHER, OTHER_PASSWORD, f"dc={KUENKEL}", "(telephoneNumber=07031730090)"
    )
    missing = await ldapsearch(site.plain, OTHER, OTHER_PASSWORD, "dc=Nobody", "(objectClass=*)")
    assert theirs.code == missing.code == 32  # noSuchObject
    assert "Müller" not in theirs.stdout
    entry = await ldapsearch(
        site.plain, OTHER, OTHER_PASSWORD, f"uid=2,dc={KUENKEL}", "(objectClass=*)", "-s", "base"
    )
    assert entry.code == 32
    # The root and a subtree search from it: only the own naming context.
    root = await ldapsearch(
        site.plain, OTHER, OTHER_PASSWORD, "", "(objectClass=*)", "namingContexts",
        options=["-s", "base"],
    )  # fmt: skip
    assert root.values("namingContexts") == [f"dc={OTHER}"]
    everything = await ldapsearch(site.plain, OTHER, OTHER_PASSWORD, "", "(objectClass=*)", "dn")
    assert everything.code == 0
    assert all(dn.endswith(f"dc={OTHER}") for dn in everything.dns)
    assert len(everything.dns) == 2  # dc=Other00002 and its one contact


async def test_bad_binds(site: Site) -> None:
    search = "(objectClass=*)"
    wrong = await ldapsearch(site.plain, KUENKEL, "wrong", f"dc={KUENKEL}", search)
    unknown = await ldapsearch(site.plain, "Nobody00009", "wrong", "dc=Nobody00009", search)
    assert wrong.code == unknown.code == 49  # invalidCredentials for both
    other_password = await ldapsearch(site.plain, KUENKEL, OTHER_PASSWORD, f"dc={KUENKEL}", search)
    assert other_password.code == 49
    mismatched = await ldapsearch(
        site.plain, f"cn={OTHER},dc={KUENKEL}", OTHER_PASSWORD, f"dc={KUENKEL}", search
    )
    assert mismatched.code == 49
    # ldapsearch binds anonymously without -D: refused with inappropriateAuthentication.
    anonymous = await ldapsearch(site.plain, None, None, f"dc={KUENKEL}", search)
    assert anonymous.code == 48
    assert "anonymous bind refused" in anonymous.stderr
    no_password = await ldapsearch(site.plain, KUENKEL, "", f"dc={KUENKEL}", search)
    assert no_password.code == 53  # unauthenticated bind: unwillingToPerform
    operator = await ldapsearch(
        site.plain, "uid=operator,ou=accounts", READER_PASSWORD, f"dc={KUENKEL}", search
    )
    assert operator.code == 49  # a real account, but without the directory-reader role


async def test_failed_binds_are_rate_limited_per_address(start_site: Any) -> None:
    site: Site = await start_site(bind_failure_burst=2, bind_failure_per_second=0.01)
    for _ in range(2):
        failed = await ldapsearch(site.plain, KUENKEL, "wrong", f"dc={KUENKEL}", "(cn=*)")
        assert failed.code == 49
    # Out of tokens: refused whether the password is right or wrong.
    right = await ldapsearch(site.plain, KUENKEL, KUENKEL_PASSWORD, f"dc={KUENKEL}", "(cn=*)")
    assert right.code == 53, right.stderr
    assert "too many failed binds" in right.stderr


async def test_failed_binds_are_limited_per_name_across_addresses(start_site: Any) -> None:
    """Guessing one customer's password from many addresses: after the name's burst, binds as
    it are refused from new addresses, while the address it binds from as usual keeps working."""
    limits = LimitSettings(auth_account_failure_burst=3, auth_account_failure_per_second=0.01)
    site: Site = await start_site(limits=limits, bind_failure_burst=100)

    async def bind(password: str, source: str) -> int:
        connection = connect(site, KUENKEL, password, source)
        await in_thread(connection.bind)
        code = int(connection.result["result"])
        await in_thread(connection.unbind)
        return code

    assert await bind(KUENKEL_PASSWORD, "127.0.0.1") == 0  # the customer's usual address
    for n in range(3):
        assert await bind("wrong", f"127.0.0.{10 + n}") == 49
    # The name's budget is spent: a new address is refused even with the right password ...
    assert await bind(KUENKEL_PASSWORD, "127.0.0.20") == 53
    # ... the usual address is not, and another customer is not affected.
    assert await bind(KUENKEL_PASSWORD, "127.0.0.1") == 0
    other = connect(site, OTHER, OTHER_PASSWORD, "127.0.0.20")
    assert await in_thread(other.bind), other.result
    await in_thread(other.unbind)


async def test_directory_reader_binds_wait_for_the_nodes_password_checks(
    start_site: Any,
) -> None:
    """argon2 checks of directory-reader binds share the node's bound (limits.hash_*): over it,
    a bind is answered busy at once instead of queueing without limit."""
    site: Site = await start_site(
        limits=LimitSettings(hash_concurrency=1, hash_queue=1), bind_failure_burst=1000
    )
    gate = site.server.hashing
    assert (gate.concurrency, gate.queue) == (1, 1)
    connections = [connect(site, "uid=reader,ou=accounts", f"wrong {n}") for n in range(12)]
    loop = asyncio.get_running_loop()
    # A thread per client, so all twelve binds arrive together (the default executor has few).
    with concurrent.futures.ThreadPoolExecutor(len(connections)) as threads:
        try:
            await asyncio.gather(*(loop.run_in_executor(threads, c.bind) for c in connections))
        finally:
            await asyncio.gather(*(loop.run_in_executor(threads, c.unbind) for c in connections))
    codes = sorted(int(c.result["result"]) for c in connections)
    assert set(codes) <= {49, 51}
    assert 51 in codes  # busy: the node's checks were all taken
    assert gate.peak == 1
    assert gate.refused == codes.count(51)


async def test_ldaps_with_the_session_certificate(site: Site) -> None:
    outcome = await ldapsearch(
        site.secure,
        KUENKEL,
        KUENKEL_PASSWORD,
        f"dc={KUENKEL}",
        "(sn=Müller)",
        "telephoneNumber",
        env={"LDAPTLS_CACERT": str(site.pki.ca)},
    )
    assert outcome.code == 0, outcome.stderr
    assert outcome.values("telephoneNumber") == ["+497031730090"]
    assert site.secure.startswith("ldaps://")
    # A client that does not trust the certificate fails the handshake.
    untrusted = await ldapsearch(
        site.secure,
        KUENKEL,
        KUENKEL_PASSWORD,
        f"dc={KUENKEL}",
        "(sn=Müller)",
        env={"LDAPTLS_CACERT": str(site.pki.foreign_device[0])},
    )
    assert untrusted.code != 0


async def test_new_contacts_and_rollbacks_are_visible_on_commit(site: Site) -> None:
    search = (f"dc={KUENKEL}", "(sn=Neumann)", "telephoneNumber")
    before = await ldapsearch(site.plain, KUENKEL, KUENKEL_PASSWORD, *search)
    assert before.dns == []
    first = 1
    second = await put_contacts(
        site.pool, KUENKEL, [*KUENKEL_CONTACTS, ("Neumann", "Nora", "", "+497031111222", None)]
    )
    after = await ldapsearch(site.plain, KUENKEL, KUENKEL_PASSWORD, *search)
    assert after.values("telephoneNumber") == ["+497031111222"]
    async with site.pool.acquire() as connection:
        await make_current(connection, KUENKEL, first)
    rolled_back = await ldapsearch(site.plain, KUENKEL, KUENKEL_PASSWORD, *search)
    assert rolled_back.dns == []
    assert second == 2


async def test_password_changes_apply_at_once(site: Site) -> None:
    outcome = await ldapsearch(site.plain, KUENKEL, KUENKEL_PASSWORD, f"dc={KUENKEL}", "(sn=*)")
    assert outcome.code == 0
    async with site.pool.acquire() as connection:
        await connection.execute(
            "UPDATE customers SET registration_password = 'changed-password' WHERE id = $1",
            KUENKEL,
        )
    old = await ldapsearch(site.plain, KUENKEL, KUENKEL_PASSWORD, f"dc={KUENKEL}", "(sn=*)")
    assert old.code == 49
    new = await ldapsearch(site.plain, KUENKEL, "changed-password", f"dc={KUENKEL}", "(sn=*)")
    assert new.code == 0


async def test_lost_listen_connection_drops_caches(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    search = (f"dc={KUENKEL}", "(sn=Neumann)", "sn")
    assert (await ldapsearch(site.plain, KUENKEL, KUENKEL_PASSWORD, *search)).dns == []
    # The LISTEN connection is opened in the background: there must be one to lose.
    await until(lambda: site.server.cache.live, timeout=10)
    caplog.set_level(logging.WARNING, logger="services.directory.cache")
    async with site.pool.acquire() as connection:
        await connection.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"""
        )
    # Noticed (it may be listening again by the time anyone looks at ``live``).
    await until(lambda: any("lost the LISTEN connection" in r.getMessage() for r in caplog.records))
    # Whether listening again already or not: a committed change is seen.
    await put_contacts(site.pool, KUENKEL, [("Neumann", "Nora", "", "+497031111222", None)])
    found = await ldapsearch(site.plain, KUENKEL, KUENKEL_PASSWORD, *search)
    assert found.values("sn") == ["Neumann"]
    await until(lambda: site.server.cache.live, timeout=10)
    await put_contacts(site.pool, KUENKEL, [("Altmann", "Otto", "", "+497031111333", None)])
    gone = await ldapsearch(site.plain, KUENKEL, KUENKEL_PASSWORD, *search)
    assert gone.dns == []


async def test_directories_are_preloaded_or_loaded_on_first_search(start_site: Any) -> None:
    preloaded: Site = await start_site()
    everyone = sorted(name.lower() for name in (KUENKEL, OTHER, GIGA))
    await until(lambda: preloaded.server.cache.loaded() == everyone)
    # An upload: dropped, and built again before anyone searches.
    version = await put_contacts(preloaded.pool, OTHER, [("Neu", "Nina", "", "+4989555001", None)])

    def rebuilt() -> bool:
        directory = preloaded.server.cache.peek(OTHER)
        return directory is not None and directory.version == version

    await until(rebuilt)
    directory = preloaded.server.cache.peek(OTHER)
    assert directory is not None
    assert [entry.match["sn"] for entry in directory.entries] == [("neu",)]

    lazy: Site = await start_site(preload=False)
    await asyncio.sleep(0.3)
    assert lazy.server.cache.loaded() == []
    outcome = await ldapsearch(lazy.plain, GIGA, GIGA_PASSWORD, f"dc={GIGA}", "(sn=*)", "sn")
    assert outcome.values("sn") == ["Baecker"]
    assert lazy.server.cache.loaded() == [GIGA.lower()]


async def test_directory_reader_sees_every_customer(site: Site) -> None:
    reader = "uid=reader,ou=accounts"
    root = await ldapsearch(
        site.plain, reader, READER_PASSWORD, "", "(objectClass=*)", "namingContexts",
        options=["-s", "base"],
    )  # fmt: skip
    assert sorted(root.values("namingContexts")) == sorted(
        [f"dc={KUENKEL}", f"dc={OTHER}", f"dc={GIGA}"]
    )
    geheim = await ldapsearch(
        site.plain, reader, READER_PASSWORD, "", "(telephoneNumber=+4989555000)", "sn"
    )
    assert geheim.values("sn") == ["Geheim"]
    assert geheim.dns == [f"uid=2,dc={OTHER}"]
    # Everything, cut by the size limit: the entries up to it, then sizeLimitExceeded (4).
    limited = await ldapsearch(
        site.plain, reader, READER_PASSWORD, "", "(objectClass=*)", "1.1", options=["-z", "3"]
    )
    assert limited.code == 4, limited.stderr
    assert len(limited.dns) == 3
    whoami = await run(
        peer_program("ldapwhoami", "ldap-utils"), "-H", site.plain, "-x", "-D", reader,
        "-w", READER_PASSWORD,
    )  # fmt: skip
    assert whoami.stdout.strip() == "dn:uid=reader,ou=accounts"


async def test_quirk_profile_gigaset_ascii_national(site: Site) -> None:
    found = await ldapsearch(
        site.plain, GIGA, GIGA_PASSWORD, f"dc={GIGA}", "(sn=Baeck*)", "sn", "telephoneNumber"
    )
    # ascii: names folded for display, found by either spelling; national number format.
    assert found.values("sn") == ["Baecker"]
    assert found.values("telephoneNumber") == ["030123456"]
    by_umlaut = await ldapsearch(site.plain, GIGA, GIGA_PASSWORD, f"dc={GIGA}", "(sn=Bäck*)", "sn")
    assert by_umlaut.values("sn") == ["Baecker"]
    # gigaset: "+" presented as 000.
    gigaset = await ldapsearch(
        site.plain, GIGA, GIGA_PASSWORD, f"dc={GIGA}", "(telephoneNumber=0004930123456)", "sn"
    )
    assert gigaset.values("sn") == ["Baecker"]


# --- ldap3, the second client ------------------------------------------------------------------


def connect(
    site: Site,
    user: str | None = KUENKEL,
    password: str | None = KUENKEL_PASSWORD,
    source: str | None = None,
) -> Any:
    """An ldap3 connection, from ``source`` (another loopback address) if given."""
    server = ldap3.Server("127.0.0.1", port=site.port(), get_info=ldap3.NONE)
    return ldap3.Connection(
        server, user=user, password=password, raise_exceptions=False, source_address=source
    )


async def in_thread(function: Any, *arguments: Any, **keywords: Any) -> Any:
    return await asyncio.to_thread(function, *arguments, **keywords)


async def test_ldap3_scopes_limits_and_attribute_selection(site: Site) -> None:
    connection = connect(site)
    assert await in_thread(connection.bind), connection.result
    base = f"dc={KUENKEL}"
    try:
        # Size limit: the entries up to it, then sizeLimitExceeded.
        await in_thread(connection.search, base, "(objectClass=person)", size_limit=2)
        assert connection.result["result"] == 4
        assert len(connection.entries) == 2
        # Scopes.
        await in_thread(connection.search, base, "(objectClass=*)", search_scope=ldap3.BASE)
        assert [e.entry_dn for e in connection.entries] == [base]
        await in_thread(connection.search, base, "(objectClass=*)", search_scope=ldap3.LEVEL)
        assert len(connection.entries) == 4
        assert base not in [e.entry_dn for e in connection.entries]
        await in_thread(connection.search, base, "(objectClass=*)", search_scope=ldap3.SUBTREE)
        assert len(connection.entries) == 5
        await in_thread(
            connection.search, f"uid=2,{base}", "(objectClass=*)", search_scope=ldap3.BASE,
            attributes=["cn", "sn"],
        )  # fmt: skip
        assert connection.entries[0].entry_attributes_as_dict == {
            "cn": ["Jürgen Müller"],
            "sn": ["Müller"],
        }
        await in_thread(connection.search, f"uid=99,{base}", "(objectClass=*)")
        assert connection.result["result"] == 32
        assert connection.result["dn"] == base  # matchedDN
        # 1.1 = no attributes; typesOnly = names without values.
        await in_thread(connection.search, base, "(sn=Müller)", attributes=["1.1"])
        assert connection.entries[0].entry_attributes == []
        await in_thread(connection.search, base, "(sn=Müller)", attributes=["*"], types_only=True)
        response = connection.response[0]
        assert "telephoneNumber" in response["attributes"]
        assert "telephoneNumber" in response["attributes"]
        assert not response["raw_attributes"]["telephoneNumber"]
        # Filters: and, not, presence, ranges, approx.
        await in_thread(
            connection.search, base, "(&(objectClass=person)(!(sn=M*)))", attributes=["sn"]
        )
        assert sorted(e.sn.value for e in connection.entries) == ["Schmidt", "Weiß"]
        await in_thread(connection.search, base, "(&(mobile=*)(sn=*))", attributes=["sn"])
        assert [e.sn.value for e in connection.entries] == ["Müller"]
        await in_thread(connection.search, base, "(&(sn>=n)(sn<=t))", attributes=["sn"])
        assert [e.sn.value for e in connection.entries] == ["Schmidt"]
        await in_thread(connection.search, base, "(sn~=schmidt)", attributes=["sn"])
        assert [e.sn.value for e in connection.entries] == ["Schmidt"]
        await in_thread(connection.search, base, "(sn=*ll*)", attributes=["sn"])
        assert sorted(e.sn.value for e in connection.entries) == ["Mueller", "Müller"]
        await in_thread(connection.search, base, "(unknownAttribute=x)", attributes=["sn"])
        assert connection.entries == []
        assert connection.result["result"] == 0
    finally:
        await in_thread(connection.unbind)


async def test_ldap3_refused_operations(site: Site) -> None:
    connection = connect(site)
    assert await in_thread(connection.bind)
    try:
        await in_thread(
            connection.modify, f"uid=2,dc={KUENKEL}", {"sn": [(ldap3.MODIFY_REPLACE, ["X"])]}
        )
        assert connection.result["result"] == 53
        await in_thread(connection.add, f"uid=99,dc={KUENKEL}", ["person"], {"sn": "X"})
        assert connection.result["result"] == 53
        await in_thread(connection.delete, f"uid=2,dc={KUENKEL}")
        assert connection.result["result"] == 53
        await in_thread(connection.extend.standard.who_am_i)
        assert connection.result["result"] == 0
        await in_thread(connection.extended, "1.2.3.4.5")
        assert connection.result["result"] == 2  # protocolError
        assert connection.result["type"] == "extendedResp"
        # A critical control we do not know.
        await in_thread(
            connection.search, f"dc={KUENKEL}", "(sn=*)", controls=[("1.2.3.4.6", True, None)]
        )
        assert connection.result["result"] == 12
        # Still usable afterwards.
        await in_thread(connection.search, f"dc={KUENKEL}", "(sn=Müller)")
        assert len(connection.entries) == 1
    finally:
        await in_thread(connection.unbind)


# --- hostile and broken clients over a raw socket ----------------------------------------------


async def exchange(site: Site, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send ``data``, read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", site.port())
    writer.write(data)
    await writer.drain()
    try:
        received = await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()
    return received


def decode_all(data: bytes) -> list[Any]:
    messages = []
    while data:
        decoded, data = decoder.decode(data, asn1Spec=LDAPMessage())
        messages.append(decoded)
    return messages


def bind_request(message_id: int, name: str, password: str) -> bytes:
    body = ber.integer(3) + ber.octets(name) + ber.octets(password, 0x80)
    return protocol.message(message_id, ber.element(0x60, body))


def search_request(message_id: int, base: str, search_filter: bytes) -> bytes:
    body = (
        ber.octets(base)
        + ber.integer(2, 0x0A)
        + ber.integer(0, 0x0A)
        + ber.integer(0)
        + ber.integer(0)
        + ber.element(0x01, b"\x00")
        + search_filter
        + ber.element(0x30, b"")
    )
    return protocol.message(message_id, ber.element(0x63, body))


def notice(messages: list[Any]) -> tuple[int, str]:
    last = messages[-1]
    assert int(last["messageID"]) == 0
    response = last["protocolOp"]["extendedResp"]
    assert str(response["responseName"]) == protocol.NOTICE_OF_DISCONNECTION
    return int(response["resultCode"]), str(response["diagnosticMessage"])


async def test_malformed_ber_gets_a_notice_and_is_closed(site: Site) -> None:
    for garbage in (
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x30\x80\x02\x01\x01\x00\x00",  # indefinite length
        b"\x30\x03\x04\x01x",  # no message id
        b"\x30\x05\x02\x01\x01\x7f\x00",  # unknown operation
        b"\x30\x06\x02\x01\x01\x63\x09\x00",  # an element longer than its container
    ):
        code, text = notice(decode_all(await exchange(site, garbage)))
        assert code == 2, (garbage, text)


async def test_oversized_message_is_refused(start_site: Any) -> None:
    site: Site = await start_site(max_message_bytes=1024)
    big = bind_request(1, KUENKEL, "x" * 2000)
    code, text = notice(decode_all(await exchange(site, big[:10])))
    assert code == 11  # adminLimitExceeded, before the body is even read
    assert "1024" in text


async def test_deeply_nested_filter_is_refused_not_recursed(site: Site) -> None:
    inner = ber.element(0x87, b"cn")  # (cn=*)
    for _ in range(5000):
        inner = ber.element(0xA2, inner)  # (!...)
    data = bind_request(1, KUENKEL, KUENKEL_PASSWORD) + search_request(2, f"dc={KUENKEL}", inner)
    data += protocol.message(3, ber.element(0x42, b""))  # unbind
    messages = decode_all(await exchange(site, data))
    assert int(messages[0]["protocolOp"]["bindResponse"]["resultCode"]) == 0
    done = messages[1]["protocolOp"]["searchResDone"]
    assert int(done["resultCode"]) == 53
    assert "deeper" in str(done["diagnosticMessage"])


async def test_malformed_search_is_answered_and_the_session_continues(site: Site) -> None:
    bad_filter = ber.element(0xA3, ber.octets("cn"))  # equality without a value
    data = (
        bind_request(1, KUENKEL, KUENKEL_PASSWORD)
        + search_request(2, f"dc={KUENKEL}", bad_filter)
        + search_request(3, f"dc={KUENKEL}", ber.element(0x87, b"mobile"))
        + protocol.message(4, ber.element(0x42, b""))
    )
    messages = decode_all(await exchange(site, data))
    assert int(messages[1]["protocolOp"]["searchResDone"]["resultCode"]) == 2
    names = [m["protocolOp"].getName() for m in messages[2:]]
    assert names == ["searchResEntry", "searchResDone"]


async def test_slow_and_idle_clients_are_disconnected(start_site: Any) -> None:
    site: Site = await start_site(idle_timeout=1.0, read_timeout=0.5)
    # Half a message, then silence: cut off after the read timeout.
    assert await exchange(site, bind_request(1, KUENKEL, KUENKEL_PASSWORD)[:5], wait=5) == b""
    # Nothing at all: cut off after the idle timeout.
    reader, writer = await asyncio.open_connection("127.0.0.1", site.port())
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_tls_handshake_deadline(start_site: Any, caplog: pytest.LogCaptureFixture) -> None:
    site: Site = await start_site(handshake_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", site.port("secure"))
    assert await asyncio.wait_for(reader.read(), 5) == b""  # no ClientHello: closed
    writer.close()
    await until(lambda: "tls-handshake-failed" in caplog.text)


async def test_connection_cap(start_site: Any) -> None:
    site: Site = await start_site(max_connections=2)
    held = [await asyncio.open_connection("127.0.0.1", site.port()) for _ in range(2)]
    await until(lambda: len(site.server._listeners[0]._connections) == 2)
    reader, writer = await asyncio.open_connection("127.0.0.1", site.port())
    try:
        refused = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:  # the guard resets refused connections
        refused = b""
    assert refused == b""
    writer.close()
    for _reader, held_writer in held:
        held_writer.close()
    # Room again once they are gone.
    await until(lambda: not site.server._listeners[0]._connections)
    outcome = await ldapsearch(site.plain, KUENKEL, KUENKEL_PASSWORD, f"dc={KUENKEL}", "(sn=x)")
    assert outcome.code == 0


# --- the runner and configuration ---------------------------------------------------------------


def test_directory_cannot_share_a_listener() -> None:
    with pytest.raises(ConfigError, match=r"listeners\.mixed\.services: 'directory'"):
        load_settings(
            environ={},
            overrides={
                "listeners": {
                    "mixed": {"services": ["directory", "update"], "tls": False, "port": 0}
                }
            },
        )


async def test_runner_keeps_the_directory_alone_on_its_listener(
    pool: asyncpg.Pool, session_pki: SessionPki
) -> None:
    """Settings built in code skip load_settings' validation; the runner checks again."""
    mixed = {"mixed": ListenerSettings(port=0, services=("directory", "probe"), tls=False)}

    def probe(_settings: Settings, _resources: Resources) -> web.Application:
        return web.Application()

    factories: ServiceFactories = {
        "directory": lambda settings, _resources: create_service(settings),
        "probe": probe,
    }
    with pytest.raises(ConfigError, match="cannot share a listener"):
        await start_node(Settings(), pool, mixed, factories)
    # A factory that builds a stream service for a plain HTTP service name is refused too.
    wrong: ServiceFactories = {"probe": lambda settings, _resources: create_service(settings)}
    plain = {"plain": ListenerSettings(port=0, services=("probe",), tls=False)}
    with pytest.raises(ConfigError, match="not an HTTP service"):
        await start_node(Settings(), pool, plain, wrong)


def test_demo_config_has_the_directory_listeners(repo_root: Any) -> None:
    settings = load_settings([repo_root / "config" / "demo.toml"], environ={})
    assert settings.listeners["directory"].port == 8389
    assert not settings.listeners["directory"].tls
    assert settings.listeners["directory_tls"].port == 8636
    assert settings.listeners["directory_tls"].tls


async def test_certificate_reload_applies_to_ldaps(site: Site) -> None:
    assert site.node.reload_tls()
    outcome = await ldapsearch(
        site.secure,
        KUENKEL,
        KUENKEL_PASSWORD,
        f"dc={KUENKEL}",
        "(sn=Müller)",
        "sn",
        env={"LDAPTLS_CACERT": str(site.pki.ca)},
    )
    assert outcome.values("sn") == ["Müller"]


# --- units: numbers, names, DNs, encoding --------------------------------------------------------

PLAN = NumberingPlan("49", "7031")


def test_number_variants() -> None:
    assert variants("+497031730090", PLAN) == {
        "+497031730090",
        "497031730090",
        "00497031730090",
        "07031730090",
        "7031730090",
        "730090",
    }
    assert "000497031730090" in variants("+497031730090", PLAN, gigaset=True)
    assert variants("+43125252525", PLAN) == {"+43125252525", "43125252525", "0043125252525"}
    assert variants("123", PLAN) == {"123"}
    assert normalize_query("+49 (7031) 730-090") == "+497031730090"
    assert normalize_query("Müller") is None
    assert normalize_query("") is None
    assert display("+497031730090", PLAN, "national") == "07031730090"
    assert display("+43125252525", PLAN, "national") == "0043125252525"
    assert display("+497031730090", PLAN, "digits") == "497031730090"
    assert display("+497031730090", PLAN, "e164", gigaset=True) == "000497031730090"


def test_names_and_dns() -> None:
    assert ascii_fold("Jürgen Weiß-Çelik") == "Juergen Weiss-Celik"
    assert escape(" a,b+c ") == "\\ a\\,b\\+c\\ "
    assert parse("uid=3, DC=Kuenkel00001") == [("uid", "3"), ("dc", "Kuenkel00001")]
    assert parse("cn=M\\C3\\BCller\\, J,dc=x") == [("cn", "Müller, J"), ("dc", "x")]
    assert bind_target("Kuenkel00001") == ("customer", "Kuenkel00001")
    assert bind_target("cn=A,dc=B") is None
    assert bind_target("uid=reader,ou=accounts") == ("account", "reader")
    assert bind_target("CN=reader, OU=Accounts") == ("account", "reader")
    assert bind_target("uid=reader,ou=people") is None


def test_index_agrees_with_a_scan() -> None:
    record = CustomerRecord(KUENKEL, "Kuenkel GmbH", None, PLAN, version=1)
    contacts = [Contact(line, *row) for line, row in enumerate(KUENKEL_CONTACTS * 3, start=2)]
    directory = CustomerDirectory(record, contacts, "e164")
    for node in (
        Equality("sn", "müller"),
        Equality("telephoneNumber", "07031730090"),
        Substrings("cn", "jü", (), None),
        Substrings("o", "MÜLLEREI", (), None),
        Substrings("sn", "m", ("ll",), "r"),
    ):
        indexed = [entry.dn for entry in directory.search(node, include_base=False)]
        scanned = [entry.dn for entry in directory.entries if matches(node, entry.match)]
        assert indexed == scanned
        assert indexed


def test_responses_decode_with_the_rfc_asn1() -> None:
    """What our DER writer produces, read back by pyasn1 with ldap3's RFC 4511 module."""
    data = protocol.search_entry(
        7, "uid=2,dc=x", [("cn", ["Jürgen Müller"]), ("telephoneNumber", ["+49" * 50])]
    ) + protocol.result(7, protocol.Op.SEARCH_RESULT_DONE, protocol.ResultCode.SUCCESS)
    entry, done = decode_all(data)
    attributes = entry["protocolOp"]["searchResEntry"]["attributes"]
    assert bytes(attributes[0]["vals"][0]).decode() == "Jürgen Müller"
    assert len(bytes(attributes[1]["vals"][0])) == 150
    assert int(done["messageID"]) == 7
    with pytest.raises(ber.ProtocolError):
        protocol.decode_message(b"\x30\x84\xff\xff\xff\xff", 16)
    with pytest.raises(ber.ProtocolError):
        ber.header_length(b"\x04\x00")


def test_filter_strings_parse_as_clients_send_them() -> None:
    assert parse_filter("(|(sn=Mül*)(givenName=Mül*)(o=Mül*))") == Or(
        (
            Substrings("sn", "Mül", (), None),
            Substrings("givenName", "Mül", (), None),
            Substrings("o", "Mül", (), None),
        )
    )
    assert parse_filter("telephoneNumber=07031730090") == Equality("telephonenumber", "07031730090")
    assert parse_filter("(&(!(cn=a\\2ab))(mobile=*)(sn>=m)(sn~=x)(cn=*a*b*))") == And(
        (
            Not(Equality("cn", "a*b")),
            Present("mobile"),
            GreaterOrEqual("sn", "m"),
            Equality("sn", "x"),
            Substrings("cn", None, ("a", "b"), None),
        )
    )
    for bad in ("(cn=a", "(cn=(x))", "(!(a=1)(b=2))", "(&)", "(=x)", "(cn=\\zz)", "(cn=x))"):
        with pytest.raises(FilterSyntaxError):
            parse_filter(bad)


def run_cli(database_url: str, *argv: str) -> int:
    return run_wired_cli(directory_cli.register, database_url, *argv)


async def test_cli_search(
    site: Site, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def cli(*argv: str) -> tuple[int, str]:
        status = await asyncio.to_thread(run_cli, database_url, "directory", "search", *argv)
        return status, capsys.readouterr().out

    status, out = await cli(
        "--customer", KUENKEL, "--attributes", "cn,telephoneNumber", "(telephoneNumber=730090)"
    )
    assert status == 0, out
    assert out == (
        f"dn: uid=2,dc={KUENKEL}\ncn: Jürgen Müller\ntelephoneNumber: +497031730090\n\n"
        f"# 1 entries (version 1 of {KUENKEL})\n"
    )
    status, out = await cli("--customer", GIGA, "--attributes", "telephoneNumber", "sn=B*")
    assert "telephoneNumber: 030123456" in out
    assert (await cli("--customer", KUENKEL, "(sn=x"))[0] == 2
    status, out = await cli("--customer", "Nobody", "(sn=x)")
    assert status == 2
    assert "no customer" in out


async def test_root_dse_and_searches_before_bind(site: Site) -> None:
    connection = connect(site, user=None, password=None)
    await in_thread(connection.open)
    try:
        await in_thread(
            connection.search, "", "(objectClass=*)", search_scope=ldap3.BASE, attributes=["*"]
        )
        root = connection.response[0]["attributes"]
        assert root["supportedLDAPVersion"] == ["3"]
        assert "namingContexts" not in root  # nothing is visible before a bind
        await in_thread(connection.search, f"dc={KUENKEL}", "(sn=*)")
        assert connection.result["result"] == 50
        assert connection.entries == []
    finally:
        await in_thread(connection.unbind)


@pytest.mark.parametrize(
    ("operation", "reason"),
    [
        # A bind whose name is an INTEGER.
        (ber.element(0x60, ber.integer(3) + ber.integer(7) + b"\x80\x00"), "name"),
        # A bind without authentication.
        (ber.element(0x60, ber.integer(3) + ber.octets("x")), "bind request"),
        # A bind with an authentication choice that does not exist.
        (
            ber.element(0x60, ber.integer(3) + ber.octets("x") + b"\x85\x00"),
            "authentication",
        ),
        # A search with seven fields.
        (ber.element(0x63, ber.octets("dc=x") * 7), "eight fields"),
        # A substring filter whose part is neither initial, any nor final.
        (
            search_request(
                2,
                "dc=x",
                ber.element(0xA4, ber.octets("cn") + ber.element(0x30, ber.octets("a", 0x85))),
            )[5:],
            "substring part",
        ),
        # A filter choice that does not exist.
        (search_request(2, "dc=x", ber.element(0xAB, b""))[5:], "filter choice"),
        # Not UTF-8.
        (search_request(2, "dc=x", ber.element(0x87, b"\xff"))[5:], "not UTF-8"),
    ],
)
def test_malformed_binds_and_searches_are_protocol_errors(operation: bytes, reason: str) -> None:
    decoded = protocol.decode_message(protocol.message(9, operation), 16)
    assert decoded.message_id == 9
    assert decoded.request is None
    assert decoded.error is not None
    assert decoded.error.code == protocol.ResultCode.PROTOCOL_ERROR
    assert reason in str(decoded.error)
