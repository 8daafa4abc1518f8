"""An LDAP load generator: phones and PBXs searching the directory, as fast or as often as asked.

Each simulated client keeps one connection, binds once as its customer (simple bind) and then
sends searches one after the other, as a PBX does for reverse lookups. Requests are BER-encoded
with the directory's own writer (the few shapes phones send), answers are only framed and their
result codes read: the generator must cost far less than the server it measures. Spread over
processes like the HTTP generator (``load.py``), with the same result type.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

from services.bench.load import LoadResult, Pacer, run_spread
from services.directory.ber import element, integer, octets
from services.directory.protocol import message

# --- requests (BER as the directory service writes it: services/directory/ber.py) -------------


def equality(attribute: str, value: str) -> bytes:
    return element(0xA3, octets(attribute) + octets(value))


def prefix(attribute: str, initial: str) -> bytes:
    """``(attribute=initial*)``."""
    return element(0xA4, octets(attribute) + element(0x30, octets(initial, 0x80)))


def any_of(*filters: bytes) -> bytes:
    return element(0xA1, b"".join(filters))


def bind_request(name: str, password: str) -> bytes:
    return element(0x60, integer(3) + octets(name) + octets(password, 0x80))


def search_request(
    base: str, search_filter: bytes, attributes: Sequence[str], size_limit: int = 20
) -> bytes:
    """A subtree search as phones send it (no alias dereferencing, 10 s time limit)."""
    return element(
        0x63,
        octets(base)
        + integer(2, 0x0A)
        + integer(0, 0x0A)
        + integer(size_limit)
        + integer(10)
        + element(0x01, b"\x00")
        + search_filter
        + element(0x30, b"".join(octets(a) for a in attributes)),
    )


async def read_message(reader: asyncio.StreamReader) -> bytes:
    """One whole LDAPMessage (its TLV)."""
    head = await reader.readexactly(2)
    if head[1] & 0x80:
        extra = await reader.readexactly(head[1] & 0x7F)
        size = int.from_bytes(extra, "big")
        head += extra
    else:
        size = head[1]
    return head + await reader.readexactly(size)


def operation_of(raw: bytes) -> tuple[int, int | None]:
    """(protocolOp tag, resultCode for results with one) of an LDAPMessage."""
    position = 1
    first = raw[position]
    position += 1 + (first & 0x7F if first & 0x80 else 0)
    # messageID
    position += 2 + raw[position + 1]
    tag = raw[position]
    if tag in (0x61, 0x65):  # BindResponse, SearchResultDone: resultCode comes first
        length = raw[position + 1]
        inner = position + 2 + (length & 0x7F if length & 0x80 else 0)
        if raw[inner] == 0x0A:
            return tag, raw[inner + 2]
    return tag, None


# --- load ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Search:
    """One search a client sends: pre-encoded protocolOp, and the customer it binds as."""

    bind_name: str
    password: str
    operation: bytes


@dataclass(frozen=True)
class LdapLoad:
    host: str
    port: int
    searches: Sequence[Search]
    duration: float = 10.0
    processes: int = 2
    concurrency: int = 16  # connections per process
    rate: float | None = None  # searches per second in total; None = as fast as possible
    timeout: float = 10.0


async def _client(
    load: LdapLoad,
    own: list[Search],
    result: LoadResult,
    pacer: Pacer,
) -> None:
    error = result.error
    reader, writer = await asyncio.open_connection(load.host, load.port)
    try:
        first = own[0]
        writer.write(message(1, bind_request(first.bind_name, first.password)))
        tag, code = operation_of(await read_message(reader))
        if (tag, code) != (0x61, 0):
            error(f"bind as {first.bind_name}: result {code}")
            return
        for number, search in enumerate(itertools.cycle(own), start=2):
            begin = await pacer.turn()
            if begin is None:
                return
            writer.write(message(number % 2**31 or 1, search.operation))
            try:
                entries = 0
                async with asyncio.timeout(load.timeout):
                    while True:
                        tag, code = operation_of(await read_message(reader))
                        if tag == 0x65:
                            break
                        entries += tag == 0x64
            except (TimeoutError, asyncio.IncompleteReadError, OSError) as failure:
                error(f"{type(failure).__name__}: {failure}")
                return
            result.requests += 1
            # In HTTP terms: 200 found entries, 204 found none, 5xx an LDAP error (4 is
            # sizeLimitExceeded: the entries up to the limit, a success for a phone).
            status = (200 if entries else 204) if code in (0, 4) else 500 + (code or 0)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status < 300:
                result.latencies.append(time.perf_counter() - begin)
            else:
                error(f"search result code {code}")
    finally:
        writer.close()


async def _run_process(load: LdapLoad, index: int) -> LoadResult:
    result = LoadResult()
    share = list(load.searches[index :: load.processes])
    # A client binds as one customer and stays that customer's PBX.
    by_customer: dict[str, list[Search]] = {}
    for search in share:
        by_customer.setdefault(search.bind_name, []).append(search)
    groups = list(by_customer.values())
    rate = load.rate / load.processes if load.rate else None
    started = time.perf_counter()
    pacer = Pacer(started, started + load.duration, rate)
    outcomes = await asyncio.gather(
        *(_client(load, groups[n % len(groups)], result, pacer) for n in range(load.concurrency)),
        return_exceptions=True,
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            result.error(f"{type(outcome).__name__}: {outcome}")
    result.elapsed = time.perf_counter() - started
    return result


def _process_main(load: LdapLoad, index: int) -> LoadResult:
    import uvloop

    return uvloop.run(_run_process(load, index))


def run_ldap_load(load: LdapLoad) -> LoadResult:
    """Blocking: run the searches in ``load.processes`` processes and merge their results."""
    return run_spread(_process_main, load, load.processes)
