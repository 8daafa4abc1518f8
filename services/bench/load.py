"""The load generator: simulated devices polling over real TLS with their own client certificates.

Spread over several processes (each on uvloop) so one Python process is not the limit. Every
request is timed from its start (or, at a fixed rate, from its scheduled start, so a slow server
cannot hide queueing) to the last byte of the answer. A fresh TLS connection per request is what
devices do; ``keepalive`` reuses one connection per simulated client instead.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import socket
import ssl
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

# What a generator process is handed (LoadSpec, or the LDAP generator's own).
S = TypeVar("S")


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    tls: bool = True
    ca: Path | None = None


@dataclass(frozen=True)
class Call:
    """One request a simulated device makes: path (with query) and its certificate."""

    path: str
    certificate: Path | None = None
    method: str = "GET"
    body: bytes = b""
    # Extra request header lines (e.g. Authorization), each "Name: value".
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadSpec:
    target: Target
    calls: Sequence[Call]
    # The private key shared by the simulated devices' certificates (see environment.py).
    key: Path | None = None
    duration: float = 10.0
    processes: int = 2
    concurrency: int = 32  # per process
    keepalive: bool = False
    rate: float | None = None  # total requests per second; None = as fast as possible
    once: bool = False  # send every call exactly once, then stop (the storm)
    timeout: float = 30.0
    # A new connection per request, but resuming each device's previous TLS session (tickets /
    # session ids) instead of a full handshake; implies keepalive = False.
    resume: bool = False


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    statuses: dict[int, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    # Connections whose TLS session was resumed (spec.resume), of those that offered one.
    resumed: int = 0
    offered: int = 0

    @property
    def resumed_share(self) -> float:
        """Resumed connections of those that offered a session (NaN when none did)."""
        return self.resumed / self.offered if self.offered else float("nan")

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0

    def percentile(self, fraction: float) -> float:
        """Milliseconds; nearest-rank percentile over all successful requests."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
        return ordered[index] * 1000.0

    def error(self, text: str) -> None:
        """One failed request; the first five failures say why."""
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text)

    def answered(self, status: int, seconds: float, what: str) -> None:
        """One request answered with HTTP ``status`` ``seconds`` after it began: a 2xx or 3xx
        counts its latency, anything else is a failure naming ``what``."""
        self.requests += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if 200 <= status < 400:
            self.latencies.append(seconds)
        else:
            self.error(f"HTTP {status} for {what}")

    def merge(self, other: LoadResult) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.resumed += other.resumed
        self.offered += other.offered
        self.elapsed = max(self.elapsed, other.elapsed)
        self.latencies.extend(other.latencies)
        for status, count in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count
        self.error_samples.extend(other.error_samples[: max(0, 5 - len(self.error_samples))])


class Pacer:
    """Open-loop pacing shared by one process's workers: requests begin at ``rate`` per second
    in all from ``started`` (None: each as soon as its worker is free), none at or after
    ``deadline`` (an unpaced run that is not ``bounded`` ignores it: a ``once`` run ends with
    its calls). A request's time runs from its slot, not from when a busy worker got to it, so
    a server that falls behind shows in the latencies."""

    def __init__(
        self, started: float, deadline: float, rate: float | None, *, bounded: bool = True
    ) -> None:
        self.started = started
        self.deadline = deadline
        self.rate = rate
        self.bounded = bounded
        self._slots = itertools.count()

    def _slot(self) -> tuple[float | None, float]:
        now = time.perf_counter()
        if self.rate is None:
            return (None if self.bounded and now >= self.deadline else now), now
        if self.bounded and now >= self.deadline:
            return None, now
        scheduled = self.started + next(self._slots) / self.rate
        return (None if scheduled >= self.deadline else scheduled), now

    async def turn(self) -> float | None:
        """When the worker's next request begins, once its slot has come; None: the run is over."""
        slot, now = self._slot()
        if slot is not None and slot > now:
            await asyncio.sleep(slot - now)
        return slot

    def turn_blocking(self) -> float | None:
        """:meth:`turn` for a worker thread."""
        slot, now = self._slot()
        if slot is not None and slot > now:
            time.sleep(slot - now)
        return slot


