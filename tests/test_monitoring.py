"""Metrics for the whole node, checked against Prometheus' own promtool: a real `pbxfront serve`
with two workers, scraped at /metrics; the shipped alert rules and their unit tests; the shipped
Grafana dashboard."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import peer_program
from tests.test_cli import Served, curl, start, stop

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "config" / "monitoring"
DEVICE = "IP232-01-02-03"
POLLS = 12


def promtool() -> str:
    return peer_program("promtool", "prometheus")


def run_promtool(*args: str, stdin: str | None = None, cwd: Path = MONITORING) -> str:
    result = subprocess.run(
        [promtool(), *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    promtool()
    served = start(
        tmp_path_factory.mktemp("monitoring") / "var",
        "--workers",
        "2",
        "--set",
        "admin.metrics_interval=0.3",
        # Prometheus scrapes a private listener of its own (the "metrics" service, no login);
        # /metrics on the admin listener needs an account (limits.metrics_auth).
        "--set",
        'listeners.metrics.host="127.0.0.1"',
        "--set",
        "listeners.metrics.port=0",
        "--set",
        "listeners.metrics.tls=false",
        "--set",
        'listeners.metrics.services=["metrics"]',
    )
    yield served
    stop(served)


def scrape(node: Served) -> str:
    status, body = curl(node.urls["metrics"] + "/metrics")
    assert status == 200, body
    return body


def value(metrics: str, name: str, labels: str = "") -> float | None:
    """The sample ``name{labels}`` (labels as printed, in order), summed over the rest."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.M)
    found = [
        float(match.group(2))
        for match in pattern.finditer(metrics)
        if all(part in (match.group(1) or "") for part in labels.split(",") if part)
    ]
    return sum(found) if found else None


def test_one_scrape_sees_every_worker_and_the_domain_gauges(node: Served) -> None:
    workers = psutil.Process(node.process.pid).children()
    assert len(workers) == 2
    for _ in range(POLLS):
        status, _body = curl(
            "--cacert",
            str(node.ca),
            *node.device(DEVICE),
            node.urls["devices"] + "/DRIVE/CF0/update/update.txt",
        )
        assert status == 200
    # Each poll is a new connection, spread by the kernel over both workers' sockets; whichever
    # worker answers the scrape, it reports the node's total, every time.
    for _ in range(6):
        metrics = scrape(node)
        assert value(metrics, "pbxfront_update_polls_total", 'kind="update"') == POLLS
        assert value(metrics, "pbxfront_tls_handshakes_total", 'listener="devices"') == POLLS
    # The collector (one per node) reads PostgreSQL on its own interval, and the status writer
    # commits the polls' status in batches: wait (bounded) until a collection has seen the poll.
    deadline = time.monotonic() + 15
    while True:
        metrics = scrape(node)
        states = {
            state: value(metrics, "pbxfront_devices", f'state="{state}"')
            for state in ("in_sync", "out_of_sync", "stale", "unknown")
        }
        seen = (states["in_sync"] or 0) + (states["out_of_sync"] or 0)
        if seen or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # The demo inventory has four devices; one has polled (and was sent its script).
    assert None not in states.values(), states
    assert sum(v or 0 for k, v in states.items() if k != "unknown") == 4
    assert states["out_of_sync"] == 1
    assert value(metrics, "pbxfront_certificate_expiry_timestamp_seconds", 'kind="ca"')
    assert value(metrics, "pbxfront_certificate_expiry_timestamp_seconds", 'kind="server"')
    assert value(metrics, "pbxfront_backups_stale") == 0
    assert value(metrics, "pbxfront_build_info") == 1
    # Both workers' pools add up (livesum), each with at least one connection open.
    open_connections = value(metrics, "pbxfront_db_pool_connections", 'state="open"')
    assert open_connections is not None
    assert open_connections >= 2
    assert value(metrics, "pbxfront_metrics_collector_last_success_timestamp_seconds")
    # What Prometheus itself says about the exposition.
    run_promtool("check", "metrics", stdin=metrics)


def test_alert_rules_and_their_unit_tests() -> None:
    assert "SUCCESS" in run_promtool("check", "rules", "alerts.yml")
    output = run_promtool("test", "rules", "alerts.test.yml")
    assert "SUCCESS" in output
    tested = (MONITORING / "alerts.test.yml").read_text()
    for alert in ("PbxfrontBackupStale", "PbxfrontSyslogBacklog"):
        assert f"alertname: {alert}" in tested


def test_dashboard_queries_name_metrics_the_node_exports(node: Served) -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exported = set(re.findall(r"^# TYPE (\S+) (\S+)$", scrape(node), re.M))
    names = {name for name, _kind in exported}
    # Counters and histograms are queried by their series names.
    names |= {f"{name}_total" for name, kind in exported if kind == "counter"}
    names |= {f"{name}_bucket" for name, kind in exported if kind == "histogram"}
    queried: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            queried |= set(re.findall(r"\b(pbxfront_[a-z_]+)", target["expr"]))
    # LDAP and events counters appear once something happened; they are declared all the same.
    missing = {
        name
        for name in queried - names
        if not name.startswith(("pbxfront_ldap_", "pbxfront_events_", "pbxfront_backup_puts"))
    }
    assert not missing, missing
    assert len(queried) >= 12
