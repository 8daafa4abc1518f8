"""``pbxfront bench events``: devices post events while pbxfront forwards them to syslog."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

from services.bench import seed
from services.bench.environment import (
    BenchOptions,
    device_hardware_id,
    device_load,
    environment,
    listener,
    with_connection,
)
from services.bench.load import Call, LoadResult, LoadSpec
from services.bench.measure import Row, compare, measure


class SyslogSink:
    """A syslog receiver over TCP (RFC 6587 octet counting) in a thread of the bench: counts the
    messages and notes when the first and the last arrived (since :meth:`mark`)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.messages = 0
        self.first: float | None = None
        self.last: float | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self._listener.accept()
                threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        buffer = b""
        with connection, contextlib.suppress(OSError):
            while chunk := connection.recv(1 << 16):
                buffer += chunk
                while True:
                    size, space, rest = buffer.partition(b" ")
                    if not space or not size.isdigit() or len(rest) < int(size):
                        break
                    buffer = rest[int(size) :]
                    now = time.monotonic()
                    self.first = self.first or now
                    self.last = now
                    self.messages += 1

    def mark(self) -> int:
        """Start timing anew (what came before, e.g. the audit rows of the bench's inventory
        forwarded at start-up, is not the intake's); the messages counted so far."""
        self.first = self.last = None
        return self.messages

    def close(self) -> None:
        self._listener.close()


def scenario_events(options: BenchOptions, log: Any) -> list[Row]:
    """Devices post events (proven by their certificates, over kept-alive connections) while
    pbxfront forwards them to a syslog receiver over TCP; goals: durable intake >= 0.7x the
    no-op POST, and forwarding keeps up with intake."""

    sink = SyslogSink()
    client_ca = options.work_dir / "pki" / "ca.pem"
    listeners = listener(
        "events",
        ["events", "noop"],
        options,
        f'request_client_certificate = true\nclient_ca = ["{client_ca}"]\n',
    ) + (
        f'[events]\ndestinations = ["tcp://127.0.0.1:{sink.port}?name=bench"]\n'
        "confirm_delay = 0.5\n"
        # Over kept-alive connections 64 clients are 64 devices, each posting dozens of events
        # a second: the per-device quota (600/min) would answer 429 after ten seconds. Set far
        # above the load, it is still checked on every event but never binds.
        "quota_events_per_minute = 10000000\nquota_bytes_per_minute = 1099511627776\n\n"
    )

    rows: list[Row] = []
    try:
        with environment(options, log, listeners=listeners, prepare=seed.clear_events) as env:
            target = env.target("events")
            calls: list[Call] = []
            noop: list[Call] = []
            for index in range(options.devices):
                cert = env.certificates.device_certificates[index]
                for number in range(5):
                    body = (
                        f"type=event&code={100 + number}&severity=Minor&source=SIP"
                        f"&text=registration {number} of {device_hardware_id(index)}"
                    ).encode()
                    calls.append(Call("/events", cert, "POST", body))
                    noop.append(Call("/noop", cert, "POST", body))

            def spec(calls_: list[Call]) -> LoadSpec:
                return device_load(env, target, calls_, keepalive=True)

            log("events: devices POST events over kept-alive connections:")
            baseline = measure(env, "pbxfront no-op POST, keep-alive", "pbxfront", spec(noop), log)
            rows.append(baseline)
            before = with_connection(env.dsn, seed.events_stored)
            forwarded_before = sink.mark()
            intake = measure(env, "events intake, keep-alive", "pbxfront", spec(calls), log)
            intake_end = time.monotonic()
            rows.append(compare(intake, baseline, 0.7))
            stored = with_connection(env.dsn, seed.events_stored) - before
            # Forwarding ran alongside; give the backlog as long again as the intake took.
            deadline = time.monotonic() + max(30.0, intake.result.elapsed)
            while sink.messages - forwarded_before < stored and time.monotonic() < deadline:
                time.sleep(0.2)
            messages = sink.messages - forwarded_before
            forwarded = LoadResult(requests=messages, errors=max(0, stored - messages))
            lag = ""
            if sink.first is not None and sink.last is not None:
                forwarded.elapsed = max(sink.last - sink.first, 1e-3)
                lag = f", the last {max(0.0, sink.last - intake_end):.1f} s after the intake"
            row = Row(f"syslog forwarding of {stored:,} events", forwarded, 0.0)
            row.goal = "keeps up with intake"
            row.met = messages >= stored and forwarded.rate >= 0.95 * intake.result.rate
            rate = f"{forwarded.rate:,.0f}/s"
            log(f"  forwarded {messages:,} of {stored:,} stored events ({rate}{lag})")
            rows.append(row)
    finally:
        sink.close()
    return rows