class _Client:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self._contexts: dict[Path | None, ssl.SSLContext] = {}
        self.host_header = f"{spec.target.host}:{spec.target.port}".encode()

    def context(self, certificate: Path | None) -> ssl.SSLContext | None:
        if not self.spec.target.tls:
            return None
        context = self._contexts.get(certificate)
        if context is None:
            context = ssl.create_default_context(
                cafile=str(self.spec.target.ca) if self.spec.target.ca else None
            )
            if certificate is not None and self.spec.key is not None:
                context.load_cert_chain(str(certificate), str(self.spec.key))
            if len(self._contexts) > 4096:
                self._contexts.clear()
            self._contexts[certificate] = context
        return context

    def request_bytes(self, call: Call, keepalive: bool) -> bytes:
        connection = b"keep-alive" if keepalive else b"close"
        head = (
            f"{call.method} {call.path} HTTP/1.1\r\n".encode()
            + b"Host: "
            + self.host_header
            + b"\r\nConnection: "
            + connection
            + b"\r\nUser-Agent: pbxfront-bench\r\n"
        )
        for header in call.headers:
            head += header.encode() + b"\r\n"
        if call.body or call.method in ("PUT", "POST"):
            head += f"Content-Length: {len(call.body)}\r\n".encode()
        return head + b"\r\n" + call.body

    async def open(self, call: Call) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        target = self.spec.target
        return await asyncio.open_connection(
            target.host,
            target.port,
            ssl=self.context(call.certificate),
            server_hostname=target.host if target.tls else None,
        )


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        lowered = name.strip().lower()
        if lowered == b"content-length":
            length = int(value.strip())
        elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


def _process_rate(spec: LoadSpec) -> float | None:
    """This process's share of the run's request rate (None: as fast as it can)."""
    return spec.rate / spec.processes if spec.rate else None


def _by_device(calls: Sequence[Call]) -> list[list[Call]]:
    """The calls grouped by the device (client certificate) that makes them, in first-seen order."""
    devices: dict[Path | None, list[Call]] = {}
    for call in calls:
        devices.setdefault(call.certificate, []).append(call)
    return list(devices.values())


async def _run_process(spec: LoadSpec, index: int) -> LoadResult:
    client = _Client(spec)
    result = LoadResult()
    # This process's share of the calls: every call belongs to exactly one process.
    share = list(spec.calls[index :: spec.processes])
    if not share:
        return result
    cycle = iter(share) if spec.once else itertools.cycle(share)
    started = time.perf_counter()
    pacer = Pacer(started, started + spec.duration, _process_rate(spec), bounded=not spec.once)
    # Over a kept-alive connection a client stays one device (its certificate proves it) and
    # cycles through that device's calls.
    device_calls = _by_device(share)

    async def worker(number: int) -> None:
        own = itertools.cycle(device_calls[number % len(device_calls)]) if spec.keepalive else None
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                call = next(own) if own is not None else next(cycle, None)
                if call is None:
                    return
                begin = await pacer.turn()
                if begin is None:
                    return
                try:
                    async with asyncio.timeout(spec.timeout):
                        if connection is None:
                            connection = await client.open(call)
                        reader, writer = connection
                        writer.write(client.request_bytes(call, spec.keepalive))
                        status = await _read_response(reader)
                        if not spec.keepalive:
                            writer.close()
                            connection = None
                except (
                    OSError,
                    asyncio.IncompleteReadError,
                    TimeoutError,
                    ValueError,
                    ssl.SSLError,
                ) as error:
                    result.error(f"{type(error).__name__}: {error}")
                    if connection is not None:
                        connection[1].close()
                        connection = None
                    continue
                result.answered(status, time.perf_counter() - begin, call.path)
        finally:
            if connection is not None:
                connection[1].close()

    await asyncio.gather(*(worker(number) for number in range(spec.concurrency)))
    result.elapsed = time.perf_counter() - started
    return result


def _read_response_sync(stream: BinaryIO) -> int:
    """``_read_response`` for a blocking socket's file."""
    status_line = stream.readline()
    status = int(status_line.split()[1])
    length = 0
    chunked = False
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        lowered = name.strip().lower()
        if lowered == b"content-length":
            length = int(value.strip())
        elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while size := int(stream.readline().strip().split(b";")[0], 16):
            stream.read(size + 2)
        stream.readline()
    elif length:
        stream.read(length)
    return status


