"""BER, as much of it as LDAP uses (RFC 4511 §5.1): definite lengths, one-byte tags.

Reading: :func:`header_length` frames a message from a stream, :func:`tlv` and :func:`children`
walk elements, :func:`check_structure` proves a whole message well formed and within a nesting
depth without recursion. Writing: :func:`element`, :func:`integer`, :func:`octets` (DER, the
subset of BER every reader accepts). LDAP's messages are built on these in ``protocol``.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """The bytes are not an LDAP message we can answer; the session ends with a notice of
    disconnection (RFC 4511 §4.1.1: no reply to a PDU that cannot be parsed)."""


class TooDeep(Exception):
    """Constructed elements nested deeper than allowed (a filter bomb)."""


def read_length(data: bytes | bytearray, offset: int, end: int) -> tuple[int, int]:
    """(content length, offset of the content) of the length octets at ``offset``."""
    if offset >= end:
        raise ProtocolError("truncated length")
    first = data[offset]
    if first < 0x80:
        return first, offset + 1
    count = first & 0x7F
    if count == 0:
        raise ProtocolError("indefinite length is not allowed in LDAP (RFC 4511 §5.1)")
    if count > 4 or offset + 1 + count > end:
        raise ProtocolError("bad length")
    return int.from_bytes(data[offset + 1 : offset + 1 + count], "big"), offset + 1 + count


def header_length(prefix: bytes) -> int | None:
    """How many bytes the message starting with ``prefix`` has in total, or None if more of its
    header is needed. Raises ProtocolError when it is not an LDAPMessage at all."""
    if not prefix:
        return None
    if prefix[0] != 0x30:
        raise ProtocolError("an LDAP message starts with a SEQUENCE")
    if len(prefix) < 2:
        return None
    first = prefix[1]
    needed = 2 if first < 0x80 else 2 + (first & 0x7F)
    if first == 0x80:
        raise ProtocolError("indefinite length is not allowed in LDAP (RFC 4511 §5.1)")
    if first & 0x7F > 4 and first >= 0x80:
        raise ProtocolError("bad length")
    if len(prefix) < needed:
        return None
    length, start = read_length(prefix, 1, len(prefix))
    return start + length


def tlv(data: bytes, offset: int, end: int) -> tuple[int, int, int]:
    """(tag byte, content start, content end) of the element at ``offset``."""
    if offset >= end:
        raise ProtocolError("truncated element")
    identifier = data[offset]
    if identifier & 0x1F == 0x1F:
        raise ProtocolError("multi-byte tags are not used in LDAP")
    length, start = read_length(data, offset + 1, end)
    if start + length > end:
        raise ProtocolError("an element is longer than what contains it")
    return identifier, start, start + length


def check_structure(data: bytes, start: int, end: int, max_depth: int) -> int:
    """Walk every element between ``start`` and ``end``; return the deepest nesting of
    constructed elements. Iterative, so depth is limited here and not by Python's stack."""
    deepest = 0
    stack = [end]
    offset = start
    while stack:
        if offset >= stack[-1]:
            if offset > stack[-1]:
                raise ProtocolError("an element is longer than what contains it")
            stack.pop()
            continue
        identifier, content, after = tlv(data, offset, stack[-1])
        if identifier & 0x20:
            if len(stack) > max_depth:
                raise TooDeep(f"nested deeper than {max_depth} levels")
            deepest = max(deepest, len(stack))
            # Walk the child's content; the parent resumes at ``after`` once it is popped.
            stack.append(after)
            offset = content
        else:
            offset = after
    return deepest


def children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    children = []
    offset = start
    while offset < end:
        child = tlv(data, offset, end)
        children.append(child)
        offset = child[2]
    return children


def der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def element(identifier: int, content: bytes) -> bytes:
    return bytes((identifier,)) + der_length(len(content)) + content


def integer(value: int, identifier: int = 0x02) -> bytes:
    size = max(1, (value.bit_length() + 8) // 8)
    return element(identifier, value.to_bytes(size, "big", signed=True))


def octets(value: str | bytes, identifier: int = 0x04) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return element(identifier, raw)
