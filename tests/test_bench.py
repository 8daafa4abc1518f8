"""`pbxfront bench` runs every scenario at a tiny size (speed itself is never asserted here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.bench.load import LoadResult

ROOT = Path(__file__).resolve().parent.parent

requires_nginx = pytest.mark.skipif(
    shutil.which("nginx") is None
    and not Path("/usr/sbin/nginx").exists()
    and not os.environ.get("CI"),
    reason="nginx not installed (CI installs it; in CI a missing nginx fails the test)",
)


def bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    output = tmp_path / "result.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "bench",
            *args,
            "--set",
            f'data_dir="{tmp_path}"',
            "--json",
            str(output),
            "--processes",
            "1",
            "--concurrency",
            "4",
            "--workers",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    # Exit 1 means "a goal was not met", which a tiny run on a busy machine may well be.
    assert result.returncode in (0, 1), result.stdout + result.stderr
    report: dict[str, Any] = json.loads(output.read_text())
    assert report["table"] in result.stdout
    return report


@requires_nginx
def test_polls_scenario_runs_with_baselines(tmp_path: Path) -> None:
    report = bench(
        tmp_path,
        "polls",
        "--devices",
        "8",
        "--duration",
        "0.5",
        "--rate",
        "20",
        "--tls-resumption",
    )
    rows = {row["name"]: row for row in report["rows"]}
    expected = {
        "nginx static, RSA 4096",
        "nginx static, RSA 4096, resumed TLS",
        "pbxfront poll in sync, RSA 4096, resumed TLS",
        "pbxfront no-op, RSA 4096",
        "pbxfront poll in sync, RSA 4096",
        "pbxfront poll full render, RSA 4096",
        "nginx static, RSA 2048",
        "pbxfront poll in sync, RSA 2048",
        "nginx static, keep-alive",
        "pbxfront no-op, keep-alive",
        "pbxfront poll in sync, keep-alive",
        "pbxfront poll in sync at 20/s, keep-alive",
        "nginx static at 20/s, keep-alive",
        "pbxfront poll in sync at 20/s, new TLS, RSA 2048",
    }
    assert set(rows) == expected
    for name, row in rows.items():
        assert row["requests"] > 0, name
        assert row["errors"] == 0, (name, row["error_samples"])
        assert set(row["statuses"]) == {"200"}, name
    assert rows["pbxfront poll in sync, RSA 4096"]["baseline"] == "nginx static, RSA 4096"
    assert rows["pbxfront poll in sync, RSA 4096"]["ratio"] > 0
    assert rows["pbxfront poll in sync, keep-alive"]["goal"] == ">= 0.5x"
    # Resumption really happened, at both servers (each device's first connection is a full
    # handshake; the later ones resume).
    for name in (
        "nginx static, RSA 4096, resumed TLS",
        "pbxfront poll in sync, RSA 4096, resumed TLS",
    ):
        assert 0 < rows[name]["resumed_tls_sessions"] < rows[name]["requests"], name
        assert rows[name]["offered_tls_sessions"] < rows[name]["requests"], name
    # Every worker resumes every worker's sessions (issue 18): all that were offered.
    pbxfront = rows["pbxfront poll in sync, RSA 4096, resumed TLS"]
    assert pbxfront["resumed_tls_sessions"] == pbxfront["offered_tls_sessions"]
    assert "resumed" in report["table"].splitlines()[0]
    assert rows["pbxfront poll in sync, RSA 4096"]["resumed_tls_sessions"] == 0


@requires_nginx
def test_storm_scenario_fetches_every_device_once(tmp_path: Path) -> None:
    report = bench(tmp_path, "storm", "--devices", "12")
    rows = {row["name"]: row for row in report["rows"]}
    storm = rows["pbxfront storm, 12 devices"]
    assert storm["requests"] == 12
    assert storm["errors"] == 0
    assert storm["met"] is True
    assert rows["nginx static staging.txt"]["requests"] == 12


@requires_nginx
def test_resumed_storm_after_a_restart(tmp_path: Path) -> None:
    """Devices that polled once reconnect offering their session after the server restarted:
    nginx resumes them all (its ticket key file), and so does pbxfront (its ticket keys are kept
    in PostgreSQL), with a restart and without."""
    report = bench(tmp_path, "storm", "--devices", "12", "--tls-resumption")
    rows = {row["name"]: row for row in report["rows"]}
    nginx = rows["nginx static staging.txt after a restart, resumed TLS"]
    restarted = rows["pbxfront storm after a restart, 12 devices, resumed TLS"]
    kept = rows["pbxfront storm, 12 devices, resumed TLS, no restart"]
    for row in (nginx, restarted, kept):
        assert row["requests"] == 12, row
        assert row["errors"] == 0, row["error_samples"]
        assert row["offered_tls_sessions"] == 12, row
    assert nginx["resumed_tls_sessions"] == 12
    assert restarted["resumed_tls_sessions"] == 12
    assert kept["resumed_tls_sessions"] == 12
    assert restarted["baseline"] == nginx["name"]


def test_percentiles_are_nearest_rank() -> None:
    result = LoadResult()
    result.latencies.extend(i / 1000 for i in range(1, 101))  # 1..100 ms
    assert result.percentile(0.5) == pytest.approx(50.0)
    assert result.percentile(0.99) == pytest.approx(99.0)
    assert result.percentile(1.0) == pytest.approx(100.0)


def test_backups_scenario_runs_against_the_no_op_put(tmp_path: Path) -> None:
    report = bench(tmp_path, "backups", "--devices", "10", "--duration", "0.5")
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {"pbxfront no-op PUT, keep-alive", "pbxfront backup PUT, keep-alive"}
    backup = rows["pbxfront backup PUT, keep-alive"]
    assert backup["requests"] > 0
    assert backup["errors"] == 0, backup["error_samples"]
    assert set(backup["statuses"]) <= {"200", "201"}
    assert backup["baseline"] == "pbxfront no-op PUT, keep-alive"


def test_redirect_scenario_looks_up_registered_devices(tmp_path: Path) -> None:
    report = bench(tmp_path, "redirect", "--mappings", "500", "--duration", "0.5", "--rate", "20")
    rows = {row["name"]: row for row in report["rows"]}
    lookup = rows["pbxfront redirect at 20/s, 500 mappings"]
    assert lookup["requests"] > 0
    assert lookup["errors"] == 0, lookup["error_samples"]
    # Every lookup named a registered device: a handover script, never "unknown".
    assert set(lookup["statuses"]) == {"200"}
    assert lookup["goal"] == "p99 <= 5 ms"
    assert rows["pbxfront redirect, flat out"]["baseline"] == "pbxfront no-op, flat out"


def test_archive_scenario_lists_and_diffs_through_the_admin_api(tmp_path: Path) -> None:
    report = bench(tmp_path, "archive", "--devices", "3", "--versions", "40", "--duration", "0.5")
    rows = {row["name"]: row for row in report["rows"]}
    for name in ("archive: list 100 versions", "archive: diff two versions"):
        assert rows[name]["requests"] > 0, name
        assert rows[name]["errors"] == 0, rows[name]["error_samples"]
        assert set(rows[name]["statuses"]) == {"200"}, name
    assert rows["archive: diff two versions"]["goal"] == "p99 <= 300 ms"


def test_contacts_scenario_uploads_outlook_exports(tmp_path: Path) -> None:
    report = bench(tmp_path, "contacts", "--contacts", "200")
    rows = {row["name"]: row for row in report["rows"]}
    upload = rows["contacts upload, 200 contacts"]
    # Three uploads, each a new version (201), each within the goal at this size.
    assert upload["requests"] == 3
    assert upload["statuses"] == {"201": 3}, upload["error_samples"]
    assert upload["met"] is True
    assert rows["pbxfront no-op PUT of the file"]["statuses"] == {"204": 3}


def test_directory_scenario_searches_over_ldap(tmp_path: Path) -> None:
    report = bench(
        tmp_path,
        "directory",
        "--customers",
        "2",
        "--contacts",
        "40",
        "--duration",
        "1",
        "--rate",
        "30",
    )
    rows = {row["name"]: row for row in report["rows"]}
    fixed = rows["directory search at 30/s"]
    assert fixed["errors"] == 0, fixed["error_samples"]
    # Lookups of known numbers and names find entries; one search in ten asks for a number
    # nobody has and finds none.
    assert set(fixed["statuses"]) == {"200", "204"}
    assert fixed["statuses"]["200"] > fixed["statuses"]["204"]
    assert fixed["goal"] == "p99 <= 20 ms"
    assert rows["directory search, flat out"]["requests"] > 0


def test_events_scenario_stores_and_forwards_every_event(tmp_path: Path) -> None:
    report = bench(tmp_path, "events", "--devices", "6", "--duration", "0.5")
    rows = {row["name"]: row for row in report["rows"]}
    intake = rows["events intake, keep-alive"]
    assert intake["errors"] == 0, intake["error_samples"]
    assert set(intake["statuses"]) == {"201"}
    assert intake["baseline"] == "pbxfront no-op POST, keep-alive"
    (forwarding,) = (row for name, row in rows.items() if name.startswith("syslog forwarding"))
    # Every acknowledged event reached the syslog receiver.
    assert forwarding["requests"] == intake["requests"]
    assert forwarding["errors"] == 0


def test_console_scenario_pages_the_fleet_with_a_session(tmp_path: Path) -> None:
    report = bench(tmp_path, "console", "--devices", "300", "--duration", "0.5", "--rate", "20")
    rows = {row["name"]: row for row in report["rows"]}
    kinds = ("first page", "deep pages", "search", "filters", "sorts", "mix")
    assert set(rows) == {"pbxfront no-op at 20/s"} | {f"fleet at 20/s, {kind}" for kind in kinds}
    for kind in kinds:
        row = rows[f"fleet at 20/s, {kind}"]
        assert row["requests"] > 0, kind
        assert row["errors"] == 0, (kind, row["error_samples"])
        # Every answer was the page itself, never the login form's redirect.
        assert set(row["statuses"]) == {"200"}, kind
        assert row["goal"] == "p99 <= 300 ms", kind
    assert rows["pbxfront no-op at 20/s"]["statuses"] == {
        "200": rows["pbxfront no-op at 20/s"]["requests"]
    }


def test_plan_scenario_plans_a_seeded_fleet_against_a_same_run_baseline(tmp_path: Path) -> None:
    output = tmp_path / "result.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "bench",
            "plan",
            "--devices",
            "120",
            "--repeats",
            "2",
            "--set",
            f'data_dir="{tmp_path}"',
            "--json",
            str(output),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    report: dict[str, Any] = json.loads(output.read_text())
    assert report["table"] in result.stdout
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {"render live update.txt, 120 devices", "scripts plan, 120 devices"}
    plan = rows["scripts plan, 120 devices"]
    assert plan["runs"] == 2
    assert len(plan["seconds"]) == 2
    assert plan["baseline"] == "render live update.txt, 120 devices"
    assert plan["ratio"] > 0
    assert plan["goal"] == "<= 10 s"
    # 120 devices are 3 customers of 50; every tenth customer (only the first here) changes.
    assert plan["detail"] == "50 devices of 1 customer(s) changed, with diffs"
