"""TLS session-ticket keys shared through PostgreSQL (core/ticketstore.py, issue 18): real
``pbxfront serve`` nodes on one real PostgreSQL, real TLS with device certificates. A ticket
resumes after a restart, on another node and across a rotation (the previous key is still
accepted; after a second rotation its tickets get a full handshake, never an error); a rotation
breaks no open connection; a damaged key (current or previous) is refused and the nodes keep
their good key; no key ever reaches the logs."""

from __future__ import annotations

import asyncio
import base64
import datetime
import functools
import json
import shutil
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from services.core.config import TlsSettings
from services.core.ticketkeys import KEY_LENGTH
from services.core.ticketstore import StoredKey, TicketKeyRepository, refusal
from tests.conftest import TEMPLATE_DATABASE, dsn_for_database, until_blocking
from tests.test_cli import Served, start, stop
from tests.test_tls_resumption import POLL, device_context, poll

CHECK_SECONDS = "0.3"
# Every key value read from the database in this module, to look for in the nodes' logs.
SEEN_KEYS: list[bytes] = []


def sql(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(dsn)
        try:
            return list(await connection.fetch(query, *args))
        finally:
            await connection.close()

    return asyncio.run(run())


def stored(dsn: str, listener: str = "devices") -> StoredKey:
    (row,) = sql(
        dsn,
        "SELECT listener, key, created_at, previous_key FROM tls_ticket_keys WHERE listener = $1",
        listener,
    )
    SEEN_KEYS.extend(key for key in (row["key"], row["previous_key"]) if key is not None)
    return StoredKey(row["listener"], row["key"], row["created_at"], row["previous_key"])


@pytest.fixture(scope="module")
def database(postgres_server_dsn: str) -> Iterator[str]:
    """One fresh migrated database shared by the nodes of this module."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    sql(postgres_server_dsn, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DATABASE}")
    yield dsn_for_database(postgres_server_dsn, name)
    sql(postgres_server_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def serve(data_dir: Path, database: str | None, *extra: str) -> Served:
    args = [
        *("--set", f"tls.ticket_key_check_seconds={CHECK_SECONDS}"),
        *("--set", "logging.access_log=false"),
        # Everything a node logs, so a key would show up if any line carried it.
        *("--set", 'logging.level="DEBUG"'),
        *extra,
    ]
    if database is not None:
        args += ["--set", f"database.url={json.dumps(database)}"]
    # A restart: start() waits for this file, so the one of the run before must go.
    (data_dir.parent / f"{data_dir.name}-ready.json").unlink(missing_ok=True)
    return start(data_dir, *args)


@pytest.fixture(scope="module")
def node_a(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Served]:
    served = serve(tmp_path_factory.mktemp("node-a") / "var", database, "--workers", "2")
    yield served
    stop(served)


@pytest.fixture(scope="module")
def node_b(
    tmp_path_factory: pytest.TempPathFactory, database: str, node_a: Served
) -> Iterator[Served]:
    """A second Frontend on the same database, with node A's demo CA and certificates (one
    provider PKI), one worker."""
    data_dir = tmp_path_factory.mktemp("node-b") / "var"
    shutil.copytree(node_a.data_dir / "pki", data_dir / "pki")
    served = serve(data_dir, database)
    yield served
    stop(served)


def log_count(node: Served, text: str) -> int:
    return node.output().count(text)


def applied(node: Served, key: StoredKey) -> int:
    """How many of the node's processes took ``key`` (the line each logs)."""
    return log_count(
        node,
        f"TLS ticket key of listener devices now the shared one created "
        f"{key.created_at.isoformat()}",
    )


@pytest.fixture(scope="module")
def client(node_a: Served) -> ssl.SSLContext:
    """The devices' client context (a session is only offered through the context it came
    from; the nodes share node A's CA)."""
    return device_context(node_a)


def took(node: Served, key: StoredKey, processes: int) -> bool:
    return applied(node, key) == processes


def resumed_on(
    node: Served, context: ssl.SSLContext, session: ssl.SSLSession | None, count: int = 10
) -> int:
    resumed = 0
    for _ in range(count):
        _session, reused, _certificate = poll(node, context, session)
        resumed += reused
    return resumed


