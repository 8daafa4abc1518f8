"""Rolling provider certificates out to devices (protocol.md §9, PHPUS's "customcerts").

Spread over successive update polls of a device proven by its current certificate:

1. ``querying``: the poll makes the device upload ``mod cmd X509 xml-info`` (its certificates);
   the upload decides: ``current`` (issued by our RootCA, not within ``ca.renew_days`` of
   expiry) or ``requesting`` (missing, other issuer, expired, due for renewal).
2. ``requesting``: the poll makes it create a key and a signing request with the CN and SANs
   the inventory gives (:func:`certificate_plan`), then ``fetching``.
3. ``fetching``: each poll asks for ``X509/REQUESTERROR`` and ``X509/REQUEST``; the request
   upload is checked against the plan (CN and SANs exactly, key size, self-signature) and signed
   (``signed``), or refused (``refused``: logged, never signed); an error text stops the flow
   (``error``). A node without the CA key queues the checked request (``queued``) for the
   signing node, which moves it to ``signed`` (signing.py).
4. ``signed``: the poll pushes the chain as ``X509/REQUESTRESPONSE/0000n``, cleans up the
   request and key variables and asks for the certificates again (``installing``), whose upload
   confirms ``current``.

A step waits at most ``ca.max_attempts`` polls for its upload, then stops with ``error``;
``error`` and ``refused`` stay until an operator resets the device
(``pbxfront devices certificate-reset MAC``). The state lives in PostgreSQL
(``certificate_rollouts``), row-locked per device, because several nodes serve one device.

Plain functions over plain values; the handlers do the I/O.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from defusedxml import ElementTree as SafeElementTree  # type: ignore[import-untyped,unused-ignore]
from defusedxml.common import DefusedXmlException  # type: ignore[import-untyped,unused-ignore]

from services.core.config import CaSettings
from services.core.identity import printable
from services.core.inventory import Device, Frontend, ResolvedVariable
from services.core.pki import CertificateNames, certificate_to_hex_der, device_certificate_names
from services.core.scriptlines import comment, rawurlencode

QUERY_ID = "certs"
UPLOAD_PATH = "/DRIVE/CF0/update/x509"
REQUEST_VARIABLE = "X509/REQUEST"
ERROR_VARIABLE = "X509/REQUESTERROR"
KEY_VARIABLE = "X509/REQUESTKEY"
RESPONSE_VARIABLE = "X509/REQUESTRESPONSE"
# Uploads are a small XML list or one hex request (a 4096-bit request is about 3 KB as hex).
MAX_UPLOAD_BYTES = 64 * 1024
_ERROR_LIMIT = 300
STOPPED = ("error", "refused")
# The variable that turns the roll-out on or off per layer (customer, device, ...).
ROLLOUT_VARIABLE = "cert-rollout"
_ON = ("on", "true", "yes", "1")
_OFF = ("off", "false", "no", "0")


class RolloutInputError(ValueError):
    """A device upload that cannot be understood; the message says what is wrong."""


@dataclass(frozen=True)
class DeviceCertificate:
    subject_cn: str
    issuer_cn: str
    not_before: datetime | None
    not_after: datetime | None


@dataclass(frozen=True)
class QueryReport:
    """What ``mod cmd X509 xml-info`` said: the device certificate chain and request state."""

    certificates: tuple[DeviceCertificate, ...]
    request_pending: bool = False
    busy: bool = False
    request_error: str | None = None


@dataclass(frozen=True)
class RolloutState:
    """One device's row in ``certificate_rollouts``."""

    mac: str
    state: str
    device_subject: str | None = None
    device_issuer: str | None = None
    device_not_after: datetime | None = None
    queried_at: datetime | None = None
    common_name: str | None = None
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    chain_hex: tuple[str, ...] = ()
    serial: str | None = None
    attempts: int = 0
    error: str | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def plan(self) -> CertificateNames | None:
        if self.common_name is None:
            return None
        return CertificateNames(self.common_name, self.dns_names, self.ip_addresses)

    def as_json(self) -> dict[str, object]:
        data: dict[str, object] = dataclasses.asdict(self)
        data.pop("chain_hex")
        for key in ("device_not_after", "queried_at", "started_at", "updated_at"):
            value = getattr(self, key)
            data[key] = value.isoformat() if value is not None else None
        data["dns_names"] = list(self.dns_names)
        data["ip_addresses"] = list(self.ip_addresses)
        return data


