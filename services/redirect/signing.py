"""HMAC request signatures for the provider API (``/api/v1/redirect/``).

A provider signs every request with one of its API keys (key id ``rk_…`` and secret ``rs_…``,
shown once when the key is made) and sends::

    Authorization: PBXFRONT-HMAC-SHA256 KeyId=<key id>, Timestamp=<unix seconds>,
                   Nonce=<16-128 of A-Z a-z 0-9 _ ->, Signature=<hex HMAC-SHA256>

The signature is HMAC-SHA256, keyed with the secret's UTF-8 bytes, over these lines joined by
``\\n`` (no trailing newline)::

    PBXFRONT-HMAC-SHA256
    <key id>
    <timestamp>
    <nonce>
    <METHOD>
    <request target exactly as sent: path and query, percent-encoding untouched>
    <lowercase hex SHA-256 of the body (of b"" when there is none)>

The server accepts a timestamp within ``redirect.signature_max_skew`` seconds of its clock and a
nonce only once per key (remembered in PostgreSQL, so on every node). Golden vectors:
``tests/golden/redirect/signatures.json``. Everything here is plain and deterministic except the
``new_*`` generators.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from services.core import errors
from services.core.identity import printable

ALGORITHM = "PBXFRONT-HMAC-SHA256"
CHALLENGE = f'{ALGORITHM} realm="pbxfront redirect"'
SCOPES = ("redirect:read", "redirect:write", "redirect:transfer")

_KEY_ID = re.compile(r"rk_[0-9a-f]{16}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_TIMESTAMP = re.compile(r"\d{1,12}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")
_PARAMETER = re.compile(r'\s*([A-Za-z]+)\s*=\s*("?)([^",]*)\2\s*')


def refused(message: str) -> errors.Unauthenticated:
    return errors.Unauthenticated(message, (CHALLENGE,))


@dataclass(frozen=True)
class SignatureHeader:
    key_id: str
    timestamp: int
    nonce: str
    signature: str


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def string_to_sign(
    key_id: str, timestamp: int, nonce: str, method: str, target: str, body: bytes
) -> str:
    return "\n".join(
        (ALGORITHM, key_id, str(timestamp), nonce, method.upper(), target, body_digest(body))
    )


def sign(
    secret: str, key_id: str, timestamp: int, nonce: str, method: str, target: str, body: bytes
) -> str:
    message = string_to_sign(key_id, timestamp, nonce, method, target, body)
    return hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization(
    key_id: str, secret: str, method: str, target: str, body: bytes, timestamp: int, nonce: str
) -> str:
    """The Authorization header value a client sends (used by tests and documentation)."""
    signature = sign(secret, key_id, timestamp, nonce, method, target, body)
    return (
        f"{ALGORITHM} KeyId={key_id}, Timestamp={timestamp}, Nonce={nonce}, Signature={signature}"
    )


def parse_authorization(header: str | None) -> SignatureHeader:
    """The header's parts; Unauthenticated with the reason when absent or malformed."""
    if not header:
        raise refused(f"a signed request is required ({ALGORITHM})")
    scheme, _, rest = header.strip().partition(" ")
    if scheme.upper() != ALGORITHM:
        raise refused(f"Authorization must use {ALGORITHM}")
    values: dict[str, str] = {}
    for part in rest.split(","):
        match = _PARAMETER.fullmatch(part)
        if not match:
            raise refused(f"Authorization: cannot read {printable(part.strip(), 40)!r}")
        values.setdefault(match.group(1).lower(), match.group(3))
    missing = [n for n in ("keyid", "timestamp", "nonce", "signature") if not values.get(n)]
    if missing:
        names = {"keyid": "KeyId", "timestamp": "Timestamp", "nonce": "Nonce"}
        raise refused(f"Authorization: {names.get(missing[0], 'Signature')} is missing")
    if not _KEY_ID.fullmatch(values["keyid"]):
        raise refused("Authorization: KeyId is not a key id (rk_ and 16 hex digits)")
    if not _TIMESTAMP.fullmatch(values["timestamp"]):
        raise refused("Authorization: Timestamp must be Unix time in whole seconds")
    if not _NONCE.fullmatch(values["nonce"]):
        raise refused("Authorization: Nonce must be 16 to 128 of A-Z a-z 0-9 _ -")
    if not _SIGNATURE.fullmatch(values["signature"]):
        raise refused("Authorization: Signature must be 64 hex digits")
    return SignatureHeader(
        values["keyid"], int(values["timestamp"]), values["nonce"], values["signature"].lower()
    )


def check_timestamp(timestamp: int, now: float, max_skew: int) -> None:
    if abs(now - timestamp) > max_skew:
        raise refused(
            f"signature timestamp {timestamp} is more than {max_skew} s away from the server's "
            f"clock ({int(now)}); sign with the current time"
        )


def signature_matches(
    secret: str, header: SignatureHeader, method: str, target: str, body: bytes
) -> bool:
    expected = sign(secret, header.key_id, header.timestamp, header.nonce, method, target, body)
    return hmac.compare_digest(expected, header.signature)


def check_scopes(values: Iterable[str]) -> tuple[str, ...]:
    scopes = sorted({value.strip() for value in values if value.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise errors.Invalid(
            f"scope: unknown scope {printable(unknown[0], 40)!r} (known: {', '.join(SCOPES)})"
        )
    if not scopes:
        raise errors.Invalid(f"scope: at least one of {', '.join(SCOPES)}")
    return tuple(scopes)


def new_key_id() -> str:
    return "rk_" + secrets.token_hex(8)


def new_secret() -> str:
    return "rs_" + secrets.token_urlsafe(32)


def new_transfer_token() -> str:
    return "rt_" + secrets.token_urlsafe(24)


def token_digest(token: str) -> bytes:
    """Transfer tokens are stored as their SHA-256; lookups by hash reveal nothing by timing."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
