"""LDAPv3 messages (RFC 4511) in BER: framing, request decoding, response encoding.

Requests come from the network, so they are decoded by pyasn1 against the RFC's ASN.1 (below),
after a hand-written walk over the message's TLV structure has checked that every length is
definite and fits, and that nothing is nested deeper than the filter limit allows (pyasn1
recurses per level; a hostile filter must not reach it). The envelope (message id, operation tag,
controls) is read by that walk too, so an operation we do not implement still gets an answer of
the right type with the right message id.

Responses are ours and few in shape (LDAPResult, SearchResultEntry, ExtendedResponse), so they
are encoded by the small DER writer here: a search answer is thousands of entries at most, and
building pyasn1 objects for each would cost more than the whole search. The tests decode what it
writes with pyasn1 against the same ASN.1, and real clients (OpenLDAP's, ldap3) read it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from pyasn1.codec.ber import decoder  # type: ignore[import-untyped]
from pyasn1.error import PyAsn1Error  # type: ignore[import-untyped]
from pyasn1.type import namedtype, tag, univ  # type: ignore[import-untyped]

from services.directory.filters import (
    And,
    Equality,
    Filter,
    GreaterOrEqual,
    LessOrEqual,
    Not,
    Or,
    Present,
    Substrings,
    Undefined,
)

# --- result codes and operation tags (RFC 4511 §4.1.9, §4.2 ff.) -------------------------------


class ResultCode(enum.IntEnum):
    SUCCESS = 0
    OPERATIONS_ERROR = 1
    PROTOCOL_ERROR = 2
    TIME_LIMIT_EXCEEDED = 3
    SIZE_LIMIT_EXCEEDED = 4
    AUTH_METHOD_NOT_SUPPORTED = 7
    ADMIN_LIMIT_EXCEEDED = 11
    UNAVAILABLE_CRITICAL_EXTENSION = 12
    NO_SUCH_OBJECT = 32
    INVALID_DN_SYNTAX = 34
    INAPPROPRIATE_AUTHENTICATION = 48
    INVALID_CREDENTIALS = 49
    INSUFFICIENT_ACCESS_RIGHTS = 50
    BUSY = 51
    UNAVAILABLE = 52
    UNWILLING_TO_PERFORM = 53
    OTHER = 80


class Op(enum.IntEnum):
    """The first byte of each protocolOp (class APPLICATION, constructed or primitive)."""

    BIND_REQUEST = 0x60
    BIND_RESPONSE = 0x61
    UNBIND_REQUEST = 0x42
    SEARCH_REQUEST = 0x63
    SEARCH_RESULT_ENTRY = 0x64
    SEARCH_RESULT_DONE = 0x65
    MODIFY_REQUEST = 0x66
    MODIFY_RESPONSE = 0x67
    ADD_REQUEST = 0x68
    ADD_RESPONSE = 0x69
    DEL_REQUEST = 0x4A
    DEL_RESPONSE = 0x6B
    MODDN_REQUEST = 0x6C
    MODDN_RESPONSE = 0x6D
    COMPARE_REQUEST = 0x6E
    COMPARE_RESPONSE = 0x6F
    ABANDON_REQUEST = 0x50
    EXTENDED_REQUEST = 0x77
    EXTENDED_RESPONSE = 0x78


# Operations we refuse, and the response type each must be refused with.
REFUSED_OPERATIONS: dict[int, Op] = {
    Op.MODIFY_REQUEST: Op.MODIFY_RESPONSE,
    Op.ADD_REQUEST: Op.ADD_RESPONSE,
    Op.DEL_REQUEST: Op.DEL_RESPONSE,
    Op.MODDN_REQUEST: Op.MODDN_RESPONSE,
    Op.COMPARE_REQUEST: Op.COMPARE_RESPONSE,
}

NOTICE_OF_DISCONNECTION = "1.3.6.1.4.1.1466.20036"
WHO_AM_I = "1.3.6.1.4.1.4203.1.11.3"
START_TLS = "1.3.6.1.4.1.1466.20037"
MAX_INT = 2**31 - 1


class ProtocolError(Exception):
    """The bytes are not an LDAP message we can answer; the session ends with a notice of
    disconnection (RFC 4511 §4.1.1: no reply to a PDU that cannot be parsed)."""


class OperationError(Exception):
    """One operation is malformed or over a limit, but its envelope was fine: it is answered
    with ``code`` under its own message id and the session continues."""

    def __init__(self, code: ResultCode, text: str) -> None:
        super().__init__(text)
        self.code = code


# --- ASN.1 of the requests (RFC 4511 Appendix B, IMPLICIT TAGS) --------------------------------


def _app(number: int, constructed: bool = True) -> Any:
    form = tag.tagFormatConstructed if constructed else tag.tagFormatSimple
    return tag.Tag(tag.tagClassApplication, form, number)


def _ctx(number: int, constructed: bool = False) -> Any:
    form = tag.tagFormatConstructed if constructed else tag.tagFormatSimple
    return tag.Tag(tag.tagClassContext, form, number)


class _Sasl(univ.Sequence):  # type: ignore[misc]
    tagSet = univ.Sequence.tagSet.tagImplicitly(_ctx(3, True))
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("mechanism", univ.OctetString()),
        namedtype.OptionalNamedType("credentials", univ.OctetString()),
    )


class _Authentication(univ.Choice):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("simple", univ.OctetString().subtype(implicitTag=_ctx(0))),
        namedtype.NamedType("sasl", _Sasl()),
    )


class BindRequestSchema(univ.Sequence):  # type: ignore[misc]
    tagSet = univ.Sequence.tagSet.tagImplicitly(_app(0))
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("version", univ.Integer()),
        namedtype.NamedType("name", univ.OctetString()),
        namedtype.NamedType("authentication", _Authentication()),
    )


class _AttributeValueAssertion(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("attributeDesc", univ.OctetString()),
        namedtype.NamedType("assertionValue", univ.OctetString()),
    )


def _assertion(number: int) -> Any:
    return _AttributeValueAssertion().subtype(implicitTag=_ctx(number, True))


class _Substring(univ.Choice):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("initial", univ.OctetString().subtype(implicitTag=_ctx(0))),
        namedtype.NamedType("any", univ.OctetString().subtype(implicitTag=_ctx(1))),
        namedtype.NamedType("final", univ.OctetString().subtype(implicitTag=_ctx(2))),
    )


class _SubstringFilter(univ.Sequence):  # type: ignore[misc]
    tagSet = univ.Sequence.tagSet.tagImplicitly(_ctx(4, True))
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("type", univ.OctetString()),
        namedtype.NamedType("substrings", univ.SequenceOf(componentType=_Substring())),
    )


class _MatchingRuleAssertion(univ.Sequence):  # type: ignore[misc]
    tagSet = univ.Sequence.tagSet.tagImplicitly(_ctx(9, True))
    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType(
            "matchingRule", univ.OctetString().subtype(implicitTag=_ctx(1))
        ),
        namedtype.OptionalNamedType("type", univ.OctetString().subtype(implicitTag=_ctx(2))),
        namedtype.NamedType("matchValue", univ.OctetString().subtype(implicitTag=_ctx(3))),
        namedtype.DefaultedNamedType(
            "dnAttributes", univ.Boolean(False).subtype(implicitTag=_ctx(4))
        ),
    )


class _And(univ.SetOf):  # type: ignore[misc]
    tagSet = univ.SetOf.tagSet.tagImplicitly(_ctx(0, True))


class _Or(univ.SetOf):  # type: ignore[misc]
    tagSet = univ.SetOf.tagSet.tagImplicitly(_ctx(1, True))


class _Not(univ.SequenceOf):  # type: ignore[misc]
    # "not [2] Filter": a tagged CHOICE is explicitly tagged (X.680 §31.2.7), so its encoding is
    # the [2] wrapper around one whole Filter; read here as a tagged SEQUENCE OF (exactly one
    # Filter, checked in convert_filter) because pyasn1 does not decode an explicitly tagged
    # untagged CHOICE.
    tagSet = univ.SequenceOf.tagSet.tagImplicitly(_ctx(2, True))


class FilterSchema(univ.Choice):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("and", _And()),
        namedtype.NamedType("or", _Or()),
        namedtype.NamedType("not", _Not()),
        namedtype.NamedType("equalityMatch", _assertion(3)),
        namedtype.NamedType("substrings", _SubstringFilter()),
        namedtype.NamedType("greaterOrEqual", _assertion(5)),
        namedtype.NamedType("lessOrEqual", _assertion(6)),
        namedtype.NamedType("present", univ.OctetString().subtype(implicitTag=_ctx(7))),
        namedtype.NamedType("approxMatch", _assertion(8)),
        namedtype.NamedType("extensibleMatch", _MatchingRuleAssertion()),
    )


def _make_filter_recursive() -> None:
    """Filter contains itself (and, or, not). pyasn1 copies a class's componentType into each
    instance when it is created, so the loop is closed on the instances FilterSchema's
    alternatives share (every FilterSchema refers to the same NamedTypes)."""
    alternatives = FilterSchema.componentType
    for name in ("and", "or", "not"):
        alternative = alternatives.getTypeByPosition(alternatives.getPositionByName(name))
        alternative.__dict__["componentType"] = FilterSchema()


_make_filter_recursive()


class SearchRequestSchema(univ.Sequence):  # type: ignore[misc]
    tagSet = univ.Sequence.tagSet.tagImplicitly(_app(3))
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("baseObject", univ.OctetString()),
        namedtype.NamedType("scope", univ.Enumerated()),
        namedtype.NamedType("derefAliases", univ.Enumerated()),
        namedtype.NamedType("sizeLimit", univ.Integer()),
        namedtype.NamedType("timeLimit", univ.Integer()),
        namedtype.NamedType("typesOnly", univ.Boolean()),
        namedtype.NamedType("filter", FilterSchema()),
        namedtype.NamedType("attributes", univ.SequenceOf(componentType=univ.OctetString())),
    )


class AbandonRequestSchema(univ.Integer):  # type: ignore[misc]
    tagSet = univ.Integer.tagSet.tagImplicitly(_app(16, False))


class ExtendedRequestSchema(univ.Sequence):  # type: ignore[misc]
    tagSet = univ.Sequence.tagSet.tagImplicitly(_app(23))
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("requestName", univ.OctetString().subtype(implicitTag=_ctx(0))),
        namedtype.OptionalNamedType(
            "requestValue", univ.OctetString().subtype(implicitTag=_ctx(1))
        ),
    )


class _Control(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("controlType", univ.OctetString()),
        namedtype.DefaultedNamedType("criticality", univ.Boolean(False)),
        namedtype.OptionalNamedType("controlValue", univ.OctetString()),
    )


class ControlsSchema(univ.SequenceOf):  # type: ignore[misc]
    tagSet = univ.SequenceOf.tagSet.tagImplicitly(_ctx(0, True))
    componentType = _Control()


# --- decoded requests --------------------------------------------------------------------------


class Scope(enum.IntEnum):
    BASE = 0
    ONE = 1
    SUB = 2


@dataclass(frozen=True)
class BindRequest:
    version: int
    name: str
    # None for SASL (not supported).
    password: str | None
    mechanism: str = ""


@dataclass(frozen=True)
class SearchRequest:
    base: str
    scope: Scope
    size_limit: int
    time_limit: int
    types_only: bool
    filter: Filter
    attributes: tuple[str, ...]


@dataclass(frozen=True)
class AbandonRequest:
    message_id: int


@dataclass(frozen=True)
class ExtendedRequest:
    name: str
    value: bytes | None


@dataclass(frozen=True)
class UnbindRequest:
    pass


@dataclass(frozen=True)
class RefusedRequest:
    """An operation this read-only directory does not perform (modify, add, compare, ...)."""

    response: Op


@dataclass(frozen=True)
class Control:
    oid: str
    critical: bool


Request = (
    BindRequest | SearchRequest | AbandonRequest | ExtendedRequest | UnbindRequest | RefusedRequest
)


@dataclass(frozen=True)
class Message:
    message_id: int
    op: int
    request: Request | None
    controls: tuple[Control, ...] = ()
    # Set when the operation is malformed but the envelope is fine (answer, keep the session).
    error: OperationError | None = field(default=None, compare=False)


# --- framing and structure -----------------------------------------------------------------------


def _length(data: bytes | bytearray, offset: int, end: int) -> tuple[int, int]:
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
    length, start = _length(prefix, 1, len(prefix))
    return start + length


def _tlv(data: bytes, offset: int, end: int) -> tuple[int, int, int]:
    """(tag byte, content start, content end) of the element at ``offset``."""
    if offset >= end:
        raise ProtocolError("truncated element")
    identifier = data[offset]
    if identifier & 0x1F == 0x1F:
        raise ProtocolError("multi-byte tags are not used in LDAP")
    length, start = _length(data, offset + 1, end)
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
        identifier, content, after = _tlv(data, offset, stack[-1])
        if identifier & 0x20:
            if len(stack) > max_depth:
                raise OperationError(
                    ResultCode.UNWILLING_TO_PERFORM, f"nested deeper than {max_depth} levels"
                )
            deepest = max(deepest, len(stack))
            # Walk the child's content; the parent resumes at ``after`` once it is popped.
            stack.append(after)
            offset = content
        else:
            offset = after
    return deepest


def _message_id(data: bytes, start: int, end: int) -> tuple[int, int]:
    identifier, content, after = _tlv(data, start, end)
    if identifier != 0x02 or not 1 <= after - content <= 5:
        raise ProtocolError("a message starts with its INTEGER message id")
    value = int.from_bytes(data[content:after], "big", signed=True)
    if not 0 <= value <= MAX_INT:
        raise ProtocolError("message id out of range")
    return value, after


def decode_message(data: bytes, max_filter_depth: int) -> Message:
    """One complete LDAPMessage (as framed by :func:`header_length`) into a :class:`Message`."""
    identifier, content, end = _tlv(data, 0, len(data))
    if identifier != 0x30 or end != len(data):
        raise ProtocolError("not one LDAP message")
    message_id, offset = _message_id(data, content, end)
    op, op_content, op_end = _tlv(data, offset, end)
    controls: tuple[Control, ...] = ()
    if op_end < end:
        controls = _controls(data[op_end:end])
    operation = data[offset:op_end]
    try:
        # Message, operation, filter choice: three levels before the filter's own nesting, plus
        # two inside a substring filter.
        check_structure(data, content, end, max_filter_depth + 6)
        request = _request(op, operation, op_content - offset, max_filter_depth)
    except OperationError as error:
        return Message(message_id, op, None, controls, error)
    return Message(message_id, op, request, controls)


def _controls(raw: bytes) -> tuple[Control, ...]:
    try:
        decoded, rest = decoder.decode(raw, asn1Spec=ControlsSchema())
    except (PyAsn1Error, RecursionError) as error:
        reason = str(error).split("<", 1)[0].strip()[:100]
        raise ProtocolError(f"malformed controls: {reason}") from None
    if rest:
        raise ProtocolError("data after the controls")
    return tuple(
        Control(
            bytes(control["controlType"]).decode("utf-8", "replace"),
            bool(control["criticality"]),
        )
        for control in decoded
    )


def _decode(raw: bytes, schema: Any) -> Any:
    try:
        decoded, rest = decoder.decode(raw, asn1Spec=schema)
    except (PyAsn1Error, RecursionError) as error:
        # pyasn1's messages quote the whole schema: keep the first words only.
        reason = str(error).split("<", 1)[0].strip()[:100]
        raise OperationError(ResultCode.PROTOCOL_ERROR, f"malformed request: {reason}") from None
    if rest:
        raise OperationError(ResultCode.PROTOCOL_ERROR, "data after the request")
    return decoded


def _text(value: Any) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise OperationError(ResultCode.PROTOCOL_ERROR, "a string is not UTF-8") from None


def _request(op: int, raw: bytes, header: int, max_filter_depth: int) -> Request:
    if op == Op.BIND_REQUEST:
        decoded = _decode(raw, BindRequestSchema())
        auth = decoded["authentication"]
        name = _text(decoded["name"])
        if auth.getName() == "simple":
            return BindRequest(int(decoded["version"]), name, _text(auth["simple"]))
        mechanism = bytes(auth["sasl"]["mechanism"]).decode("utf-8", "replace")
        return BindRequest(int(decoded["version"]), name, None, mechanism)
    if op == Op.SEARCH_REQUEST:
        decoded = _decode(raw, SearchRequestSchema())
        scope = int(decoded["scope"])
        if scope not in (0, 1, 2):
            raise OperationError(ResultCode.PROTOCOL_ERROR, f"unknown scope {scope}")
        size_limit = int(decoded["sizeLimit"])
        time_limit = int(decoded["timeLimit"])
        if not (0 <= size_limit <= MAX_INT and 0 <= time_limit <= MAX_INT):
            raise OperationError(ResultCode.PROTOCOL_ERROR, "negative size or time limit")
        return SearchRequest(
            base=_text(decoded["baseObject"]),
            scope=Scope(scope),
            size_limit=size_limit,
            time_limit=time_limit,
            types_only=bool(decoded["typesOnly"]),
            filter=convert_filter(decoded["filter"], max_filter_depth),
            attributes=tuple(_text(item) for item in decoded["attributes"]),
        )
    if op == Op.UNBIND_REQUEST:
        return UnbindRequest()
    if op == Op.ABANDON_REQUEST:
        return AbandonRequest(int(_decode(raw, AbandonRequestSchema())))
    if op == Op.EXTENDED_REQUEST:
        decoded = _decode(raw, ExtendedRequestSchema())
        value = decoded["requestValue"]
        return ExtendedRequest(
            bytes(decoded["requestName"]).decode("utf-8", "replace"),
            bytes(value) if value.isValue else None,
        )
    if op in REFUSED_OPERATIONS:
        return RefusedRequest(REFUSED_OPERATIONS[op])
    raise ProtocolError(f"unknown operation tag 0x{op:02x}")


def convert_filter(node: Any, max_depth: int, depth: int = 0) -> Filter:
    """pyasn1's Filter into the plain :mod:`filters` types; and/or/not count towards the depth."""
    kind = node.getName()
    value = node.getComponent()
    if kind in ("and", "or", "not"):
        if depth >= max_depth:
            raise OperationError(
                ResultCode.UNWILLING_TO_PERFORM, f"filter nested deeper than {max_depth} levels"
            )
        if kind == "not":
            if len(value) != 1:
                raise OperationError(ResultCode.PROTOCOL_ERROR, "not takes exactly one filter")
            return Not(convert_filter(value[0], max_depth, depth + 1))
        children = tuple(convert_filter(child, max_depth, depth + 1) for child in value)
        if not children:
            raise OperationError(ResultCode.PROTOCOL_ERROR, f"empty {kind} filter")
        return And(children) if kind == "and" else Or(children)
    if kind in ("equalityMatch", "approxMatch", "greaterOrEqual", "lessOrEqual"):
        attribute = _text(value["attributeDesc"])
        assertion = _text(value["assertionValue"])
        if kind == "greaterOrEqual":
            return GreaterOrEqual(attribute, assertion)
        if kind == "lessOrEqual":
            return LessOrEqual(attribute, assertion)
        # Approximate matching is left to the server (RFC 4517 §4.2.1): we treat it as equality.
        return Equality(attribute, assertion)
    if kind == "present":
        return Present(_text(value))
    if kind == "substrings":
        initial: str | None = None
        final: str | None = None
        middle: list[str] = []
        parts = list(value["substrings"])
        if not parts:
            raise OperationError(ResultCode.PROTOCOL_ERROR, "a substring filter without parts")
        for position, part in enumerate(parts):
            name = part.getName()
            text = _text(part.getComponent())
            if name == "initial":
                if position != 0:
                    raise OperationError(ResultCode.PROTOCOL_ERROR, "initial must come first")
                initial = text
            elif name == "final":
                if position != len(parts) - 1:
                    raise OperationError(ResultCode.PROTOCOL_ERROR, "final must come last")
                final = text
            else:
                middle.append(text)
        return Substrings(_text(value["type"]), initial, tuple(middle), final)
    if kind == "extensibleMatch":
        attribute_value = value["type"]
        if value["matchingRule"].isValue or not attribute_value.isValue:
            # No matching rules beyond each attribute's own equality: Undefined (RFC 4511
            # §4.5.1.7.7), which matches nothing.
            return Undefined()
        return Equality(_text(attribute_value), _text(value["matchValue"]))
    raise OperationError(ResultCode.PROTOCOL_ERROR, f"unknown filter {kind}")  # pragma: no cover