@dataclass(frozen=True)
class Step:
    """What one poll adds to the reply (outside the run-once hash) and the state after it."""

    lines: tuple[str, ...]
    state: RolloutState


def rollout_enabled(variables: Mapping[str, ResolvedVariable], settings: CaSettings) -> bool:
    """The update variable cert-rollout (on/off) wins over ``ca.rollout``; anything else in the
    variable counts as unset (and ``pbxfront scripts check`` does not know it: keep to on/off)."""
    variable = variables.get(ROLLOUT_VARIABLE)
    if variable is not None:
        value = variable.value.strip().lower()
        if value in _ON:
            return True
        if value in _OFF:
            return False
    return settings.rollout


def certificate_plan(
    device: Device,
    frontend: Frontend,
    variables: Mapping[str, ResolvedVariable],
    reported_ip: str | None,
) -> CertificateNames:
    """The seed's device certificate for ``device``: CN = hardware id (its NetBIOS name),
    DNS/IP 1 = ``cert-external`` or else the Frontend's public address (the NAT router the
    device is reached through), DNS/IP 2 = ``cert-internal`` or else the address the device
    reports (``#i``), DNS 3 = ``cert-dns`` if set. Raises PkiError for a bad value."""

    def value(name: str) -> str | None:
        item = variables.get(name)
        return item.value.strip() if item is not None and item.value.strip() else None

    return device_certificate_names(
        device.hardware_id,
        external=value("cert-external") or frontend.public_address,
        internal=value("cert-internal") or reported_ip,
        extra_dns=value("cert-dns"),
    )


# --- commands ------------------------------------------------------------------------------------


def upload_url(base: str, mode: str, variable: str | None = None) -> str:
    """Where the device PUTs a command's output; ``#m``/``#h`` are expanded by the device."""
    url = f"{base}{UPLOAD_PATH}/#m?mode={mode}&sn=#m&hwid=#h"
    if variable is not None:
        return f"{url}&var={variable}"
    return f"{url}&id={QUERY_ID}"


def query_line(base: str) -> str:
    # protocol.md §9 step 1; `ser nop /always`: upload on every run.
    return f"mod cmd UP0 scfg {upload_url(base, 'query')} ser nop /always " + rawurlencode(
        "mod cmd X509 xml-info"
    )


def fetch_line(base: str, variable: str) -> str:
    # protocol.md §9 step 3: the upload is a `vars read` line.
    return (
        f"mod cmd UP0 scfg {upload_url(base, 'vardump', variable)} ser nop /always "
        + rawurlencode(f"vars read {variable}")
    )


def create_request_line(
    plan: CertificateNames, *, organization: str | None, country: str | None, key_bits: int
) -> str:
    """protocol.md §9 step 2. The SANs go in the order of the seed (DNS 1, 2, 3; IP 1, 2)."""
    parts = [
        "mod cmd X509 servercert-create /cmd servercert-create /redirect /target device",
        "/type Signing%20request",
        f"/key {key_bits}-bit",
        "/signature SHA256",
        f"/dn-cn {rawurlencode(plan.common_name)}",
    ]
    if organization:
        parts.append(f"/dn-o {rawurlencode(organization)}")
    if country:
        parts.append(f"/dn-c {rawurlencode(country)}")
    parts += [f"/san-dns {rawurlencode(name)}" for name in plan.dns_names]
    parts += [f"/san-ip {rawurlencode(address)}" for address in plan.ip_addresses]
    return " ".join(parts)