def _run_resuming(spec: LoadSpec, index: int) -> LoadResult:
    """Threads with blocking sockets: asyncio cannot hand a saved TLS session to a new
    connection, the ``ssl`` module's sockets can. The handshakes' crypto runs without the GIL."""
    client = _Client(spec)
    result = LoadResult()
    share = list(spec.calls[index :: spec.processes])
    if not share:
        return result
    device_calls = _by_device(share)
    lock = threading.Lock()
    started = time.perf_counter()
    pacer = Pacer(started, started + spec.duration, _process_rate(spec))
    target = spec.target

    def worker(number: int) -> None:
        sessions: dict[Path | None, ssl.SSLSession] = {}
        calls = itertools.cycle(device_calls[number % len(device_calls)])
        while True:
            call = next(calls)
            begin = pacer.turn_blocking()
            if begin is None:
                return
            context = client.context(call.certificate)
            offered = call.certificate in sessions
            try:
                with socket.create_connection((target.host, target.port), spec.timeout) as raw:
                    assert context is not None
                    with context.wrap_socket(
                        raw,
                        server_hostname=target.host,
                        session=sessions.get(call.certificate),
                    ) as sock:
                        sock.sendall(client.request_bytes(call, False))
                        with sock.makefile("rb") as stream:
                            status = _read_response_sync(stream)
                        resumed = sock.session_reused
                        if sock.session is not None:
                            sessions[call.certificate] = sock.session
            except (OSError, ValueError, ssl.SSLError) as error:
                with lock:
                    result.error(f"{type(error).__name__}: {error}")
                continue
            elapsed = time.perf_counter() - begin
            with lock:
                result.resumed += bool(resumed)
                result.offered += offered
                result.answered(status, elapsed, call.path)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(spec.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.elapsed = time.perf_counter() - started
    return result


def _connect_once(
    target: Target,
    context: ssl.SSLContext,
    request: bytes,
    session: ssl.SSLSession | None,
    timeout: float,
) -> tuple[int, ssl.SSLSession | None, bool]:
    """One request over a new connection offering ``session``: status, session, resumed."""
    with (
        socket.create_connection((target.host, target.port), timeout) as raw,
        context.wrap_socket(raw, server_hostname=target.host, session=session) as sock,
    ):
        sock.sendall(request)
        with sock.makefile("rb") as stream:
            status = _read_response_sync(stream)
        return status, sock.session, bool(sock.session_reused)


def _storm_resuming_main(spec: LoadSpec, index: int, barrier: Any) -> LoadResult:
    """The resumed storm in one generator process: every device of its share polls once and
    keeps its TLS session; then (``barrier``, twice: all hold sessions, the server restarted)
    every device reconnects once offering it. Only that second round is measured."""
    client = _Client(spec)
    result = LoadResult()
    share = list(spec.calls[index :: spec.processes])
    # One client context per device, kept: a session only resumes with the context it came from.
    contexts: dict[int, ssl.SSLContext] = {}
    sessions: dict[int, ssl.SSLSession] = {}
    lock = threading.Lock()

    def round_of(measured: bool) -> None:
        pending = iter(range(len(share)))

        def worker() -> None:
            while True:
                with lock:
                    number = next(pending, None)
                if number is None:
                    return
                call = share[number]
                begin = time.perf_counter()
                try:
                    context = contexts.get(number)
                    if context is None:
                        context = contexts[number] = _device_context(spec, call.certificate)
                    offered = sessions.get(number) if measured else None
                    status, session, resumed = _connect_once(
                        spec.target,
                        context,
                        client.request_bytes(call, False),
                        offered,
                        spec.timeout,
                    )
                except (OSError, ValueError, ssl.SSLError) as error:
                    when = "after" if measured else "before"
                    with lock:
                        result.error(f"{when} the restart: {type(error).__name__}: {error}")
                    continue
                elapsed = time.perf_counter() - begin
                with lock:
                    if session is not None and not measured:
                        sessions[number] = session
                    if not measured:
                        continue
                    result.offered += offered is not None
                    result.resumed += resumed
                    result.answered(status, elapsed, call.path)

        threads = [threading.Thread(target=worker) for _ in range(spec.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    round_of(measured=False)
    barrier.wait()  # every process holds its devices' sessions
    barrier.wait()  # the server has restarted
    started = time.perf_counter()
    round_of(measured=True)
    result.elapsed = time.perf_counter() - started
    return result


def _device_context(spec: LoadSpec, certificate: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(spec.target.ca) if spec.target.ca else None)
    if certificate is not None and spec.key is not None:
        context.load_cert_chain(str(certificate), str(spec.key))
    return context


def run_resumed_storm(spec: LoadSpec, restart: Callable[[], None]) -> LoadResult:
    """Blocking: every device polls once and keeps its session, ``restart()`` runs (the server
    restarts, or nothing), then every device reconnects once offering its session; the result
    is that reconnect round's."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(spec.processes) as pool:
        # Bounded: a generator process that dies before the barrier must not hang the bench.
        barrier = manager.Barrier(spec.processes + 1, timeout=900)
        pending = pool.starmap_async(
            _storm_resuming_main, [(spec, i, barrier) for i in range(spec.processes)]
        )
        barrier.wait()
        restart()
        barrier.wait()
        parts = pending.get()
    total = LoadResult()
    for part in parts:
        total.merge(part)
    return total


def _process_main(spec: LoadSpec, index: int) -> LoadResult:
    if spec.resume:
        return _run_resuming(spec, index)

    import uvloop

    return uvloop.run(_run_process(spec, index))


def run_spread(main: Callable[[S, int], LoadResult], spec: S, processes: int) -> LoadResult:
    """Blocking: ``main(spec, index)`` in ``processes`` fresh processes, results merged."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        parts = pool.starmap(main, [(spec, i) for i in range(processes)])
    total = LoadResult()
    for part in parts:
        total.merge(part)
    return total


def run_load(spec: LoadSpec) -> LoadResult:
    """Blocking: run the load in ``spec.processes`` processes and merge their results."""
    return run_spread(_process_main, spec, spec.processes)