# --- response encoding (DER subset of BER) -----------------------------------------------------


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def element(identifier: int, content: bytes) -> bytes:
    return bytes((identifier,)) + _der_length(len(content)) + content


def integer(value: int, identifier: int = 0x02) -> bytes:
    size = max(1, (value.bit_length() + 8) // 8)
    return element(identifier, value.to_bytes(size, "big", signed=True))


def octets(value: str | bytes, identifier: int = 0x04) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return element(identifier, raw)


def message(message_id: int, operation: bytes) -> bytes:
    return element(0x30, integer(message_id) + operation)


def result(
    message_id: int,
    op: int,
    code: ResultCode,
    text: str = "",
    matched: str = "",
    extra: bytes = b"",
) -> bytes:
    """An LDAPResult-shaped response (bind, search done, modify, ..., extended)."""
    body = integer(int(code), 0x0A) + octets(matched) + octets(text) + extra
    return message(message_id, element(op, body))


def extended_response(
    message_id: int,
    code: ResultCode,
    text: str = "",
    name: str | None = None,
    value: bytes | None = None,
) -> bytes:
    extra = b""
    if name is not None:
        extra += octets(name, 0x8A)
    if value is not None:
        extra += octets(value, 0x8B)
    return result(message_id, Op.EXTENDED_RESPONSE, code, text, extra=extra)


def notice_of_disconnection(code: ResultCode, text: str) -> bytes:
    """The unsolicited notification of RFC 4511 §4.4.1 (message id 0)."""
    return extended_response(0, code, text, name=NOTICE_OF_DISCONNECTION)


def search_entry(message_id: int, dn: str, attributes: list[tuple[str, list[str]]]) -> bytes:
    parts = []
    for name, values in attributes:
        parts.append(element(0x30, octets(name) + element(0x31, b"".join(map(octets, values)))))
    body = octets(dn) + element(0x30, b"".join(parts))
    return message(message_id, element(Op.SEARCH_RESULT_ENTRY, body))