def response_lines(chain_hex: Sequence[str]) -> list[str]:
    # protocol.md §9 step 4: device certificate first, then intermediates and the CA.
    return [
        f"vars create {RESPONSE_VARIABLE}/{index:05d} pb {certificate}"
        for index, certificate in enumerate(chain_hex)
    ]


# --- the state machine ---------------------------------------------------------------------------


def poll_step(
    current: RolloutState | None,
    *,
    mac: str,
    base: str,
    plan: CertificateNames | None,
    plan_problem: str | None,
    organization: str | None,
    country: str | None,
    settings: CaSettings,
    now: datetime,
) -> Step:
    """Advance a device's roll-out by one update poll. ``plan`` is what its certificate must
    carry (None with ``plan_problem`` when the inventory's values are unusable)."""
    state = current or RolloutState(mac=mac, state="querying", attempts=0, started_at=now)
    poll = _Poll(state, base, plan, plan_problem, organization, country, settings, now)
    if state.state in STOPPED:
        note = comment(f"certificate roll-out stopped: {state.error or state.state}")
        return Step((poll.header, note), state)
    step = _STEPS.get(state.state)
    if step is None:  # pragma: no cover
        raise AssertionError(f"unknown roll-out state {state.state!r}")
    return step(poll)


@dataclass(frozen=True)
class _Poll:
    """One poll's view of a roll-out: its state and what the next step may need."""

    state: RolloutState
    base: str
    plan: CertificateNames | None
    plan_problem: str | None
    organization: str | None
    country: str | None
    settings: CaSettings
    now: datetime

    @property
    def header(self) -> str:
        return comment(f"certificate roll-out: {self.state.state}")

    def moved(self, **changes: Any) -> RolloutState:
        return dataclasses.replace(self.state, updated_at=self.now, **changes)

    def given_up(self, waiting_for: str, note: str = "") -> Step | None:
        """The error step once the device has had its attempts, else None."""
        if self.state.attempts < self.settings.max_attempts:
            return None
        error = f"the device did not upload {waiting_for} after {self.state.attempts} polls{note}"
        return Step((self.header,), self.moved(state="error", error=error))


def _step_current(poll: _Poll) -> Step:
    queried_at = poll.state.queried_at
    recheck = timedelta(hours=poll.settings.recheck_hours)
    if queried_at is not None and poll.now - queried_at < recheck:
        return Step((), poll.state)
    return Step((poll.header, query_line(poll.base)), poll.moved(state="querying", attempts=1))


def _step_querying(poll: _Poll) -> Step:
    given_up = poll.given_up("its certificates", f" ({poll.state.state})")
    if given_up is not None:
        return given_up
    return Step((poll.header, query_line(poll.base)), poll.moved(attempts=poll.state.attempts + 1))


def _step_requesting(poll: _Poll) -> Step:
    plan = poll.plan
    if plan is None:
        return Step((poll.header,), poll.moved(state="error", error=poll.plan_problem or "no plan"))
    line = create_request_line(
        plan,
        organization=poll.organization,
        country=poll.country,
        key_bits=poll.settings.request_key_bits,
    )
    return Step(
        (poll.header, comment(f"create a signing request for {plan.describe()}"), line),
        poll.moved(
            state="fetching",
            attempts=0,
            common_name=plan.common_name,
            dns_names=plan.dns_names,
            ip_addresses=plan.ip_addresses,
            error=None,
        ),
    )


def _step_fetching(poll: _Poll) -> Step:
    given_up = poll.given_up("a signing request")
    if given_up is not None:
        return given_up
    fetches = (
        poll.header,
        fetch_line(poll.base, ERROR_VARIABLE),
        fetch_line(poll.base, REQUEST_VARIABLE),
    )
    return Step(fetches, poll.moved(attempts=poll.state.attempts + 1))


def _step_queued(poll: _Poll) -> Step:
    # ca.signer: the request waits in PostgreSQL for the signing node, however long.
    updated_at = poll.state.updated_at
    since = f" since {updated_at:%Y-%m-%d %H:%M:%S} UTC" if updated_at else ""
    return Step(
        (poll.header, comment(f"signing request waiting for the signing node{since}")),
        poll.state,
    )


