"""LDAPv3 messages (RFC 4511): request decoding and response encoding, over ``ber``.

Requests come from the network. A hand-written walk over the message's TLV structure first
checks that every length is definite and fits and that nothing is nested deeper than the filter
limit allows; the envelope (message id, operation tag, controls) is read by that walk too, so an
operation we do not implement still gets an answer of the right type with the right message id.
Binds and searches, nearly all the traffic, are then read straight from their elements (pyasn1
took most of a search's time); the rare rest (abandon, extended, controls) is decoded by pyasn1
against the RFC's ASN.1.

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

from services.directory.ber import (
    ProtocolError,
    TooDeep,
    check_structure,
    children,
    element,
    integer,
    octets,
    tlv,
)
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


# --- the envelope ----------------------------------------------------------------------------


def _message_id(data: bytes, start: int, end: int) -> tuple[int, int]:
    identifier, content, after = tlv(data, start, end)
    if identifier != 0x02 or not 1 <= after - content <= 5:
        raise ProtocolError("a message starts with its INTEGER message id")
    value = int.from_bytes(data[content:after], "big", signed=True)
    if not 0 <= value <= MAX_INT:
        raise ProtocolError("message id out of range")
    return value, after


def decode_message(data: bytes, max_filter_depth: int) -> Message:
    """One complete LDAPMessage (as framed by :func:`header_length`) into a :class:`Message`."""
    identifier, content, end = tlv(data, 0, len(data))
    if identifier != 0x30 or end != len(data):
        raise ProtocolError("not one LDAP message")
    message_id, offset = _message_id(data, content, end)
    op, op_content, op_end = tlv(data, offset, end)
    controls: tuple[Control, ...] = ()
    if op_end < end:
        controls = _controls(data[op_end:end])
    operation = data[offset:op_end]
    try:
        # Message, operation, filter choice: three levels before the filter's own nesting, plus
        # two inside a substring filter.
        try:
            check_structure(data, content, end, max_filter_depth + 6)
        except TooDeep as error:
            raise OperationError(ResultCode.UNWILLING_TO_PERFORM, str(error)) from None
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


# --- bind and search: read straight from the TLV walk ---------------------------------------
#
# Nearly every message a directory sees is a search (and one bind per connection); pyasn1 spends
# most of a search's time decoding it. These two are read directly from their elements, which
# check_structure has already found well-formed and within the depth limit; what they check here
# is that each element is the one RFC 4511 puts there.


def _malformed(what: str) -> OperationError:
    return OperationError(ResultCode.PROTOCOL_ERROR, f"malformed request: {what}")


def _string(data: bytes, element: tuple[int, int, int], tag_byte: int, what: str) -> str:
    identifier, start, end = element
    if identifier != tag_byte:
        raise _malformed(f"{what} is not an OCTET STRING")
    try:
        return data[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise OperationError(ResultCode.PROTOCOL_ERROR, "a string is not UTF-8") from None


def _integer(data: bytes, element: tuple[int, int, int], tag_byte: int, what: str) -> int:
    identifier, start, end = element
    if identifier != tag_byte or not 1 <= end - start <= 5:
        raise _malformed(f"{what} is not an INTEGER")
    return int.from_bytes(data[start:end], "big", signed=True)


def _bind(data: bytes, start: int, end: int) -> BindRequest:
    fields = children(data, start, end)
    if len(fields) != 3:
        raise _malformed("a bind request has version, name and authentication")
    version = _integer(data, fields[0], 0x02, "version")
    name = _string(data, fields[1], 0x04, "name")
    identifier, auth_start, auth_end = fields[2]
    if identifier == 0x80:
        return BindRequest(version, name, _string(data, fields[2], 0x80, "password"))
    if identifier == 0xA3:
        sasl = children(data, auth_start, auth_end)
        if not 1 <= len(sasl) <= 2 or sasl[0][0] != 0x04:
            raise _malformed("SASL credentials")
        mechanism = data[sasl[0][1] : sasl[0][2]].decode("utf-8", "replace")
        return BindRequest(version, name, None, mechanism)
    raise _malformed("unknown authentication choice")


def _search(data: bytes, start: int, end: int, max_depth: int) -> SearchRequest:
    fields = children(data, start, end)
    if len(fields) != 8:
        raise _malformed("a search request has eight fields")
    base = _string(data, fields[0], 0x04, "baseObject")
    scope = _integer(data, fields[1], 0x0A, "scope")
    if scope not in (0, 1, 2):
        raise OperationError(ResultCode.PROTOCOL_ERROR, f"unknown scope {scope}")
    _integer(data, fields[2], 0x0A, "derefAliases")
    size_limit = _integer(data, fields[3], 0x02, "sizeLimit")
    time_limit = _integer(data, fields[4], 0x02, "timeLimit")
    if not (0 <= size_limit <= MAX_INT and 0 <= time_limit <= MAX_INT):
        raise OperationError(ResultCode.PROTOCOL_ERROR, "negative size or time limit")
    identifier, flag_start, flag_end = fields[5]
    if identifier != 0x01 or flag_end - flag_start != 1:
        raise _malformed("typesOnly is not a BOOLEAN")
    search_filter = _filter(data, fields[6], max_depth, 0)
    if fields[7][0] != 0x30:
        raise _malformed("attributes is not a SEQUENCE")
    attributes = tuple(
        _string(data, item, 0x04, "attribute")
        for item in children(data, fields[7][1], fields[7][2])
    )
    return SearchRequest(
        base=base,
        scope=Scope(scope),
        size_limit=size_limit,
        time_limit=time_limit,
        types_only=data[flag_start] != 0,
        filter=search_filter,
        attributes=attributes,
    )


Element = tuple[int, int, int]  # identifier, start and end of its contents


def _filter(data: bytes, element: Element, max_depth: int, depth: int) -> Filter:
    """One filter (RFC 4511 §4.5.1.7), by its CHOICE tag."""
    identifier = element[0]
    if identifier in (0xA0, 0xA1, 0xA2):
        return _boolean_filter(data, element, max_depth, depth)
    if identifier in (0xA3, 0xA5, 0xA6, 0xA8):
        return _assertion_filter(data, element)
    if identifier == 0x87:
        return Present(_string(data, element, 0x87, "present"))
    if identifier == 0xA4:
        return _substrings_filter(data, element)
    if identifier == 0xA9:
        return _extensible_filter(data, element)
    raise _malformed(f"unknown filter choice 0x{identifier:02x}")


def _boolean_filter(data: bytes, element: Element, max_depth: int, depth: int) -> Filter:
    identifier, start, end = element
    kind = ("and", "or", "not")[identifier & 0x0F]
    if depth >= max_depth:
        raise OperationError(
            ResultCode.UNWILLING_TO_PERFORM, f"filter nested deeper than {max_depth} levels"
        )
    operands = tuple(
        _filter(data, child, max_depth, depth + 1) for child in children(data, start, end)
    )
    if kind == "not":
        if len(operands) != 1:
            raise OperationError(ResultCode.PROTOCOL_ERROR, "not takes exactly one filter")
        return Not(operands[0])
    if not operands:
        raise OperationError(ResultCode.PROTOCOL_ERROR, f"empty {kind} filter")
    return And(operands) if kind == "and" else Or(operands)


def _assertion_filter(data: bytes, element: Element) -> Filter:
    identifier, start, end = element
    parts = children(data, start, end)
    if len(parts) != 2:
        raise _malformed("an attribute value assertion has two parts")
    attribute = _string(data, parts[0], 0x04, "attributeDesc")
    assertion = _string(data, parts[1], 0x04, "assertionValue")
    if identifier == 0xA5:
        return GreaterOrEqual(attribute, assertion)
    if identifier == 0xA6:
        return LessOrEqual(attribute, assertion)
    # Approximate matching is left to the server (RFC 4517 §4.2.1): we treat it as equality.
    return Equality(attribute, assertion)


def _substrings_filter(data: bytes, element: Element) -> Filter:
    _, start, end = element
    parts = children(data, start, end)
    if len(parts) != 2 or parts[1][0] != 0x30:
        raise _malformed("a substring filter has a type and a SEQUENCE of parts")
    attribute = _string(data, parts[0], 0x04, "type")
    pieces = children(data, parts[1][1], parts[1][2])
    if not pieces:
        raise OperationError(ResultCode.PROTOCOL_ERROR, "a substring filter without parts")
    initial: str | None = None
    final: str | None = None
    middle: list[str] = []
    for position, piece in enumerate(pieces):
        if piece[0] not in (0x80, 0x81, 0x82):
            raise _malformed("a substring part is initial, any or final")
        text = _string(data, piece, piece[0], "substring")
        if piece[0] == 0x80:
            if position != 0:
                raise OperationError(ResultCode.PROTOCOL_ERROR, "initial must come first")
            initial = text
        elif piece[0] == 0x82:
            if position != len(pieces) - 1:
                raise OperationError(ResultCode.PROTOCOL_ERROR, "final must come last")
            final = text
        else:
            middle.append(text)
    return Substrings(attribute, initial, tuple(middle), final)


def _extensible_filter(data: bytes, element: Element) -> Filter:
    _, start, end = element
    rule = {part[0]: part for part in children(data, start, end)}
    if 0x83 not in rule or not set(rule) <= {0x81, 0x82, 0x83, 0x84}:
        raise _malformed("extensibleMatch")
    if 0x81 in rule or 0x82 not in rule:
        # No matching rules beyond each attribute's own equality: Undefined (RFC 4511
        # §4.5.1.7.7), which matches nothing.
        return Undefined()
    return Equality(
        _string(data, rule[0x82], 0x82, "type"), _string(data, rule[0x83], 0x83, "value")
    )


def _request(op: int, raw: bytes, header: int, max_filter_depth: int) -> Request:
    if op == Op.BIND_REQUEST:
        return _bind(raw, header, len(raw))
    if op == Op.SEARCH_REQUEST:
        return _search(raw, header, len(raw), max_filter_depth)
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


# --- responses -------------------------------------------------------------------------------


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
