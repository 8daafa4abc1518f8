"""Per-address token buckets: how often a source may fail before it is refused for a while.

Used wherever a caller can guess (unknown devices at the redirect service, passwords at the
device listener and the directory). One process each: with several workers or nodes an address
gets that many buckets, which bounds guessing just as well.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable


def limiter_key(address: str | None) -> str:
    """IPv6 callers are counted per /64 (one host can have all of it)."""
    if not address:
        return "-"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


class AddressLimiter:
    """A token bucket per source address, spent only by failures (one process).

    Only failures spend a token, so honest callers are never slowed down; but an address without
    tokens is refused every request, successful or not, so a guesser cannot tell a right answer
    from a wrong one by whether it was refused. Bounded: the least recently seen addresses are
    forgotten first.
    """

    def __init__(
        self,
        burst: int,
        per_second: float,
        *,
        max_addresses: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst = float(burst)
        self._rate = per_second
        self._max = max_addresses
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, key: str) -> float:
        now = self._clock()
        tokens, stamp = self._buckets.get(key, (self._burst, now))
        return min(self._burst, tokens + (now - stamp) * self._rate)

    def allows(self, address: str | None) -> bool:
        return self._tokens(limiter_key(address)) >= 1.0

    def retry_after(self, address: str | None) -> int:
        missing = 1.0 - self._tokens(limiter_key(address))
        return max(1, int(missing / self._rate + 0.999))

    def spend(self, address: str | None) -> None:
        key = limiter_key(address)
        tokens = self._tokens(key)
        self._buckets[key] = (max(0.0, tokens - 1.0), self._clock())
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)


class Refusal:
    """Why a caller is refused for now: ``scope`` "address" or "account", seconds to wait."""

    __slots__ = ("retry_after", "scope")

    def __init__(self, scope: str, retry_after: int) -> None:
        self.scope = scope
        self.retry_after = retry_after


class AuthLimiter:
    """Authentication failures counted per source address and per account (one process).

    - Per address (IPv6: per /64): ``address_burst`` failures, refilled at
      ``address_per_second``. An address out of tokens is refused every credentialed request,
      right or wrong, so it cannot tell a hit from a miss.
    - Per account: ``account_burst`` failures from any address, refilled at
      ``account_per_second``. This catches guessing spread over many addresses. So that it
      cannot lock the real owner out, an exhausted account is refused only from addresses that
      have not authenticated as that account within ``trusted_seconds``: devices and people at
      their usual address keep working while the account is under attack; a new address has to
      wait until the account's bucket refills.

    A refused request spends nothing (it never reaches a password check), so one blocked
    address cannot drain an account's bucket either. Bounded: the least recently seen entries
    are forgotten first.
    """

    def __init__(
        self,
        *,
        address_burst: int,
        address_per_second: float,
        account_burst: int,
        account_per_second: float,
        trusted_seconds: float = 86400.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.addresses = AddressLimiter(
            address_burst, address_per_second, max_addresses=max_entries, clock=clock
        )
        self.accounts = AddressLimiter(
            account_burst, account_per_second, max_addresses=max_entries, clock=clock
        )
        self._trusted_seconds = trusted_seconds
        self._trusted: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    @staticmethod
    def _account_key(account: str) -> str:
        # Accounts live in their own limiter; the prefix keeps a name from looking like an
        # address there, the cut bounds the memory an attacker's long names take.
        return "account:" + account[:128]

    def _is_trusted(self, address: str | None, account: str) -> bool:
        key = (limiter_key(address), account[:128])
        expires = self._trusted.get(key)
        if expires is None:
            return False
        if expires < self._clock():
            del self._trusted[key]
            return False
        return True

    def check(self, address: str | None, account: str | None = None) -> Refusal | None:
        """None if the caller may try now, else why not and for how long."""
        if not self.addresses.allows(address):
            return Refusal("address", self.addresses.retry_after(address))
        if account is not None:
            key = self._account_key(account)
            if not self.accounts.allows(key) and not self._is_trusted(address, account):
                return Refusal("account", self.accounts.retry_after(key))
        return None

    def failed(self, address: str | None, account: str | None = None) -> None:
        self.addresses.spend(address)
        if account is not None:
            self.accounts.spend(self._account_key(account))

    def succeeded(self, address: str | None, account: str) -> None:
        key = (limiter_key(address), account[:128])
        self._trusted[key] = self._clock() + self._trusted_seconds
        self._trusted.move_to_end(key)
        while len(self._trusted) > self._max:
            self._trusted.popitem(last=False)


class QuotaLimiter:
    """A token bucket per key that costs what it is given (events, bytes), for quotas.

    ``per_minute`` units refill per minute up to ``per_minute`` (one minute's worth may come
    at once). Bounded like :class:`AddressLimiter`.
    """

    def __init__(
        self,
        per_minute: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._max = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, key: str) -> float:
        now = self._clock()
        tokens, stamp = self._buckets.get(key, (self._capacity, now))
        return min(self._capacity, tokens + (now - stamp) * self._rate)

    def retry_after(self, key: str, cost: float = 1.0) -> int | None:
        """None if ``cost`` fits now, else the whole seconds until it does."""
        missing = min(cost, self._capacity) - self._tokens(key)
        if missing <= 0:
            return None
        return max(1, int(missing / self._rate + 0.999))

    def spend(self, key: str, cost: float = 1.0) -> None:
        tokens = self._tokens(key)
        self._buckets[key] = (max(0.0, tokens - cost), self._clock())
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