def _step_signed(poll: _Poll) -> Step:
    lines = (
        poll.header,
        comment(f"install certificate {poll.state.serial}"),
        *response_lines(poll.state.chain_hex),
        f"vars del {REQUEST_VARIABLE}",
        f"vars del {KEY_VARIABLE}",
        query_line(poll.base),
    )
    return Step(lines, poll.moved(state="installing", attempts=1))


_STEPS: dict[str, Callable[[_Poll], Step]] = {
    "current": _step_current,
    "querying": _step_querying,
    "installing": _step_querying,
    "requesting": _step_requesting,
    "fetching": _step_fetching,
    "queued": _step_queued,
    "signed": _step_signed,
}


def needs_certificate(
    report: QueryReport, *, ca_common_name: str, renew_days: int, now: datetime
) -> str | None:
    """Why the device needs a (new) provider certificate, or None when its certificate is ours
    and valid beyond the renewal window. PHPUS's rules: the leaf's issuer must be our CA."""
    if not report.certificates:
        return "the device reports no certificate"
    leaf = report.certificates[0]
    if leaf.issuer_cn != ca_common_name:
        return f"issued by {printable(leaf.issuer_cn, 80)!r}, not by {ca_common_name!r}"
    if leaf.not_after is None:
        return "the device does not say when its certificate expires"
    if leaf.not_after <= now:
        return f"expired on {leaf.not_after:%Y-%m-%d}"
    if leaf.not_after - now <= timedelta(days=renew_days):
        return f"expires on {leaf.not_after:%Y-%m-%d}, within {renew_days} days"
    return None


def after_query(
    state: RolloutState, report: QueryReport, *, ca_common_name: str, renew_days: int, now: datetime
) -> RolloutState:
    """The state after the device uploaded its certificate list."""
    leaf = report.certificates[0] if report.certificates else None
    state = dataclasses.replace(
        state,
        device_subject=leaf.subject_cn if leaf else None,
        device_issuer=leaf.issuer_cn if leaf else None,
        device_not_after=leaf.not_after if leaf else None,
        queried_at=now,
        updated_at=now,
    )
    if report.request_error:
        return dataclasses.replace(state, state="error", error=f"device: {report.request_error}")
    if state.state in STOPPED:
        return state
    reason = needs_certificate(
        report, ca_common_name=ca_common_name, renew_days=renew_days, now=now
    )
    if reason is None:
        return dataclasses.replace(state, state="current", attempts=0, error=None, chain_hex=())
    if state.state in ("fetching", "signed", "installing"):
        # Mid-flow: the old certificate is expected until the new one is installed.
        return state
    return dataclasses.replace(state, state="requesting", attempts=0, error=reason)


def after_signing(
    state: RolloutState,
    certificate: x509.Certificate,
    ca_certificate: x509.Certificate,
    now: datetime,
) -> RolloutState:
    """The state once the device's request is signed (on this node or the signing node): the
    chain the next poll pushes (the device certificate, then the RootCA) and its serial (hex)."""
    return dataclasses.replace(
        state,
        state="signed",
        chain_hex=(certificate_to_hex_der(certificate), certificate_to_hex_der(ca_certificate)),
        serial=format(certificate.serial_number, "x"),
        attempts=0,
        error=None,
        updated_at=now,
    )


# --- parsing device uploads -------------------------------------------------------------------

_DATE_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y%m%d%H%M%SZ",
    "%y%m%d%H%M%SZ",
    "%b %d %H:%M:%S %Y GMT",
    "%b %d %H:%M:%S %Y",
    "%Y-%m-%d",
)


