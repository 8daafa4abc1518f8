"""Explicit TLS session-ticket keys, so that every server context of a listener encrypts and
accepts the same session tickets: in every worker process of the node, every context rebuilt
by a certificate reload (SIGHUP), and (the key kept in PostgreSQL, ``core/ticketstore.py``) on
every node and after a restart. Each listener has a key of its own (runner.build_holders).

Python's ``ssl`` has no API for ticket keys. OpenSSL has one, ``SSL_CTX_set_tlsext_ticket_keys``
(a macro over ``SSL_CTX_ctrl``), reached here with ctypes on the very libssl that ``_ssl`` is
linked against (symbols looked up through ``_ssl``'s own handle, never a second copy found on
disk). What ctypes needs is the context's ``SSL_CTX *``, which CPython keeps as the first field of
its ``SSLContext`` object. Nothing of that is taken on trust: ``TicketKeys.load`` reads the
pointer, then checks it against the ``SSL *`` of a connection object made from the same context
(whose own back-reference to the context must be where CPython keeps it) through
``SSL_get_SSL_CTX``, asks OpenSSL for the key length it expects, and only then sets a key and
proves with in-memory handshakes, on this Python and this OpenSSL, that a TLS 1.2 and a TLS 1.3
session issued by one context resumes on another context with the same key, and that a ticket
under an unknown key gets a full handshake (never an error). If any step fails, ``load`` raises
TicketKeyError saying why; the runner then still shares OpenSSL's own random keys by building
the contexts before the workers fork, until a reload.

OpenSSL takes one key at a time this way (the callback that would accept a previous key as well,
``SSL_CTX_set_tlsext_ticket_key_evp_cb``, would run Python inside every handshake through a
ctypes callback and drive OpenSSL's HMAC and cipher contexts by hand: out of ctypes' safe reach),
so a new key makes the tickets under the old one fall back to a full handshake. What that costs
at a rotation of the shared key: every device's first reconnect after it is a full handshake
(measured in tests/test_ticket_store.py: 0 % of the tickets held across a rotation resumed),
once per device per ``tls.ticket_key_rotation_hours``. Stdlib only, so the tests can prove it
under every installed Python.
"""

from __future__ import annotations

import ctypes
import hmac
import secrets
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass

# OpenSSL 1.1.0+ (include/openssl/ssl.h, ssl/s3_lib.c): a 16-byte key name, a 32-byte HMAC key
# and a 32-byte AES key, set through SSL_CTX_ctrl with this command (which, given no buffer,
# answers the length it expects).
KEY_LENGTH = 80
_SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59


class TicketKeyError(Exception):
    """Ticket keys cannot be set safely on this Python / OpenSSL; the message says why."""


@dataclass(frozen=True)
class _Binding:
    ctrl: Callable[[int, int, int, object], int]
    ssl_ctx_of_ssl: Callable[[int], int]


def _binding() -> _Binding:
    if sys.implementation.name != "cpython":
        raise TicketKeyError(f"{sys.implementation.name} is not CPython")
    if not ssl.OPENSSL_VERSION.startswith("OpenSSL ") or ssl.OPENSSL_VERSION_INFO < (1, 1, 1):
        raise TicketKeyError(f"{ssl.OPENSSL_VERSION} is not OpenSSL 1.1.1 or later")
    import _ssl

    path = getattr(_ssl, "__file__", None)
    if path is None:
        raise TicketKeyError("the _ssl module is built into the interpreter")
    try:
        library = ctypes.CDLL(path)
        ctrl = library.SSL_CTX_ctrl
        get_ssl_ctx = library.SSL_get_SSL_CTX
    except (OSError, AttributeError) as error:
        raise TicketKeyError(f"libssl symbols not reachable through {path}: {error}") from None
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    ctrl.restype = ctypes.c_long
    get_ssl_ctx.argtypes = [ctypes.c_void_p]
    get_ssl_ctx.restype = ctypes.c_void_p
    return _Binding(ctrl, lambda pointer: get_ssl_ctx(pointer) or 0)


def _pointer_at(address: int) -> int:
    return ctypes.c_void_p.from_address(address).value or 0


def _ssl_ctx(binding: _Binding, context: ssl.SSLContext) -> int:
    """The context's ``SSL_CTX *``, cross-checked (see the module docstring)."""
    header = object.__basicsize__
    pointer_size = ctypes.sizeof(ctypes.c_void_p)
    if type(context).__basicsize__ < header + pointer_size:
        raise TicketKeyError("ssl.SSLContext is not laid out as expected")
    candidate = _pointer_at(id(context) + header)
    # CPython's _ssl._SSLSocket: PyObject_HEAD, then the socket weakref, the SSL * and the
    # context it was made from.
    connection = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    inner = getattr(connection, "_sslobj", None)
    if inner is None or type(inner).__basicsize__ < header + 3 * pointer_size:
        raise TicketKeyError("ssl.SSLObject is not laid out as expected")
    if _pointer_at(id(inner) + header + 2 * pointer_size) != id(context):
        raise TicketKeyError("ssl.SSLObject does not keep its context where expected")
    connection_ssl = _pointer_at(id(inner) + header + pointer_size)
    if not candidate or not connection_ssl:
        raise TicketKeyError("no SSL_CTX found in ssl.SSLContext")
    if binding.ssl_ctx_of_ssl(connection_ssl) != candidate:
        raise TicketKeyError("SSL_get_SSL_CTX disagrees with ssl.SSLContext's SSL_CTX")
    return candidate


