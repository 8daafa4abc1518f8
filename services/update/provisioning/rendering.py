"""The reply text for a decision, in PHPUS's order (the package docstring has it): the
rendered script body (cached), the run-once hash, fast polling on and off; the replies for a
script that cannot be rendered and for a device not in the inventory."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from services.core.identity import DeviceIdentity
from services.core.inventory import (
    Device,
    ResolvedVariable,
)
from services.core.scriptlines import comment, to_crlf
from services.update.provisioning.context import (
    STAGING,
    STAGING_POLL_MINUTES,
    UPDATE,
    BodyCache,
    ContextAdditions,
    Lifecycle,
    PolicyError,
    PollContext,
    Reply,
    Snapshot,
    Urls,
)
from services.update.provisioning.decision import (
    Decision,
    decide,
    poll_interval,
)
from services.update.scripts import (
    ScriptStore,
    Secret,
    rawurlencode,
    script_hash,
    script_lines,
)


def _interval_or(variables: Mapping[str, ResolvedVariable], default: int) -> int:
    """``poll_minutes`` for the templates: the device's interval; an unusable ``h-poll`` is
    the poll's PolicyError (decide), so a preview shows the setting instead."""
    try:
        return poll_interval(variables, default)
    except PolicyError:
        return default


def template_context(
    snapshot: Snapshot,
    device: Device,
    identity: DeviceIdentity,
    phase: str,
    urls: Urls,
    poll_minutes: int,
    variables: Mapping[str, ResolvedVariable] | None = None,
    additions: ContextAdditions | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Jinja context, #(name) variables). Secrets are wrapped so they reach only callers that
    may see them. Nothing from the poll's own arguments goes in: a script depends only on the
    inventory, the identity's proof and the URLs, which is what lets :class:`BodyCache` work."""
    customer = snapshot.customers[device.customer]
    frontend = snapshot.frontends[customer.frontend]
    secrets_allowed = identity.proven or customer.allow_claimed_secrets
    resolved = variables if variables is not None else snapshot.resolve(device)
    update_variables: dict[str, Any] = {
        name: Secret(name, item.value, secrets_allowed) if item.secret else item.value
        for name, item in resolved.items()
    }
    # Flat dataclasses of plain values: a shallow copy is what asdict() gives, without its
    # deep copies (which cost more than the rendering over a whole fleet).
    customer_view = dict(vars(customer))
    for secret in ("registration_password", "login_password"):
        value = customer_view[secret]
        customer_view[secret] = (
            Secret(f"customer.{secret}", value, secrets_allowed) if value else None
        )
    context = {
        "device": {
            "mac": device.mac,
            "hardware_id": device.hardware_id,
            "type": device.device_type,
            "class": device.device_class,
            "customer": device.customer,
            "cpe_id": device.cpe_id,
            "name": device.name,
        },
        "customer": customer_view,
        "frontend": dict(vars(frontend)),
        "vars": update_variables,
        "proven": identity.proven,
        "secrets_allowed": secrets_allowed,
        "phase": phase,
        "poll_minutes": _interval_or(resolved, poll_minutes),
        "urls": urls,
    }
    if additions is not None:

        def wrap(name: str, secret_value: str) -> object:
            return Secret(name, secret_value, secrets_allowed)

        for key, extra in additions(snapshot, device, wrap).items():
            context.setdefault(key, extra)
    return context, update_variables


def _fast_polling_on(lifecycle: Lifecycle, next_url: str) -> list[str]:
    return [
        f"mod cmd UP1 provision {lifecycle.provision_minutes}",
        f"config add UP1 /poll {STAGING_POLL_MINUTES}",
        f"config add UP1 /url {rawurlencode(next_url)}",
        "config add UP1 /no-dhcp",
    ]


def _fast_polling_off(interval: int, urls: Urls) -> list[str]:
    return [
        comment(f"fast polling off: poll every {interval} min"),
        "mod cmd UP1 provision 0",
        "config rem UP1 /provision",
        f"config add UP1 /poll {interval}",
        f"config add UP1 /url {rawurlencode(urls.update)}",
        "config add UP1 /no-dhcp",
    ]


def body_lines(
    store: ScriptStore, context: PollContext, bodies: BodyCache | None = None
) -> list[str]:
    """The rendered script body (cached by everything it depends on). Raises ScriptError or
    SecretRequired; never returns part of a script."""
    key = (
        context.snapshot.version,
        store.version,
        store.generation,
        context.device.mac,
        context.phase,
        context.identity.proven,
        context.urls.base,
        context.lifecycle.poll_minutes,
    )
    lines = bodies.get(key) if bodies is not None else None
    if lines is None:
        jinja_context, update_variables = template_context(
            context.snapshot,
            context.device,
            context.identity,
            context.phase,
            context.urls,
            context.lifecycle.poll_minutes,
            context.variables,
            context.additions,
        )
        lines = script_lines(store.render(f"{context.phase}.txt", jinja_context, update_variables))
        if bodies is not None:
            bodies.put(key, lines)
    return lines


def render(
    store: ScriptStore,
    context: PollContext,
    decision: Decision,
    bodies: BodyCache | None = None,
) -> Reply:
    """The reply text for a decision, in PHPUS's order (the package docstring): who and why,
    then a restage, or the lines of every poll, the script body and the phase's ending.
    Raises ScriptError or SecretRequired; never half."""
    lines = _preamble(store, context, decision)
    if decision.restage:
        return Reply(200, to_crlf([*lines, *_restage(context)]))
    lines += _every_poll(context, decision)
    body = body_lines(store, context, bodies)
    if context.phase == STAGING:
        return _reply(decision, [*lines, *body, *_staging_end(context)])
    return _update_end(context, decision, lines, body)


def _preamble(store: ScriptStore, context: PollContext, decision: Decision) -> list[str]:
    """Comments: for whom, the decision's notes, script changes not served yet."""
    device = context.device
    who = f"customer {device.customer}, " if context.identity.proven else ""
    lines = [
        comment(
            f"pbxfront {context.phase}.txt for {device.hardware_id} ({device.mac}), "
            f"{who}identity {context.identity.proof.value}"
        )
    ]
    lines += [comment(note) for note in decision.notes]
    pending = sorted(store.pending.items())[:5]
    lines += [comment(f"script change not served yet: {name}: {why}") for name, why in pending]
    return lines


def _restage(context: PollContext) -> list[str]:
    return [
        comment("restaging requested by an operator: back to staging.txt"),
        *_fast_polling_on(context.lifecycle, context.urls.staging),
        "config write",
        "config activate",
        "iresetn",
    ]


def _every_poll(context: PollContext, decision: Decision) -> list[str]:
    """What comes before the script whatever its hash: backup, window, roll-out, firmware."""
    lines: list[str] = []
    if decision.backup:
        # PHPUS order (protocol.md §5): the backup line goes out on every poll, outside the
        # run-once hash and before the maintenance window; the backup service keeps a version
        # only when the configuration changed. Update variable backup = "off" stops it.
        lines += [comment("configuration backup"), f"mod cmd UP0 scfg {context.urls.backup}"]
    if decision.times is not None:
        lines += [comment("maintenance window"), decision.times]
    lines += context.rollout
    if decision.firmware:
        # protocol.md §10: firmware and script in one reply; the reset makes the script below
        # run with the new firmware if the device loads it now.
        for target, current in decision.firmware:
            lines += [
                comment(f"{target.kind} {current or 'unknown'} -> {target.build}"),
                f"mod cmd UP0 {target.kind} {target.url} ser {target.build}",
            ]
        lines.append("iresetn")
    return lines


def _reply(decision: Decision, lines: list[str], **fields: Any) -> Reply:
    return Reply(
        200,
        to_crlf(lines),
        firmware_suspect=decision.firmware_suspect,
        firmware_stuck=decision.firmware_stuck,
        error=decision.problem,
        **fields,
    )


def _staging_end(context: PollContext) -> list[str]:
    lifecycle = context.lifecycle
    return [
        comment("staging done: continue with update.txt, polling fast until then"),
        *_fast_polling_on(
            lifecycle, context.urls.update_after_staging(lifecycle.provision_minutes)
        ),
        "config write",
        "config activate",
        "iresetn",
    ]


def _update_end(
    context: PollContext, decision: Decision, lines: list[str], body: list[str]
) -> Reply:
    """update.txt: the body only when CHECK is not its hash (or right after staging), fast
    polling off when it was on, the run-once guard."""
    digest = script_hash("\n".join(body))
    leave = (
        _fast_polling_off(decision.interval, context.urls) if decision.leave_fast_polling else []
    )
    check_current = (
        context.arguments.check is not None and context.arguments.check.lower() == digest
    )
    if check_current and not context.arguments.staged:
        lines = [*lines, comment(f"nothing to do: CHECK {digest} is current")]
        if leave:
            lines += [*leave, "config write", "config activate"]
        return _reply(decision, lines, hash_sent=digest, in_sync=True)
    # A device skips what follows a check line naming its current serial (protocol.md §2), so
    # the run after staging of a current script goes without it, or its reset would be lost.
    check = [] if check_current else [f"mod cmd UP1 check ser {digest}"]
    lines = [
        *lines,
        *body,
        comment("end of script"),
        *leave,
        "config write",
        "config activate",
        *check,
        "iresetn",
    ]
    return _reply(decision, lines, hash_sent=digest, in_sync=False)


def reply_for(
    store: ScriptStore,
    context: PollContext,
    firmware_available: Callable[[str, str], bool],
    bodies: BodyCache | None = None,
) -> Reply:
    """decide, then render: the whole reply for one poll (raises like both)."""
    return render(store, context, decide(context, firmware_available), bodies)


def unrenderable(context: PollContext, error: str) -> Reply:
    """The reply when the device's script cannot be rendered (an operator's template or
    variable error): a 200 of comments, never a 5xx the device would retry into a loop and
    never part of a script. A device that staging left polling fast is still brought back to
    its normal interval, so it waits for the fix at the pace it should."""
    lines = [
        comment(
            f"pbxfront: {context.phase}.txt cannot be rendered for this device; "
            "the operator's log says why"
        )
    ]
    if context.phase == UPDATE and context.arguments.fast_polling_left_on:
        try:
            interval = poll_interval(context.variables, context.lifecycle.poll_minutes)
        except PolicyError:
            interval = context.lifecycle.poll_minutes
        lines += [*_fast_polling_off(interval, context.urls), "config write", "config activate"]
    return Reply(200, to_crlf(lines), error=error, unrendered=True)


def render_unknown(
    store: ScriptStore,
    snapshot: Snapshot,
    identity: DeviceIdentity,
    urls: Urls,
    check: str | None,
) -> Reply:
    """``unknown.txt`` for a device not in the inventory (update.unknown_devices = "script"):
    rendered with the global layer only and no customer, so it reveals nothing about any
    customer; no secret reaches it. Guarded by the run-once hash like update.txt."""
    update_variables: dict[str, Any] = {
        variable.name: Secret(variable.name, variable.value, False)
        if variable.secret
        else variable.value
        for variable in snapshot.variables.resolve({"global": ""}).values()
    }
    context = {
        "device": {
            "mac": identity.mac,
            "hardware_id": identity.hardware_id,
            "type": identity.device_type,
        },
        "vars": update_variables,
        "proven": identity.proven,
        "secrets_allowed": False,
        "phase": "unknown",
        "urls": urls,
    }
    body = script_lines(store.render("unknown.txt", context, update_variables))
    digest = script_hash("\n".join(body))
    lines = [comment("pbxfront unknown.txt: this device is not in the provider's inventory")]
    if check is not None and check.lower() == digest:
        lines.append(comment(f"nothing to do: CHECK {digest} is current"))
        return Reply(200, to_crlf(lines), hash_sent=digest, in_sync=True)
    lines += [
        *body,
        "config write",
        "config activate",
        f"mod cmd UP1 check ser {digest}",
        "iresetn",
    ]
    return Reply(200, to_crlf(lines), hash_sent=digest)