def parse_device_time(value: str | None) -> datetime | None:
    """A certificate time as a device may write it (the exact form is [NC]): ISO 8601, ASN.1
    UTCTime/GeneralizedTime, openssl's text, or seconds since 1970. UTC unless it says else."""
    if value is None or not value.strip():
        return None
    text = " ".join(value.split())
    if text.isdigit():
        return datetime.fromtimestamp(int(text), UTC)
    for pattern in _DATE_FORMATS:
        try:
            parsed = datetime.strptime(text, pattern)
        except ValueError:
            continue
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    raise RolloutInputError(f"certificate time {printable(text, 40)!r} not understood")


def _text(body: bytes) -> str:
    if len(body) > MAX_UPLOAD_BYTES:
        raise RolloutInputError(f"upload larger than {MAX_UPLOAD_BYTES} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("latin-1")


def parse_query_report(body: bytes) -> QueryReport:
    """The ``mod cmd X509 xml-info`` upload (PHPUS reads ``info/servercert/certificate``
    elements with ``subject_cn``, ``issuer_cn``, ``not_before``, ``not_after`` attributes,
    ``info/requests/request`` for a pending request, ``info/busy`` while one is made and
    ``info/request-error``). Lenient about the wrapping; RolloutInputError when it is not XML
    or a certificate time cannot be read. Entities and DTDs are refused (no expansion bombs)."""
    text = _text(body).strip()
    if not text:
        raise RolloutInputError("empty upload: expected the output of mod cmd X509 xml-info")
    if "<!DOCTYPE" in text.upper() or "<!ENTITY" in text.upper():
        # Caught here because the wrapping below would hide it as a plain syntax error.
        raise RolloutInputError("DTDs and entities are not accepted")
    if text.startswith("<?xml"):
        text = text.split("?>", 1)[1] if "?>" in text else text
    try:
        root = SafeElementTree.fromstring(f"<upload>{text}</upload>", forbid_dtd=True)
    except ElementTree.ParseError as error:
        raise RolloutInputError(f"not XML: {error}") from None
    except DefusedXmlException:
        raise RolloutInputError("DTDs and entities are not accepted") from None
    certificates: list[DeviceCertificate] = []
    for servercert in root.iter("servercert"):
        for element in servercert.iter("certificate"):
            certificates.append(
                DeviceCertificate(
                    subject_cn=printable(element.get("subject_cn", ""), 200),
                    issuer_cn=printable(element.get("issuer_cn", ""), 200),
                    not_before=parse_device_time(element.get("not_before")),
                    not_after=parse_device_time(element.get("not_after")),
                )
            )
    # PHPUS sorts the chain so the issuer comes first; the leaf is the one no other names as
    # its issuer.
    subjects_issuing = {c.issuer_cn for c in certificates}
    leaves = [
        c for c in certificates if c.subject_cn not in subjects_issuing or len(certificates) == 1
    ]
    ordered = leaves[:1] + [c for c in certificates if c not in leaves[:1]]
    error_text: str | None = None
    for element in root.iter("request-error"):
        error_text = printable(
            (element.text or "").strip() or element.get("text", "") or "request error", 300
        )
    return QueryReport(
        certificates=tuple(ordered),
        request_pending=any(True for _ in root.iter("request")),
        busy=any(True for _ in root.iter("busy")),
        request_error=error_text,
    )


def parse_vardump(body: bytes, variable: str) -> str | None:
    """The value of ``variable`` in a ``vars read`` upload, None when the device has none.
    PHPUS: the line whose first field is the name, the value is its third field; the
    ``vars create <name> <flags> <value>`` form is accepted too."""
    text = _text(body)
    for line in text.replace("\r", "\n").split("\n"):
        tokens = line.split()
        if len(tokens) >= 3 and tokens[0] == variable:
            return " ".join(tokens[2:]) if variable == ERROR_VARIABLE else tokens[2]
        if len(tokens) >= 5 and tokens[:2] == ["vars", "create"] and tokens[2] == variable:
            return " ".join(tokens[4:]) if variable == ERROR_VARIABLE else tokens[4]
    return None


def bounded_error(text: str) -> str:
    return printable(text, _ERROR_LIMIT)