def first_session(node: Served, context: ssl.SSLContext) -> ssl.SSLSession:
    session, reused, _certificate = poll(node, context, None)
    assert not reused
    assert session is not None
    return session


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_two_nodes_resume_each_others_tickets(
    node_a: Served, node_b: Served, database: str, version: ssl.TLSVersion
) -> None:
    key = stored(database)
    assert key.key is not None
    assert len(key.key) == KEY_LENGTH
    for issuer, acceptor in ((node_a, node_b), (node_b, node_a)):
        context = device_context(issuer, version)
        session, _reused, _certificate = poll(issuer, context, None)
        for _ in range(10):
            session, reused, _certificate = poll(acceptor, context, session)
            assert reused, f"{version.name}: a ticket from {issuer.urls} did not resume"
    # Each listener its own key, on every node: a session never crosses listeners.
    claimed = stored(database, "devices_claimed")
    assert claimed.key != key.key
    session = first_session(node_a, context)
    _session, reused, _certificate = poll(node_b, context, session, "devices_claimed")
    assert not reused


def read_response(sock: ssl.SSLSocket) -> bytes:
    """One HTTP/1.1 response (Content-Length) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head


def rotate(database: str, node_a: Served, node_b: Served) -> StoredKey:
    """Make the key due; the first node to check replaces it, every process takes the new one."""
    before = stored(database)
    sql(
        database,
        "UPDATE tls_ticket_keys SET created_at = now() - interval '25 hours' "
        "WHERE listener = 'devices'",
    )
    until_blocking(lambda: stored(database).created_at > before.created_at, "the rotation")
    after = stored(database)
    assert after.key != before.key
    assert after.previous == before.key
    until_blocking(lambda: applied(node_a, after) == 2, "both workers of node A take the new key")
    until_blocking(lambda: applied(node_b, after) == 1, "node B takes the new key")
    return after


def test_rotation_keeps_the_tickets_resuming_and_breaks_nothing(
    node_a: Served, node_b: Served, database: str, client: ssl.SSLContext
) -> None:
    """The previous key is still accepted: of the tickets the devices hold when the key rotates,
    the share that resumes at their next poll, on either node (all of them); a second rotation
    retires the first key (a full handshake, never an error)."""
    # Devices holding tickets under the current key, one session each.
    sessions = [first_session(node_a, client) for _ in range(20)]
    # A connection open across the rotation.
    address = urlsplit(node_a.urls["devices"])
    assert address.hostname is not None
    assert address.port is not None
    keep = POLL.replace(b"Connection: close\r\n", b"")
    rotated = "TLS ticket key of listener devices rotated"
    rotations = log_count(node_a, rotated) + log_count(node_b, rotated)
    with (
        socket.create_connection((address.hostname, address.port), timeout=15) as raw,
        client.wrap_socket(raw, server_hostname=address.hostname) as open_connection,
    ):
        open_connection.sendall(keep)
        assert read_response(open_connection).startswith(b"HTTP/1.1 200")
        rotate(database, node_a, node_b)
        open_connection.sendall(keep)
        assert read_response(open_connection).startswith(b"HTTP/1.1 200")
    # One rotation line in the cluster (the UPDATE is conditioned on the age: one node wins).
    assert log_count(node_a, rotated) + log_count(node_b, rotated) == rotations + 1
    # Every old ticket resumes (poll asserts the 200), on either node.
    old_resumed = sum(
        resumed_on(node, client, session, 1) for session in sessions for node in (node_a, node_b)
    )
    print(f"after a rotation: {old_resumed / (2 * len(sessions)):.0%} of old tickets resumed")
    assert old_resumed == 2 * len(sessions)
    # New tickets resume on both nodes.
    fresh = first_session(node_b, client)
    assert resumed_on(node_a, client, fresh) == 10
    assert resumed_on(node_b, client, fresh) == 10
    # A second rotation: tickets under the first key get a full handshake (and a 200), the ones
    # under the key it retired to previous still resume.
    rotate(database, node_a, node_b)
    assert sum(resumed_on(node, client, sessions[0], 1) for node in (node_a, node_b)) == 0
    assert resumed_on(node_a, client, fresh, 3) == 3
    assert resumed_on(node_b, client, fresh, 3) == 3


def test_a_damaged_previous_key_is_refused_and_the_current_one_kept(
    node_a: Served, node_b: Served, database: str, client: ssl.SSLContext
) -> None:
    current = rotate(database, node_a, node_b)
    session = first_session(node_a, client)
    sql(
        database,
        "UPDATE tls_ticket_keys SET previous_key = 'short' WHERE listener = 'devices'",
    )
    line = (
        f"previous TLS ticket key of listener devices in PostgreSQL (replaced "
        f"{current.created_at.isoformat()}) refused: the key has 5 bytes, not 80"
    )
    until_blocking(lambda: log_count(node_a, line) == 2, "node A's workers refuse it")
    until_blocking(lambda: log_count(node_b, line) == 1, "node B refuses it")
    # Once per process, not once per check; the current key still resumes on both nodes.
    time.sleep(4 * float(CHECK_SECONDS))
    assert (log_count(node_a, line), log_count(node_b, line)) == (2, 1)
    assert resumed_on(node_a, client, session, 3) == 3
    assert resumed_on(node_b, client, session, 3) == 3


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "the key is NULL"),
        (b"garbage", "the key has 7 bytes, not 80"),
        (b"\x07" * 81, "the key has 81 bytes, not 80"),
        (bytes(KEY_LENGTH), "the key is one repeated byte"),
    ],
)
def test_a_damaged_key_row_is_refused_and_the_nodes_keep_their_key(
    node_a: Served,
    node_b: Served,
    database: str,
    client: ssl.SSLContext,
    value: bytes | None,
    problem: str,
) -> None:
    good = stored(database)
    session = first_session(node_a, client)
    refused = "TLS ticket key of listener devices in PostgreSQL"
    counts = (log_count(node_a, refused), log_count(node_b, refused))
    sql(
        database,
        "UPDATE tls_ticket_keys SET key = $1, created_at = now() WHERE listener = 'devices'",
        value,
    )
    damaged = stored(database)
    line = f"{refused} (created {damaged.created_at.isoformat()}) refused: {problem}"
    until_blocking(lambda: log_count(node_a, line) == 2, "node A's workers refuse the row")
    until_blocking(lambda: log_count(node_b, line) == 1, "node B refuses the row")
    # Once per process, not once per check.
    time.sleep(4 * float(CHECK_SECONDS))
    assert (log_count(node_a, refused), log_count(node_b, refused)) == (
        counts[0] + 2,
        counts[1] + 1,
    )
    # The good key is still the nodes' key: the ticket from before resumes on both.
    assert resumed_on(node_a, client, session) == 10
    assert resumed_on(node_b, client, session) == 10
    # The remedy the log line names: delete the row; a node makes a new key, all take it.
    sql(database, "DELETE FROM tls_ticket_keys WHERE listener = 'devices'")
    until_blocking(
        lambda: bool(sql(database, "SELECT 1 FROM tls_ticket_keys WHERE listener = 'devices'")),
        "a new row",
    )
    fresh = stored(database)
    assert fresh.key != good.key
    until_blocking(lambda: applied(node_a, fresh) == 2, "node A takes the new key")
    until_blocking(lambda: applied(node_b, fresh) == 1, "node B takes the new key")
    assert resumed_on(node_b, client, first_session(node_a, client)) == 10


def test_a_node_starting_on_a_damaged_row_serves_with_its_own_key(
    tmp_path: Path, node_a: Served, node_b: Served, database: str, client: ssl.SSLContext
) -> None:
    """No good key to take at start: the node says so, serves with a key of its own (full
    handshakes for tickets from the others, never an error) and takes the shared key once the
    row is good again."""
    sql(
        database,
        "UPDATE tls_ticket_keys SET key = 'not a key', created_at = now() "
        "WHERE listener = 'devices'",
    )
    data_dir = tmp_path / "var"
    shutil.copytree(node_a.data_dir / "pki", data_dir / "pki")
    node_c = serve(data_dir, database)
    try:
        assert "refused: the key has 9 bytes, not 80" in node_c.output()
        from_a = first_session(node_a, client)
        assert resumed_on(node_c, client, from_a, 3) == 0
        sql(database, "DELETE FROM tls_ticket_keys WHERE listener = 'devices'")
        until_blocking(
            lambda: bool(sql(database, "SELECT 1 FROM tls_ticket_keys WHERE listener = 'devices'")),
            "a new row",
        )
        fresh = stored(database)
        for node, processes in ((node_a, 2), (node_b, 1), (node_c, 1)):
            until_blocking(functools.partial(took, node, fresh, processes), f"{node.urls} takes it")
        assert resumed_on(node_c, client, first_session(node_a, client), 3) == 3
    finally:
        output = stop(node_c)
    assert_no_key_in(output, [key for key in SEEN_KEYS if refusal(key) is None])


def test_a_node_of_stream_listeners_only_follows_the_shared_key(
    tmp_path: Path, node_a: Served, database: str
) -> None:
    """``--only directory``: no HTTP application whose cleanup_ctx could run the check; the node
    runs it itself, takes a rotated key and stops cleanly."""
    data_dir = tmp_path / "var"
    shutil.copytree(node_a.data_dir / "pki", data_dir / "pki")
    node = serve(data_dir, database, "--only", "directory")
    try:
        before = stored(database, "directory_tls")
        sql(
            database,
            "UPDATE tls_ticket_keys SET created_at = now() - interval '25 hours' "
            "WHERE listener = 'directory_tls'",
        )
        until_blocking(
            lambda: stored(database, "directory_tls").created_at > before.created_at,
            "the rotation",
        )
        after = stored(database, "directory_tls")
        line = (
            "TLS ticket key of listener directory_tls now the shared one created "
            f"{after.created_at.isoformat()}"
        )
        until_blocking(lambda: log_count(node, line) == 1, "the directory node takes the new key")
    finally:
        output = stop(node)
    assert_no_key_in(output, [key for key in SEEN_KEYS if refusal(key) is None])


def test_a_ticket_resumes_after_a_restart(tmp_path: Path) -> None:
    """The plain single Frontend (embedded PostgreSQL in its data directory, 2 workers): a
    ticket from before ``serve`` restarted resumes after it, on both workers' contexts."""
    data_dir = tmp_path / "var"
    node = serve(data_dir, None, "--workers", "2")
    versions = (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2)
    contexts = {version: device_context(node, version) for version in versions}
    try:
        sessions = {version: first_session(node, contexts[version]) for version in versions}
    except BaseException:
        stop(node)
        raise
    output = stop(node)
    node = serve(data_dir, None, "--workers", "2")
    try:
        for version in versions:
            _session, reused, _certificate = poll(node, contexts[version], sessions[version])
            assert reused, f"{version.name}: the ticket from before the restart did not resume"
    finally:
        output += stop(node)
    assert_no_key_in(output, [bytes(key) for key in _keys_of_data_dir(data_dir)])


