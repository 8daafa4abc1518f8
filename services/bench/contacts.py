"""``pbxfront bench contacts``: a customer uploads big Outlook exports with curl -T."""

from __future__ import annotations

import base64
from typing import Any

from services.bench.environment import BenchOptions, environment, listener
from services.bench.load import Call, LoadSpec
from services.bench.measure import Row, measure

OUTLOOK_COLUMNS = (
    "Title",
    "First Name",
    "Middle Name",
    "Last Name",
    "Suffix",
    "Company",
    "Department",
    "Job Title",
    "Business Street",
    "Business City",
    "Business Postal Code",
    "Business Country/Region",
    "Home Street",
    "Home City",
    "Business Fax",
    "Business Phone",
    "Business Phone 2",
    "Assistant's Phone",
    "Home Phone",
    "Mobile Phone",
    "Pager",
    "Birthday",
    "Categories",
    "E-mail Address",
    "E-mail Display Name",
    "Notes",
    "Web Page",
)


def outlook_export(rows: int, variant: int = 0) -> bytes:
    """An English Outlook "CSV (Windows)" export, UTF-8 with BOM, every field quoted, with a
    business and a mobile number per contact written the way people type them; ``variant``
    changes every 10th contact so each upload is a new version."""
    lines = [",".join(f'"{column}"' for column in OUTLOOK_COLUMNS)]
    for i in range(rows):
        changed = variant if i % 10 == 0 else 0
        values = dict.fromkeys(OUTLOOK_COLUMNS, "")
        values.update(
            {
                "First Name": f"Jörg{i}",
                "Last Name": f"Müller-{i:06d}",
                "Company": f"Kunde {i % 500} GmbH",
                "Business Street": f"Hauptstraße {i % 200}",
                "Business City": "Sindelfingen",
                "Business Postal Code": "71063",
                "Business Phone": f"07031 {1000000 + i * 7 + changed}",
                "Mobile Phone": f"+49 (171) {2000000 + i}",
                "E-mail Address": f"contact{i}@example.com",
                "Notes": "called back,\nsee ticket" if i % 50 == 0 else "",
            }
        )
        lines.append(",".join('"' + values[c].replace('"', '""') + '"' for c in OUTLOOK_COLUMNS))
    return b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode()


def scenario_contacts(options: BenchOptions, log: Any) -> list[Row]:
    """A customer uploads a big Outlook export with curl -T, a few times (each a new version);
    goal: each validated, normalised and current within 10 s. Baseline: the same bytes PUT to
    the no-op endpoint."""
    rows_per_file = options.contacts
    listeners = (
        listener("contacts", ["contacts", "noop"], options)
        # The no-op baseline takes the same file (contacts has its own, larger limit).
        + "[limits]\nmax_body_bytes = 67108864\n\n"
    )
    customer = "Bench00000"
    credentials = base64.b64encode(f"{customer}:bench-registration".encode()).decode()
    auth = (f"Authorization: Basic {credentials}",)
    path = f"/DRIVE/CF0/directory/{customer}/contacts.csv"
    uploads = 3
    files = [outlook_export(rows_per_file, variant) for variant in range(1, uploads + 1)]
    log(
        f"contacts: {uploads} uploads of an Outlook export with {rows_per_file:,} contacts "
        f"({len(files[0]) / 1e6:.1f} MB, two numbers each):"
    )
    rows: list[Row] = []
    with environment(options, log, listeners=listeners) as env:
        target = env.target("contacts")

        def spec(calls: list[Call]) -> LoadSpec:
            return LoadSpec(
                target, calls, duration=3600, processes=1, concurrency=1, once=True, timeout=120
            )

        rows.append(
            measure(
                env,
                "pbxfront no-op PUT of the file",
                "pbxfront",
                spec([Call("/noop", None, "PUT", body) for body in files]),
                log,
            )
        )
        upload = measure(
            env,
            f"contacts upload, {rows_per_file:,} contacts",
            "pbxfront",
            spec([Call(path, None, "PUT", body, auth) for body in files]),
            log,
        )
        upload.goal = "each <= 10 s"
        upload.met = (
            upload.result.errors == 0
            and upload.result.requests == uploads
            and max(upload.result.latencies, default=float("inf")) <= 10.0
        )
        rows.append(upload)
    return rows
