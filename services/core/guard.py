"""The connection guard every listener (HTTP, LDAP) accepts through.

A Frontend faces the internet, where one host can open thousands of connections and send
nothing. Three things keep that from filling a listener or the memory of a worker:

- caps on open connections, per source address (IPv6: per /64, as ``core.ratelimit`` counts)
  and in total, per listener and process; a connection over a cap is closed at accept, before
  anything is allocated for it;
- the accept loop hands a connection on only once it is admitted, and forgets it (the cap's
  slot is free again) exactly when it closes;
- the listeners' own deadlines (TLS: first byte and handshake, ``core.tls``; HTTP: request
  headers; LDAP: the first bind) close connections that never get anywhere.

Refusals are logged to the security log at most once per address every ``LOG_EVERY`` seconds
with how many were refused since, so a flood cannot flood the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from services.core.ratelimit import limiter_key

log = logging.getLogger(__name__)
security_log = logging.getLogger("pbxfront.security")

LOG_EVERY = 10.0
# Addresses whose refusals are remembered for the throttled log line.
_LOGGED_ADDRESSES = 10_000


def peer_text(peer: object) -> str:
    """A peer for a log line: IPv6 written ``[addr]:port`` so it is unambiguous."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


def peer_address(peer: object) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


class Ticket:
    """One admitted connection's slot; ``release`` is idempotent."""

    __slots__ = ("_guard", "_key")

    def __init__(self, guard: ConnectionGuard, key: str) -> None:
        self._guard: ConnectionGuard | None = guard
        self._key = key

    def release(self) -> None:
        if self._guard is not None:
            guard, self._guard = self._guard, None
            guard._release(self._key)


class ConnectionGuard:
    """Open-connection caps of one listener in one process."""

    def __init__(self, name: str, *, max_connections: int, max_per_address: int) -> None:
        self.name = name
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.open = 0
        self.refused = 0
        self._per_address: dict[str, int] = {}
        self._logged: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def count(self, address: str) -> int:
        return self._per_address.get(limiter_key(address), 0)

    def admit(self, address: str) -> Ticket | None:
        """A slot for a connection from ``address``, or None (then close it at once)."""
        key = limiter_key(address)
        held = self._per_address.get(key, 0)
        if self.open >= self.max_connections:
            self._refuse(address, f"{self.max_connections} connections open")
            return None
        if held >= self.max_per_address:
            self._refuse(address, f"{self.max_per_address} connections open from this address")
            return None
        self._per_address[key] = held + 1
        self.open += 1
        return Ticket(self, key)

    def _release(self, key: str) -> None:
        self.open -= 1
        held = self._per_address.get(key, 0) - 1
        if held > 0:
            self._per_address[key] = held
        else:
            self._per_address.pop(key, None)

    def _refuse(self, address: str, why: str) -> None:
        self.refused += 1
        now = time.monotonic()
        last, skipped = self._logged.get(address, (float("-inf"), 0))
        if now - last < LOG_EVERY:
            self._logged[address] = (last, skipped + 1)
            return
        self._logged[address] = (now, 0)
        self._logged.move_to_end(address)
        while len(self._logged) > _LOGGED_ADDRESSES:
            self._logged.popitem(last=False)
        more = f" (and {skipped} more since the last line)" if skipped else ""
        security_log.warning(
            "pbxfront security: connection-refused from %s listener=%s reason=%s%s",
            address,
            self.name,
            why.replace(" ", "-"),
            more,
        )


_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


# What a listener does with an admitted connection: ``serve(sock, peer, ticket)``. It owns the
# ticket from then on and releases it when the connection closes.
Serve = Callable[[socket.socket, object, Ticket], Awaitable[None]]


class AcceptLoop:
    """Accepts on a listening socket, admits through the guard, hands each connection to
    ``serve`` in a task of its own."""

    def __init__(self, sock: socket.socket, guard: ConnectionGuard, serve: Serve) -> None:
        self._sock = sock
        self.guard = guard
        self._serve = serve
        self.tasks: set[asyncio.Task[None]] = set()
        self._task = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, peer = await loop.sock_accept(self._sock)
            except asyncio.CancelledError:
                raise
            except OSError as error:  # EMFILE and the like: back off, keep serving
                log.error("%s: accept failed: %s", self.guard.name, error)
                await asyncio.sleep(0.1)
                continue
            ticket = self.guard.admit(peer_address(peer))
            if ticket is None:
                with contextlib.suppress(OSError):
                    # Reset rather than FIN: the refused peer's socket goes away at once and
                    # nothing lingers in TIME_WAIT on our side.
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                connection.close()
                continue
            task = loop.create_task(self._run(connection, peer, ticket))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run(self, connection: socket.socket, peer: object, ticket: Ticket) -> None:
        try:
            await self._serve(connection, peer, ticket)
        except BaseException:
            ticket.release()
            connection.close()
            raise

    def stop_accepting(self) -> None:
        self._task.cancel()
        self._sock.close()

    def close(self) -> None:
        """Stop accepting and cancel connections still being set up (``serve`` running)."""
        self.stop_accepting()
        for task in list(self.tasks):
            task.cancel()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