class TicketKeys:
    """One ticket key, applied to server contexts. The key is a secret: it has no repr, and is
    never logged."""

    __slots__ = ("_binding", "_key")

    def __init__(self, binding: _Binding, key: bytes) -> None:
        if len(key) != KEY_LENGTH:
            raise TicketKeyError(f"a ticket key has {KEY_LENGTH} bytes, not {len(key)}")
        self._binding = binding
        self._key = key

    def __repr__(self) -> str:
        return "TicketKeys(<secret>)"

    @classmethod
    def load(
        cls, make_context: Callable[[], ssl.SSLContext], key: bytes | None = None
    ) -> TicketKeys:
        """Keys (``key``, or a new random one) proven to work with contexts from
        ``make_context`` (server contexts with the listener's certificate). Raises
        TicketKeyError, saying why, when they cannot be used."""
        binding = _binding()
        keys = cls(binding, key if key is not None else secrets.token_bytes(KEY_LENGTH))
        prove(keys, make_context)
        return keys

    def another(self) -> TicketKeys:
        """A new random key through the same proven binding (e.g. for another listener)."""
        return TicketKeys(self._binding, secrets.token_bytes(KEY_LENGTH))

    def of(self, key: bytes) -> TicketKeys:
        """``key`` (e.g. the one PostgreSQL shares, core/ticketstore.py) through the same proven
        binding; TicketKeyError when it is not KEY_LENGTH bytes."""
        return TicketKeys(self._binding, key)

    def matches(self, key: bytes) -> bool:
        """Whether this is ``key`` (compared in constant time)."""
        return hmac.compare_digest(self._key, key)

    def apply(self, context: ssl.SSLContext) -> None:
        """Make ``context`` issue and accept tickets under this key (before it is used)."""
        pointer = _ssl_ctx(self._binding, context)
        expected = self._binding.ctrl(pointer, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, 0, None)
        if expected != KEY_LENGTH:
            raise TicketKeyError(f"OpenSSL expects {expected}-byte ticket keys")
        buffer = ctypes.create_string_buffer(self._key, KEY_LENGTH)
        if self._binding.ctrl(pointer, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, KEY_LENGTH, buffer) != 1:
            raise TicketKeyError("OpenSSL refused the ticket key")
        ctypes.memset(buffer, 0, KEY_LENGTH)


def _pump(client: ssl.SSLObject, server: ssl.SSLObject, wires: list[ssl.MemoryBIO]) -> None:
    to_server, to_client = wires[1], wires[3]
    from_client, from_server = wires[0], wires[2]
    for _ in range(20):
        finished = 0
        for side in (client, server):
            try:
                side.do_handshake()
                finished += 1
            except ssl.SSLWantReadError:
                pass
        to_server.write(from_client.read())
        to_client.write(from_server.read())
        if finished == 2:
            return
    raise TicketKeyError("in-memory handshake did not finish")


def connect_in_memory(
    client_context: ssl.SSLContext,
    server_context: ssl.SSLContext,
    session: ssl.SSLSession | None = None,
) -> tuple[ssl.SSLSession | None, bool]:
    """One in-memory TLS connection (with a byte of data, so a TLS 1.3 server's tickets reach
    the client): the client's session after it, and whether it was resumed."""
    wires = [ssl.MemoryBIO() for _ in range(4)]  # client out, server in, server out, client in
    client = client_context.wrap_bio(wires[3], wires[0], session=session)
    server = server_context.wrap_bio(wires[1], wires[2], server_side=True)
    _pump(client, server, wires)
    server.write(b"x")
    wires[3].write(wires[2].read())
    if client.read(1) != b"x":
        raise TicketKeyError("in-memory connection lost its data")
    return client.session, client.session_reused


def prove(keys: TicketKeys, make_context: Callable[[], ssl.SSLContext]) -> None:
    """Raise TicketKeyError unless a session issued by one context with ``keys`` resumes on
    another with the same keys, for TLS 1.2 and 1.3, and a ticket under another key is a full
    handshake."""
    issuer, acceptor, stranger = make_context(), make_context(), make_context()
    keys.apply(issuer)
    keys.apply(acceptor)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        client.minimum_version = client.maximum_version = version
        try:
            session, _ = connect_in_memory(client, issuer)
            if session is None:
                raise TicketKeyError(f"{version.name}: no session issued")
            _, resumed = connect_in_memory(client, acceptor, session)
            if not resumed:
                raise TicketKeyError(f"{version.name}: a ticket did not resume on a second context")
            _, resumed = connect_in_memory(client, stranger, session)
        except ssl.SSLError as error:
            raise TicketKeyError(f"{version.name}: handshake failed: {error}") from None
        if resumed:
            raise TicketKeyError(f"{version.name}: a ticket resumed under another key")
