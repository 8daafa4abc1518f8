"""One-step onboarding and replacement (RMA) of devices: top-level composition of the inventory
(core) and the redirect service, like services/serve.py.

``pbxfront devices onboard FILE.csv`` and ``POST /api/v1/devices/onboard`` take rows of ``mac,
type, customer, cpe_id`` (optional ``class, name, frontend, url``) and create, per row, the
inventory device and the redirect mapping (to ``frontend``/``url``, default the customer's
Frontend) in ONE transaction with an audit row each. Every bad row is reported as
``file:line: field: why`` and then nothing is changed. A row identical to what is stored is
"unchanged"; a MAC that is already a device with other data, or a CPE id another device holds,
is an error naming it.

``pbxfront devices replace OLD NEW`` (RMA) moves customer, CPE id, name, class and device-layer
variables from OLD to NEW, moves the redirect mapping, the backup history (every stored version of
OLD becomes NEW's, so NEW's first backup is compared with OLD's last) and the certificate
roll-out: a device OLD had in the roll-out stays in it as NEW, from the query step (OLD's
certificate, request and chain belong to OLD's hardware). OLD's update state goes with OLD (NEW
stages afresh); certificates issued to OLD stay valid and are listed for ``pbxfront ca revoke``.
One transaction, one audit row ``device.replace`` on NEW naming OLD and what moved. Refused when
NEW is in the inventory or has stored backups of another customer.

One module a concern: rows (checking the rows, no database), onboarding, replacement, adoption
(``update.auto_adopt``), command (the CLI) and api (the admin endpoint).
"""

from __future__ import annotations

from services.onboard.adoption import auto_adopt
from services.onboard.api import ENDPOINTS
from services.onboard.command import register
from services.onboard.onboarding import DEFAULT_PROVIDER, Result, onboard
from services.onboard.replacement import replace
from services.onboard.rows import OnboardError, Row, check_rows, parse_csv

__all__ = [
    "DEFAULT_PROVIDER",
    "ENDPOINTS",
    "OnboardError",
    "Result",
    "Row",
    "auto_adopt",
    "check_rows",
    "onboard",
    "parse_csv",
    "register",
    "replace",
]
