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
