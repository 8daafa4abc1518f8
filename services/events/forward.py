"""Forwarding stored events to syslog destinations: at least once, in order, across restarts.

One :class:`Forwarder` per destination and process. It works only while it holds the
destination's session-level advisory lock on its own PostgreSQL connection, so exactly one process
of the cluster forwards to a destination; when that process or its connection dies the lock goes
with it and a waiting forwarder elsewhere takes over from the durable cursor
(``event_destinations.delivered_id``).

Syslog over UDP, TCP and TLS has no acknowledgement, so "delivered" means: sent, and the
connection stayed up for ``events.confirm_delay`` seconds afterwards (a receiver that goes away
closes it, an unreachable UDP port answers with ICMP). Only then does the cursor move. A
connection lost sooner rewinds to the cursor and sends again, so a receiver may see a message
twice (each carries the event id in its structured data) but never misses one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import asyncpg

from services.core.config import EventsSettings
from services.core.identity import printable
from services.events.delivery import DeliveryRepository
from services.events.repository import NOTIFY_CHANNEL, EventRepository
from services.events.syslog import Destination, as_outgoing, format_event, octet_counted

log = logging.getLogger(__name__)

# services/backup announces each new row of backup_alerts here (migration 005).
BACKUP_ALERT_CHANNEL = "pbxfront_backup_alert"
# services/core/audit.py announces new audit rows here (migration 015); imported the same way.
AUDIT_CHANNEL = "pbxfront_audit"

_SEND_TIMEOUT = 10.0
_NETWORK_ERRORS = (OSError, ssl.SSLError, TimeoutError, ConnectionError)
_DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass
class ForwardStatus:
    """What a forwarder knows, for /metrics."""

    name: str
    holding: bool = False
    delivered_id: int = 0
    newest_id: int = 0
    oldest_undelivered_at: datetime | None = None
    sent: int = 0
    reconnects: int = 0

    @property
    def backlog(self) -> int:
        return max(0, self.newest_id - self.delivered_id)


class Sender(Protocol):
    alive: bool

    async def send(self, messages: list[bytes]) -> None: ...

    def close(self) -> None: ...


class StreamSender:
    """TCP (RFC 6587 octet counting) or TLS (RFC 5425, same framing)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.alive = True
        self._reader = reader
        self._writer = writer
        # Syslog receivers send nothing; EOF or an error here means the receiver went away.
        self._watch = asyncio.get_running_loop().create_task(self._watch_reader())

    @classmethod
    async def open(cls, destination: Destination, context: ssl.SSLContext | None) -> StreamSender:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                destination.host,
                destination.port,
                ssl=context,
                server_hostname=destination.host if context is not None else None,
            ),
            _SEND_TIMEOUT,
        )
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return cls(reader, writer)

    async def _watch_reader(self) -> None:
        with contextlib.suppress(*_NETWORK_ERRORS):
            while await self._reader.read(4096):
                pass
        self.alive = False

    async def send(self, messages: list[bytes]) -> None:
        self._writer.write(b"".join(octet_counted(message) for message in messages))
        await asyncio.wait_for(self._writer.drain(), _SEND_TIMEOUT)

    def close(self) -> None:
        self.alive = False
        self._watch.cancel()
        self._writer.close()


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, sender: DatagramSender) -> None:
        self._sender = sender

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable on a connected UDP socket: nobody is listening.
        self._sender.alive = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._sender.alive = False


class DatagramSender:
    """UDP (RFC 5426): one message per datagram."""

    def __init__(self) -> None:
        self.alive = True
        self._transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, destination: Destination) -> DatagramSender:
        sender = cls()
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _DatagramProtocol(sender), remote_addr=(destination.host, destination.port)
        )
        sender._transport = transport
        return sender

    async def send(self, messages: list[bytes]) -> None:
        assert self._transport is not None
        for message in messages:
            if not self.alive:
                raise ConnectionRefusedError("syslog receiver unreachable (ICMP)")
            self._transport.sendto(message)
        # Give an ICMP error a moment to arrive before this batch counts as sent.
        await asyncio.sleep(0)

    def close(self) -> None:
        self.alive = False
        if self._transport is not None:
            self._transport.close()