def _keys_of_data_dir(data_dir: Path) -> list[bytes]:
    from services.core.db import EmbeddedPostgres

    embedded = EmbeddedPostgres(data_dir)
    dsn = embedded.start()
    try:
        rows = sql(dsn, "SELECT key FROM tls_ticket_keys")
    finally:
        embedded.stop()
    return [row["key"] for row in rows]


def key_forms(key: bytes) -> list[str]:
    """How a key could be printed: hex (either case), base64, a bytes repr, and enough of each
    that a truncated line would be caught too."""
    forms = [key.hex(), key.hex().upper(), base64.b64encode(key).decode(), repr(key)[2:-1]]
    return [form[:24] for form in forms] + [key[:16].hex()]


def assert_no_key_in(output: str, keys: list[bytes]) -> None:
    assert keys
    for key in keys:
        for form in key_forms(key):
            assert form not in output, "a ticket key reached the log"


def test_keys_never_appear_in_the_logs(node_a: Served, node_b: Served, database: str) -> None:
    """Last of the module: every key the nodes used (first, rotated, damaged, recreated)."""
    keys = [key for key in SEEN_KEYS if refusal(key) is None]
    keys += [row["key"] for row in sql(database, "SELECT key FROM tls_ticket_keys")]
    assert len({*keys}) >= 3
    output = node_a.output() + node_b.output()
    assert "TLS ticket key of listener devices" in output
    assert_no_key_in(output, keys)


