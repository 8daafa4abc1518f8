"""Provisioning as a pipeline: identify -> look up -> decide -> render -> record.

Plain functions over plain values; the handlers feed them from the request and the database:
:func:`look_up` gathers everything a reply depends on into a :class:`PollContext` (variables
resolved once), :func:`decide` says what the device needs (pure), :func:`render` writes the
reply, and the handler records the status. What a device gets (protocol.md §2 and §10, in
PHPUS's order):

    # comments (who, what, why)
    mod cmd UP0 scfg <backup url>                   update: every poll (outside the hash)
    mod cmd UP1 times /allow … /initial …           normal update polls, when a window is set;
                                                    staging and the first update: /initial only
    <certificate roll-out step>                     update, when the roll-out is on
    mod cmd UP0 prot|boot <url> ser <build>, iresetn  while PROT/BOOT differ from the target
    <rendered script body>                          update: only if CHECK != hash(body)
    mod cmd UP1 provision 0, config rem UP1 /provision, config add UP1 /poll <interval>,
    config add UP1 /url <update.txt>, /no-dhcp      the first update after staging (or a poll
                                                    carrying PHPUS's polling=/phase= leftovers)
    config write / config activate
    mod cmd UP1 check ser <hash>                    update.txt (the run-once guard)
    iresetn

staging.txt is sent on every staging poll (no guard), turns fast polling on
(``mod cmd UP1 provision <n>``, ``config add UP1 /poll 1``) and moves the device to update.txt
with ``polling=<n>`` in the URL; the first update.txt reply sees it and turns fast polling off.
Fast polling is the server's, whatever the templates contain.
"""

from services.update.provisioning.check import (
    check_scripts,
    check_tree,
    template_line,
)
from services.update.provisioning.context import (
    BUILD_PATTERN,
    DEVICE_ARGUMENTS,
    FAST_POLL,
    HOURS_PATTERN,
    POLLING_ARGUMENT,
    STAGED_ARGUMENT,
    STAGING,
    STAGING_POLL_MINUTES,
    UPDATE,
    Adopter,
    BodyCache,
    ContextAdditions,
    FirmwareTarget,
    Lifecycle,
    PolicyError,
    PollArguments,
    PollContext,
    Reply,
    Snapshot,
    Urls,
    look_up,
)
from services.update.provisioning.decision import (
    Decision,
    decide,
    firmware_targets,
    maintenance_line,
    names_build,
    poll_interval,
)
from services.update.provisioning.rendering import (
    body_lines,
    render,
    render_unknown,
    reply_for,
    template_context,
    unrenderable,
)

__all__ = [
    "BUILD_PATTERN",
    "DEVICE_ARGUMENTS",
    "FAST_POLL",
    "HOURS_PATTERN",
    "POLLING_ARGUMENT",
    "STAGED_ARGUMENT",
    "STAGING",
    "STAGING_POLL_MINUTES",
    "UPDATE",
    "Adopter",
    "BodyCache",
    "ContextAdditions",
    "Decision",
    "FirmwareTarget",
    "Lifecycle",
    "PolicyError",
    "PollArguments",
    "PollContext",
    "Reply",
    "Snapshot",
    "Urls",
    "body_lines",
    "check_scripts",
    "check_tree",
    "decide",
    "firmware_targets",
    "look_up",
    "maintenance_line",
    "names_build",
    "poll_interval",
    "render",
    "render_unknown",
    "reply_for",
    "template_context",
    "template_line",
    "unrenderable",
]
