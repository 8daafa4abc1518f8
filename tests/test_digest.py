"""HTTP Digest (RFC 7616): the RFC's own examples, parsing, signed nonces with a controlled clock,
every refusal reason, replay protection in memory and in PostgreSQL, and the HA1 values
``core.auth`` keeps for event-sender accounts. (curl --digest against the real listener is in
test_backup.py.)"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.core.auth import AccountRepository, Role
from services.core.digest import (
    REALM,
    DigestAuthenticator,
    DigestCredentials,
    Failure,
    MemoryNonceCounter,
    NonceSigner,
    NonceState,
    PostgresNonceCounter,
    compute_ha1,
    compute_response,
    load_secret,
    parse_digest,
)

# RFC 7616 §3.9.1
RFC_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc_7616_examples(algorithm: str, expected: str) -> None:
    ha1 = compute_ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
    response = compute_response(
        algorithm,
        ha1,
        nonce=RFC_NONCE,
        nonce_count="00000001",
        cnonce=RFC_CNONCE,
        method="GET",
        uri="/dir/index.html",
    )
    assert response == expected


def test_parse_the_rfc_header() -> None:
    header = (
        'Digest username="Mufasa",\n       realm="http-auth@example.org",\n'
        f'       uri="/dir/index.html", algorithm=SHA-256, nonce="{RFC_NONCE}", nc=00000001,'
        f' cnonce="{RFC_CNONCE}", qop=auth,'
        ' response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",'
        f' opaque="{RFC_OPAQUE}"'
    )
    parsed = parse_digest(header)
    assert parsed == DigestCredentials(
        username="Mufasa",
        realm="http-auth@example.org",
        nonce=RFC_NONCE,
        uri="/dir/index.html",
        response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        algorithm="SHA-256",
        qop="auth",
        nonce_count="00000001",
        cnonce=RFC_CNONCE,
        opaque=RFC_OPAQUE,
    )


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic c2VuZGVyOng=",
        "Digest",
        'Digest username="a"',  # required parameters missing
        'Digest username="a", username="b", realm="r", nonce="n", uri="/", response="x"',
        'Digest username="a, realm="r", nonce="n", uri="/", response="x"',  # broken quoting
    ],
)
def test_parse_refuses(header: str | None) -> None:
    assert parse_digest(header) is None


def test_parse_escapes_and_default_algorithm() -> None:
    parsed = parse_digest(
        r'digest username="a\"b", realm="r", nonce="n", uri="/x?y=1,2", response="AB"'
    )
    assert parsed is not None
    assert (parsed.username, parsed.uri, parsed.response) == ('a"b', "/x?y=1,2", "ab")
    assert parsed.algorithm == "MD5"


SECRET = bytes(range(32))
NOW = 1_700_000_000.0


def test_nonces_expire_and_cannot_be_forged() -> None:
    signer = NonceSigner(SECRET, lifetime=300)
    nonce = signer.issue(NOW)
    assert signer.check(nonce, NOW + 299) is NonceState.VALID
    assert signer.check(nonce, NOW + 301) is NonceState.STALE
    assert signer.check(nonce, NOW - 60) is NonceState.INVALID  # issued "in the future"
    assert NonceSigner(bytes(32), 300).check(nonce, NOW) is NonceState.INVALID
    tampered = nonce[:-4] + ("AAAA" if not nonce.endswith("AAAA") else "BBBB")
    assert signer.check(tampered, NOW) is NonceState.INVALID
    assert signer.check("not base64 at all!", NOW) is NonceState.INVALID
    assert signer.issue(NOW) != nonce
    with pytest.raises(ValueError, match="32 bytes"):
        NonceSigner(b"short", 300)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


PASSWORD = "right password"
HA1S = {
    ("sender", REALM, algorithm): compute_ha1(algorithm, "sender", REALM, PASSWORD)
    for algorithm in ("MD5", "SHA-256")
}


async def lookup(name: str, realm: str, algorithm: str) -> str | None:
    return HA1S.get((name, realm, algorithm))


def credentials(
    authenticator: DigestAuthenticator,
    *,
    password: str = PASSWORD,
    algorithm: str = "SHA-256",
    nonce: str | None = None,
    nonce_count: str = "00000001",
    uri: str = "/DRIVE/CF0/update/backup/x.txt",
    **changes: str | None,
) -> DigestCredentials:
    nonce = nonce or authenticator.signer.issue(authenticator.clock())
    ha1 = compute_ha1(algorithm, "sender", REALM, password)
    response = compute_response(
        algorithm,
        ha1,
        nonce=nonce,
        nonce_count=nonce_count,
        cnonce="c1",
        method="PUT",
        uri=uri,
    )
    values: dict[str, str | None] = {
        "username": "sender",
        "realm": REALM,
        "nonce": nonce,
        "uri": uri,
        "response": response,
        "algorithm": algorithm,
        "qop": "auth",
        "nonce_count": nonce_count,
        "cnonce": "c1",
        "opaque": authenticator.signer.opaque,
        **changes,
    }
    return DigestCredentials(**values)  # type: ignore[arg-type]


async def verify(
    authenticator: DigestAuthenticator,
    given: DigestCredentials,
    counter: MemoryNonceCounter | PostgresNonceCounter,
) -> Failure | None:
    result = await authenticator.verify(
        given, method="PUT", uri="/DRIVE/CF0/update/backup/x.txt", lookup=lookup, counter=counter
    )
    assert (result.username is None) == (result.failure is not None)
    return result.failure


async def test_every_refusal_reason() -> None:
    clock = Clock(NOW)
    authenticator = DigestAuthenticator(NonceSigner(SECRET, 300), ("SHA-256", "MD5"), clock=clock)
    counter = MemoryNonceCounter()
    assert await verify(authenticator, credentials(authenticator), counter) is None
    assert await verify(authenticator, credentials(authenticator, algorithm="MD5"), counter) is None
    cases: list[tuple[DigestCredentials, Failure]] = [
        (credentials(authenticator, password="wrong"), Failure.CREDENTIALS),
        (credentials(authenticator, username="nobody"), Failure.CREDENTIALS),
        (credentials(authenticator, realm="other"), Failure.WRONG_REALM),
        (replace(credentials(authenticator), algorithm="SHA-512-256"), Failure.ALGORITHM),
        (credentials(authenticator, qop=None), Failure.QOP),
        (credentials(authenticator, qop="auth-int"), Failure.QOP),
        (credentials(authenticator, nonce_count="00000000"), Failure.MALFORMED),
        (credentials(authenticator, nonce_count="1"), Failure.MALFORMED),
        (credentials(authenticator, cnonce=None), Failure.MALFORMED),
        (credentials(authenticator, uri="/elsewhere"), Failure.URI),
        (credentials(authenticator, opaque="x"), Failure.OPAQUE),
        (credentials(authenticator, nonce="Zm9yZ2Vk"), Failure.NONCE),
    ]
    for given, failure in cases:
        assert await verify(authenticator, given, counter) is failure, failure
    md5_only = DigestAuthenticator(NonceSigner(SECRET, 300), ("MD5",), clock=clock)
    assert await verify(md5_only, credentials(md5_only), counter) is Failure.ALGORITHM


async def test_stale_only_with_the_right_password() -> None:
    clock = Clock(NOW)
    authenticator = DigestAuthenticator(NonceSigner(SECRET, 300), clock=clock)
    old = authenticator.signer.issue(NOW - 301)
    counter = MemoryNonceCounter()
    assert await verify(authenticator, credentials(authenticator, nonce=old), counter) is (
        Failure.STALE
    )
    wrong = credentials(authenticator, nonce=old, password="wrong")
    assert await verify(authenticator, wrong, counter) is Failure.CREDENTIALS
    assert any("stale=true" in c for c in authenticator.challenges(stale=True))
    assert not any("stale" in c for c in authenticator.challenges())


async def test_replay_in_memory() -> None:
    authenticator = DigestAuthenticator(NonceSigner(SECRET, 300), clock=Clock(NOW))
    counter = MemoryNonceCounter()
    nonce = authenticator.signer.issue(NOW)
    first = credentials(authenticator, nonce=nonce)
    assert await verify(authenticator, first, counter) is None
    assert await verify(authenticator, first, counter) is Failure.REPLAY
    third = credentials(authenticator, nonce=nonce, nonce_count="00000003")
    assert await verify(authenticator, third, counter) is None
    second = credentials(authenticator, nonce=nonce, nonce_count="00000002")
    assert await verify(authenticator, second, counter) is Failure.REPLAY


def test_challenges_in_preference_order() -> None:
    authenticator = DigestAuthenticator(NonceSigner(SECRET, 300), ("MD5", "SHA-256"))
    first, second = authenticator.challenges()
    assert first.startswith('Digest realm="pbxfront", qop="auth", algorithm=MD5, nonce="')
    assert "algorithm=SHA-256," in second
    with pytest.raises(ValueError, match="unknown"):
        DigestAuthenticator(NonceSigner(SECRET, 300), ("SHA-1",))


async def test_replay_across_the_cluster_in_postgres(pool: asyncpg.Pool) -> None:
    counter = PostgresNonceCounter(pool)
    expires = (datetime.now(UTC) + timedelta(minutes=5)).timestamp()
    assert await counter.advance("n1", 1, expires)
    assert not await counter.advance("n1", 1, expires)
    assert await counter.advance("n1", 2, expires)
    # Ten nodes racing with the same count: exactly one wins.
    results = await asyncio.gather(*(counter.advance("n1", 5, expires) for _ in range(10)))
    assert sorted(results) == [False] * 9 + [True]
    past = (datetime.now(UTC) - timedelta(minutes=1)).timestamp()
    assert await counter.advance("n2", 1, past)
    assert await counter.forget_expired(datetime.now(UTC)) == 1
    assert not await counter.advance("n1", 3, expires)


async def test_the_nonce_secret_is_shared(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as first, pool.acquire() as second:
        one, two = await asyncio.gather(load_secret(first), load_secret(second))
    assert one == two
    assert len(one) == 32


async def ha1_rows(pool: asyncpg.Pool, name: str) -> dict[str, str]:
    rows = await pool.fetch(
        "SELECT algorithm, ha1 FROM account_digests WHERE account = $1 AND realm = $2",
        name,
        REALM,
    )
    return {row["algorithm"]: row["ha1"] for row in rows}


async def test_ha1_only_for_event_senders(pool: asyncpg.Pool) -> None:
    accounts = AccountRepository(pool)
    await accounts.add("sender", frozenset({Role.EVENT_SENDER}), "first password 1")
    await accounts.add("ops", frozenset({Role.OPERATOR}), "operator password")
    assert await ha1_rows(pool, "sender") == {
        "MD5": compute_ha1("MD5", "sender", REALM, "first password 1"),
        "SHA-256": compute_ha1("SHA-256", "sender", REALM, "first password 1"),
    }
    assert await ha1_rows(pool, "ops") == {}
    assert await accounts.digest_ha1("ops", REALM, "MD5") is None
    await accounts.set_password("sender", "second password 2")
    assert await accounts.digest_ha1("sender", REALM, "SHA-256") == compute_ha1(
        "SHA-256", "sender", REALM, "second password 2"
    )
    # Granting the role is not enough: Digest needs the password once more.
    await accounts.set_roles("ops", frozenset({Role.OPERATOR, Role.EVENT_SENDER}))
    assert await accounts.digest_ha1("ops", REALM, "MD5") is None
    await accounts.set_password("ops", "operator password 2")
    assert await accounts.digest_ha1("ops", REALM, "MD5") is not None
    # Taking the role away removes the HA1s.
    await accounts.set_roles("sender", frozenset({Role.OPERATOR}))
    assert await ha1_rows(pool, "sender") == {}
    assert await accounts.remove("ops")
    assert await ha1_rows(pool, "ops") == {}
    # Basic (argon2) still works as before.
    assert await accounts.verify("sender", "second password 2") is not None