# --------------------------------------------------------------------------- the repository


def test_refusal_names_the_problem_never_the_key() -> None:
    key = bytes(range(KEY_LENGTH))
    assert refusal(key) is None
    assert refusal(None) == "the key is NULL"
    assert refusal("text") == "the key is a str, not bytes"
    assert refusal(key[:-1]) == "the key has 79 bytes, not 80"
    assert refusal(bytes(KEY_LENGTH)) == "the key is one repeated byte (zeroed?)"
    row = StoredKey("devices", key, datetime.datetime(2026, 12, 3, tzinfo=datetime.UTC))
    assert key.hex()[:8] not in repr(row)
    assert repr(key)[2:12] not in repr(row)


@pytest.fixture
async def key_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=8)
    yield pool
    await pool.close()


async def test_nodes_starting_at_once_get_one_key(key_pool: asyncpg.Pool) -> None:
    repository = TicketKeyRepository(key_pool)
    rotation = TlsSettings().ticket_key_rotation_hours
    results = await asyncio.gather(
        *(repository.current(["devices", "admin"], rotation) for _ in range(8))
    )
    for listener in ("devices", "admin"):
        assert len({result[listener].key for result in results}) == 1
    assert results[0]["devices"].key != results[0]["admin"].key


async def test_a_due_key_is_rotated_once_by_nodes_checking_at_once(
    key_pool: asyncpg.Pool,
) -> None:
    repository = TicketKeyRepository(key_pool)
    first = (await repository.current(["devices"], 24.0))["devices"]
    # Not due: kept.
    assert (await repository.current(["devices"], 24.0))["devices"] == first
    await key_pool.execute(
        "UPDATE tls_ticket_keys SET created_at = created_at - interval '25 hours'"
    )
    results = await asyncio.gather(*(repository.current(["devices"], 24.0) for _ in range(8)))
    keys = {result["devices"].key for result in results}
    assert len(keys) == 1
    assert first.key not in keys
