"""Explicit TLS session-ticket keys, so that every server context of a listener encrypts and
accepts the same session tickets: in every worker process of the node, every context rebuilt
by a certificate reload (SIGHUP), and (the key kept in PostgreSQL, ``core/ticketstore.py``) on
every node and after a restart. Each listener has a key of its own (runner.build_holders). After
a rotation the previous key is still accepted, so the devices' tickets keep resuming.

Python's ``ssl`` has no API for ticket keys. OpenSSL has two, reached here with ctypes on the very
libssl and libcrypto that ``_ssl`` is linked against (symbols looked up through ``_ssl``'s own
handle, never a second copy found on disk):

- the ticket-key callback (``SSL_CTX_set_tlsext_ticket_key_cb``, a macro over
  ``SSL_CTX_callback_ctrl``; deprecated in OpenSSL 3.0, still built by every distribution), which
  OpenSSL calls to encrypt a new ticket and to find the key of a presented one. Ours encrypts
  under the current key and accepts the current and the previous key (a ticket under the
  previous one is renewed under the current), with the cipher and HMAC OpenSSL uses itself
  (AES-256-CBC, HMAC-SHA256, a random IV from ``RAND_bytes``), so its tickets and OpenSSL's own
  under the same key are interchangeable. It runs in the handshake, which ``_ssl`` does with the
  GIL released: ctypes takes the GIL for the call, as ``_ssl`` does for its own SNI callback. It
  never raises into OpenSSL: any failure means "no ticket" (encrypting) or "unknown key"
  (decrypting), i.e. a full handshake, never a failed one;
- ``SSL_CTX_set_tlsext_ticket_keys`` (a macro over ``SSL_CTX_ctrl``), one key and no previous
  one: the fallback where the callback cannot be proven.

What ctypes needs is the context's ``SSL_CTX *``, which CPython keeps as the first field of its
``SSLContext`` object. Nothing of that is taken on trust: ``TicketKeys.load`` reads the pointer,
then checks it against the ``SSL *`` of a connection object made from the same context (whose own
back-reference to the context must be where CPython keeps it) through ``SSL_get_SSL_CTX``, asks
OpenSSL for the key length it expects, and only then sets a key and proves with in-memory
handshakes, on this Python and this OpenSSL, for TLS 1.2 and 1.3: a session issued by one context
resumes on another with the same key; a ticket under an unknown key gets a full handshake (never
an error); with the callback, a ticket under the previous key resumes on a context with a new
current key and comes back renewed under the new key, and a callback ticket resumes under
OpenSSL's own handling of the same key. If the callback's proof fails, the keys fall back to the
one-key ctrl (``accepts_previous`` is then False: after a rotation, tickets under the old key get a
full handshake once, and ``previous_refusal`` says why); if that fails too, ``load`` raises
TicketKeyError saying why, and the runner still shares OpenSSL's own random keys by building the
contexts before the workers fork, until a reload. Stdlib only, so the tests can prove it under
every installed Python.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hmac
import logging
import secrets
import ssl
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# OpenSSL 1.1.0+ (include/openssl/ssl.h, ssl/s3_lib.c): a 16-byte key name, a 32-byte HMAC key
# and a 32-byte AES key, set through SSL_CTX_ctrl with this command (which, given no buffer,
# answers the length it expects). The callback is set through SSL_CTX_callback_ctrl.
KEY_LENGTH = 80
_NAME, _HMAC_KEY, _AES_KEY = slice(0, 16), slice(16, 48), slice(48, 80)
_IV_LENGTH = 16  # AES-256-CBC's
_SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
_SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB = 72
# int cb(SSL *, unsigned char key_name[16], unsigned char *iv, EVP_CIPHER_CTX *, HMAC_CTX *,
#        int enc): 1 key found (or ticket made), 2 found under a key to renew, 0 none.
_TicketCallback = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_int,
)
# The callback of each context it is installed on, alive exactly as long as the context (a
# context's connections keep it alive, so no handshake can outlive its callback).
_installed: weakref.WeakKeyDictionary[ssl.SSLContext, object] = weakref.WeakKeyDictionary()


class TicketKeyError(Exception):
    """Ticket keys cannot be set safely on this Python / OpenSSL; the message says why."""


@dataclass(frozen=True)
class _Crypto:
    """The libssl / libcrypto calls the ticket-key callback makes."""

    callback_ctrl: Any
    rand_bytes: Any
    encrypt_init: Any
    decrypt_init: Any
    hmac_init: Any
    cipher: int  # EVP_aes_256_cbc()
    digest: int  # EVP_sha256()


@dataclass(frozen=True)
class _Binding:
    ctrl: Callable[[int, int, int, object], int]
    ssl_ctx_of_ssl: Callable[[int], int]
    # None: the one-key ctrl only; ``refusal`` says why.
    crypto: _Crypto | None
    refusal: str | None = None


def _crypto(library: ctypes.CDLL) -> _Crypto:
    try:
        callback_ctrl = library.SSL_CTX_callback_ctrl
        rand_bytes = library.RAND_bytes
        encrypt_init = library.EVP_EncryptInit_ex
        decrypt_init = library.EVP_DecryptInit_ex
        hmac_init = library.HMAC_Init_ex
        aes_256_cbc = library.EVP_aes_256_cbc
        sha256 = library.EVP_sha256
    except AttributeError as error:
        raise TicketKeyError(f"ticket-key callback symbols not reachable: {error}") from None
    callback_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, _TicketCallback]
    callback_ctrl.restype = ctypes.c_long
    rand_bytes.argtypes = [ctypes.c_void_p, ctypes.c_int]
    rand_bytes.restype = ctypes.c_int
    for init in (encrypt_init, decrypt_init):
        # ctx, cipher, engine, key, iv
        init.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p]
        init.argtypes += [ctypes.c_void_p]
        init.restype = ctypes.c_int
    hmac_init.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
    hmac_init.argtypes += [ctypes.c_void_p]
    hmac_init.restype = ctypes.c_int
    for method in (aes_256_cbc, sha256):
        method.argtypes = []
        method.restype = ctypes.c_void_p
    cipher, digest = aes_256_cbc(), sha256()
    if not cipher or not digest:
        raise TicketKeyError("OpenSSL has no AES-256-CBC or SHA-256")
    return _Crypto(callback_ctrl, rand_bytes, encrypt_init, decrypt_init, hmac_init, cipher, digest)


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
    try:
        crypto: _Crypto | None = _crypto(library)
        refusal = None
    except TicketKeyError as error:
        crypto, refusal = None, str(error)
    return _Binding(ctrl, lambda pointer: get_ssl_ctx(pointer) or 0, crypto, refusal)


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


def _ticket_callback(crypto: _Crypto, current: bytes, previous: bytes | None) -> Any:
    """OpenSSL's ticket-key callback: new tickets under ``current``; presented ones found under
    ``current`` (1) or ``previous`` (2: OpenSSL renews the ticket under ``current``)."""
    keys = [(key[_NAME], key[_HMAC_KEY], key[_AES_KEY]) for key in (current, previous) if key]
    failed: list[str] = []

    def initialise(init: Any, cipher_ctx: int, hmac_ctx: int, key: int, iv: int) -> bool:
        _, hmac_key, aes_key = keys[key]
        return bool(
            init(cipher_ctx, crypto.cipher, None, aes_key, iv) == 1
            and crypto.hmac_init(hmac_ctx, hmac_key, len(hmac_key), crypto.digest, None) == 1
        )

    def callback(_ssl: int, name: int, iv: int, cipher_ctx: int, hmac_ctx: int, enc: int) -> int:
        try:
            if enc:
                ctypes.memmove(name, keys[0][0], len(keys[0][0]))
                made = crypto.rand_bytes(iv, _IV_LENGTH) == 1 and initialise(
                    crypto.encrypt_init, cipher_ctx, hmac_ctx, 0, iv
                )
                return 1 if made else 0  # 0: no ticket this time, the handshake goes on
            presented = ctypes.string_at(name, len(keys[0][0]))
            for index, (key_name, _, _) in enumerate(keys):
                if key_name == presented:
                    found = initialise(crypto.decrypt_init, cipher_ctx, hmac_ctx, index, iv)
                    return (1 if index == 0 else 2) if found else 0
            return 0  # unknown key: a full handshake
        except Exception as error:  # never into OpenSSL; logged once per key
            if not failed:
                failed.append(type(error).__name__)
                log.error("TLS ticket-key callback failed (%s): full handshakes", failed[0])
            return 0

    return _TicketCallback(callback)


class TicketKeys:
    """The current ticket key (and the previous one, still accepted where the callback is
    proven), applied to server contexts. Keys are secrets: no repr, never logged."""

    __slots__ = ("_binding", "_key", "_previous")

    def __init__(self, binding: _Binding, key: bytes, previous: bytes | None = None) -> None:
        for value in (key, previous):
            if value is not None and len(value) != KEY_LENGTH:
                raise TicketKeyError(f"a ticket key has {KEY_LENGTH} bytes, not {len(value)}")
        self._binding = binding
        self._key = key
        self._previous = previous

    def __repr__(self) -> str:
        return "TicketKeys(<secret>)"

    @classmethod
    def load(
        cls, make_context: Callable[[], ssl.SSLContext], key: bytes | None = None
    ) -> TicketKeys:
        """Keys (``key``, or a new random one) proven to work with contexts from
        ``make_context`` (server contexts with the listener's certificate): with the callback
        (previous key accepted) where it proves itself, else with the one-key ctrl. Raises
        TicketKeyError, saying why, when neither can be used."""
        binding = _binding()
        chosen = key if key is not None else secrets.token_bytes(KEY_LENGTH)
        if binding.crypto is not None:
            try:
                keys = cls(binding, chosen)
                prove(keys, make_context)
                return keys
            except TicketKeyError as error:
                binding = dataclasses.replace(binding, crypto=None, refusal=str(error))
        keys = cls(binding, chosen)
        prove(keys, make_context)
        return keys

    @property
    def accepts_previous(self) -> bool:
        """Whether a ticket under the previous key still resumes (the callback is proven)."""
        return self._binding.crypto is not None

    @property
    def previous_refusal(self) -> str | None:
        """Why the previous key is not accepted (None where it is)."""
        return self._binding.refusal

    def another(self) -> TicketKeys:
        """A new random key through the same proven binding (e.g. for another listener)."""
        return TicketKeys(self._binding, secrets.token_bytes(KEY_LENGTH))

    def of(self, key: bytes, previous: bytes | None = None) -> TicketKeys:
        """``key`` (e.g. the one PostgreSQL shares, core/ticketstore.py), with ``previous``
        still accepted, through the same proven binding; TicketKeyError when either is not
        KEY_LENGTH bytes."""
        return TicketKeys(self._binding, key, previous)

    def matches(self, key: bytes, previous: bytes | None = None) -> bool:
        """Whether these are ``key`` and ``previous`` (compared in constant time)."""
        if (previous is None) != (self._previous is None):
            return False
        same_previous = previous is None or hmac.compare_digest(self._previous or b"", previous)
        return hmac.compare_digest(self._key, key) and same_previous

    def apply(self, context: ssl.SSLContext) -> None:
        """Make ``context`` issue and accept tickets under these keys (before it is used)."""
        pointer = _ssl_ctx(self._binding, context)
        crypto = self._binding.crypto
        if crypto is not None:
            callback = _ticket_callback(crypto, self._key, self._previous)
            _installed[context] = callback
            if crypto.callback_ctrl(pointer, _SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB, callback) != 1:
                raise TicketKeyError("OpenSSL refused the ticket-key callback")
            return
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
    handshake; with the callback, also what the previous key promises (``_prove_previous``)."""
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
                raise TicketKeyError("no session issued")
            _, resumed = connect_in_memory(client, acceptor, session)
            if not resumed:
                raise TicketKeyError("a ticket did not resume on a second context")
            _, resumed = connect_in_memory(client, stranger, session)
            if resumed:
                raise TicketKeyError("a ticket resumed under another key")
            if keys.accepts_previous:
                _prove_previous(keys, make_context, client, session)
        except ssl.SSLError as error:
            raise TicketKeyError(f"{version.name}: handshake failed: {error}") from None
        except TicketKeyError as error:  # what failed, and under which version
            raise TicketKeyError(f"{version.name}: {error}") from None


def _prove_previous(
    keys: TicketKeys,
    make_context: Callable[[], ssl.SSLContext],
    client: ssl.SSLContext,
    session: ssl.SSLSession,
) -> None:
    """A callback ticket (``session``, under ``keys``) resumes under OpenSSL's own handling of
    the same key, and on a context whose current key is new and previous is ``keys``'; the
    ticket it comes back with resumes under the new key alone."""
    plain = TicketKeys(dataclasses.replace(keys._binding, crypto=None), keys._key)
    following = secrets.token_bytes(KEY_LENGTH)
    contexts = {}
    for name, each in (
        ("plain", plain),
        ("rotated", keys.of(following, previous=keys._key)),
        ("following", keys.of(following)),
    ):
        contexts[name] = make_context()
        each.apply(contexts[name])
    if not connect_in_memory(client, contexts["plain"], session)[1]:
        raise TicketKeyError("a callback ticket did not resume under OpenSSL's own keys")
    renewed, resumed = connect_in_memory(client, contexts["rotated"], session)
    if not resumed:
        raise TicketKeyError("a ticket under the previous key did not resume")
    if not connect_in_memory(client, contexts["following"], renewed)[1]:
        raise TicketKeyError("a ticket under the previous key was not renewed under the new one")