async def tls_context(destination: Destination) -> ssl.SSLContext:
    """Verifies the receiver's certificate and name against ``ca`` (else the system store)."""
    cafile = str(destination.ca) if destination.ca is not None else None
    return await asyncio.to_thread(ssl.create_default_context, cafile=cafile)


@dataclass
class _PumpState:
    """How far one pump got: the cursor (``delivered``), what was sent after it (``position``,
    ``in_flight``: sent at, last id, count) and the connection to the destination."""

    delivered: int
    position: int
    in_flight: collections.deque[tuple[float, int, int]] = field(default_factory=collections.deque)
    sender: Sender | None = None
    backoff: float = 0.1
    refreshed: float = 0.0


class Forwarder:
    def __init__(
        self, destination: Destination, settings: EventsSettings, dsn: str, status: ForwardStatus
    ) -> None:
        self.destination = destination
        self.status = status
        self._settings = settings
        self._dsn = dsn
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._holder = f"{socket.gethostname()}:{os.getpid()}"
        self._last_error: str | None = None
        # Config-backup alerts to turn into events before the next read (all at the start).
        self._alerts_waiting = True

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()

    def _on_backup_alert(self, *_args: object) -> None:
        self._alerts_waiting = True
        self._wake.set()

    async def _run(self) -> None:
        delay = 0.1
        while not self._closed:
            try:
                connection = await asyncpg.connect(self._dsn, timeout=5.0)
            except _DATABASE_ERRORS as error:
                log.warning("events forwarding %s: database unreachable: %s", self._name, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.reconnect_max_delay)
                continue
            try:
                await self._hold_and_forward(connection)
                delay = 0.1
            except _DATABASE_ERRORS as error:
                log.warning("events forwarding %s: database connection lost: %s", self._name, error)
            finally:
                self.status.holding = False
                with contextlib.suppress(*_DATABASE_ERRORS):
                    await asyncio.wait_for(connection.close(), 5.0)
            await asyncio.sleep(delay)

    @property
    def _name(self) -> str:
        return self.destination.name

    async def _hold_and_forward(self, connection: asyncpg.Connection) -> None:
        repository = DeliveryRepository(connection)
        while not await repository.try_forward_lock(self._name):
            if self._closed:
                return
            # Another node forwards to this destination; take over when its lock goes.
            await asyncio.sleep(1.0)
        self.status.holding = True
        await connection.add_listener(NOTIFY_CHANNEL, self._on_notify)
        await connection.add_listener(BACKUP_ALERT_CHANNEL, self._on_backup_alert)
        await connection.add_listener(AUDIT_CHANNEL, self._on_backup_alert)
        self._alerts_waiting = True
        delivered = await repository.ensure_cursor(
            self._name,
            self.destination.url,
            from_end=self._settings.new_destination_start == "end",
            holder=self._holder,
        )
        log.info(
            "events forwarding to %s (%s): this process forwards, from event %d on",
            self._name,
            self.destination.describe(),
            delivered + 1,
        )
        await self._pump(repository, EventRepository(connection), delivered)

    async def _open(self) -> Sender:
        if self.destination.scheme == "udp":
            return await DatagramSender.open(self.destination)
        context = await tls_context(self.destination) if self.destination.scheme == "tls" else None
        return await StreamSender.open(self.destination, context)

    async def _problem(self, repository: DeliveryRepository, message: str) -> None:
        if message != self._last_error:
            log.warning("events forwarding to %s: %s", self._name, message)
            await repository.record_error(self._name, message)
        self._last_error = message

    async def _pump(
        self, repository: DeliveryRepository, events: EventRepository, delivered: int
    ) -> None:
        state = _PumpState(delivered=delivered, position=delivered)
        try:
            while not self._closed:
                sender = await self._connected(repository, state)
                if sender is None:
                    continue
                self._wake.clear()
                if self._alerts_waiting:
                    await self._import_alerts(events)
                sent = await self._send_pending(repository, sender, state)
                if sent is None:
                    continue  # the sender is dead: reconnect and send again from the cursor
                state.delivered = await self._confirm(
                    repository, sender, state.in_flight, state.delivered
                )
                now = time.monotonic()
                if now - state.refreshed > 1.0:
                    state.refreshed = now
                    await self._refresh_status(repository, events, state.delivered)
                if not sent:
                    await self._wait_for_news(state)
        finally:
            if state.sender is not None:
                state.sender.close()

    async def _connected(self, repository: DeliveryRepository, state: _PumpState) -> Sender | None:
        """The live sender, opened again (rewinding to the cursor) when the last one died; None
        when it cannot connect (after the backoff)."""
        if state.sender is not None and state.sender.alive:
            return state.sender
        if state.sender is not None:
            state.sender.close()
            state.sender = None
            # Whatever was not yet confirmed goes again.
            state.position = state.delivered
            state.in_flight.clear()
            self.status.reconnects += 1
        try:
            state.sender = await self._open()
        except _NETWORK_ERRORS as error:
            await self._problem(repository, f"cannot connect: {error}")
            await asyncio.sleep(state.backoff)
            state.backoff = min(state.backoff * 2, self._settings.reconnect_max_delay)
            return None
        if self._last_error is not None:
            log.info("events forwarding to %s: connected again", self._name)
            self._last_error = None
        state.backoff = 0.1
        return state.sender

    async def _import_alerts(self, events: EventRepository) -> None:
        # The backup service tells of changed and stale configs through PostgreSQL;
        # whichever forwarder runs first imports them, the others find nothing.
        self._alerts_waiting = False
        await events.import_backup_alerts(datetime.now(UTC))
        while await events.import_audit(datetime.now(UTC)) >= 1000:
            pass  # a large apply: import all of it before forwarding on

    async def _send_pending(
        self, repository: DeliveryRepository, sender: Sender, state: _PumpState
    ) -> int | None:
        """Send the next batch after ``state.position``: how many events (0 when none is
        pending), None when the send failed (the sender is then dead)."""
        settings = self._settings
        rows = await repository.pending(
            state.position, settings.forward_batch, settings.forward_repeats
        )
        if not rows:
            return 0
        messages = [
            format_event(
                as_outgoing(row),
                message_format=self.destination.format,
                facility=settings.facility,
                max_bytes=settings.max_message_bytes,
            )
            for row in rows
        ]
        try:
            await sender.send(messages)
        except _NETWORK_ERRORS as error:
            await self._problem(repository, f"send failed: {printable(str(error))}")
            sender.alive = False
            return None
        state.position = rows[-1]["id"]
        state.in_flight.append((time.monotonic(), state.position, len(rows)))
        self.status.sent += len(rows)
        return len(rows)

    async def _wait_for_news(self, state: _PumpState) -> None:
        """Until a new event is announced, or it is time to confirm what is in flight."""
        wait = self._settings.confirm_delay / 2 if state.in_flight else 1.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(wait, 0.01))

    async def _confirm(
        self,
        repository: DeliveryRepository,
        sender: Sender,
        in_flight: collections.deque[tuple[float, int, int]],
        delivered: int,
    ) -> int:
        now = time.monotonic()
        last = None
        count = 0
        while in_flight and sender.alive and now - in_flight[0][0] >= self._settings.confirm_delay:
            _, last, sent = in_flight.popleft()
            count += sent
        if last is None:
            return delivered
        await repository.advance(self._name, last, count)
        self.status.delivered_id = last
        return last

    async def _refresh_status(
        self, repository: DeliveryRepository, events: EventRepository, delivered: int
    ) -> None:
        self.status.delivered_id = delivered
        self.status.newest_id = await events.newest_id()
        self.status.oldest_undelivered_at = (
            await repository.oldest_after(delivered) if self.status.newest_id > delivered else None
        )
