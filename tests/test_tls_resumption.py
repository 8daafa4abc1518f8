"""TLS session resumption across the workers of a node: a real ``pbxfront serve --workers 2``, a
device with its certificate making new connections that resume its session (TLS 1.3 and 1.2),
before and after a certificate reload (SIGHUP); a ticket under an unknown key gets a full
handshake. The explicit ticket key (core/ticketkeys.py) is proven under every installed Python."""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from prometheus_client.mmap_dict import MmapedDict

from services.core import pki
from services.core.ticketkeys import TicketKeyError, TicketKeys, connect_in_memory
from services.core.tls import TlsFiles, build_server_context
from tests.conftest import until_blocking
from tests.test_cli import ROOT, Served, curl, start, stop

DEVICE = "IP232-01-02-03"
POLL = b"GET /DRIVE/CF0/update/update.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
HANDSHAKES = "pbxfront_tls_handshakes_total"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = start(
        tmp_path_factory.mktemp("resumption") / "var",
        "--workers",
        "2",
        # Nobody reads the node's output until it stops: one access-log line per poll would
        # fill the pipe (64 KiB) and block the workers' logging, and with it their loops.
        "--set",
        "logging.access_log=false",
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


def device_context(node: Served, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(node.ca))
    directory = node.data_dir / "pki" / "devices"
    context.load_cert_chain(directory / f"{DEVICE}.pem", directory / f"{DEVICE}.key")
    if version is not None:
        context.maximum_version = version
    return context


def poll(
    node: Served,
    context: ssl.SSLContext,
    session: ssl.SSLSession | None,
    listener: str = "devices",
) -> tuple[ssl.SSLSession | None, bool, bytes]:
    """One poll over a new connection offering ``session``: the session to offer next time,
    whether this one was resumed, and the server certificate (DER) it was made with."""
    address = urlsplit(node.urls[listener])
    assert address.hostname is not None
    assert address.port is not None
    with (
        socket.create_connection((address.hostname, address.port), timeout=15) as raw,
        context.wrap_socket(raw, server_hostname=address.hostname, session=session) as sock,
    ):
        sock.sendall(POLL)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        # The listener that asks for no certificate answers this poll with its own refusal;
        # only the TLS layer matters there.
        assert data.startswith(b"HTTP/1.1 200" if listener == "devices" else b"HTTP/1.1 "), data
        certificate = sock.getpeercert(binary_form=True)
        assert certificate is not None
        # A TLS 1.3 server sends its tickets after the handshake: read with the response.
        return sock.session, bool(sock.session_reused), certificate


def per_worker_handshakes(node: Served) -> dict[str, dict[str, float]]:
    """Each worker's own count of devices-listener handshakes, resumed or not, read from its
    metrics file (the node-wide /metrics adds these up)."""
    counts: dict[str, dict[str, float]] = {}
    for path in (node.data_dir / "metrics").glob("counter_*.db"):
        pid = path.stem.removeprefix("counter_")
        values = MmapedDict(str(path), read_mode=True)  # type: ignore[no-untyped-call]
        try:
            for key, value, _timestamp in values.read_all_values():  # type: ignore[no-untyped-call]
                _metric, name, labels, _help = json.loads(key)
                if name == HANDSHAKES and labels.get("listener") == "devices":
                    counts.setdefault(pid, {}).setdefault(labels["resumed"], 0.0)
                    counts[pid][labels["resumed"]] += value
        finally:
            values.close()  # type: ignore[no-untyped-call]
    return counts


def node_handshakes(node: Served, resumed: str) -> float:
    status, body = curl(node.urls["metrics"] + "/metrics")
    assert status == 200, body
    pattern = rf'^{HANDSHAKES}\{{listener="devices",resumed="{resumed}"\}} (\S+)$'
    match = re.search(pattern, body, re.M)
    return float(match.group(1)) if match else 0.0


def polls_resumed(
    node: Served, context: ssl.SSLContext, session: ssl.SSLSession | None, count: int
) -> tuple[int, ssl.SSLSession | None]:
    resumed = 0
    for _ in range(count):
        session, reused, _certificate = poll(node, context, session)
        resumed += reused
    return resumed, session


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_sessions_resume_on_every_worker(node: Served, version: ssl.TLSVersion) -> None:
    context = device_context(node, version)
    before = per_worker_handshakes(node)
    node_before = node_handshakes(node, "yes")
    session, reused, _certificate = poll(node, context, None)
    assert not reused
    count = 150
    resumed, _session = polls_resumed(node, context, session, count)
    assert resumed >= 0.99 * count, f"{resumed} of {count} resumed ({version.name})"
    # The node counted them as resumed too, and the kernel spread them over both workers: each
    # worker resumed sessions whose tickets the other one issued (half would fail otherwise).
    assert node_handshakes(node, "yes") - node_before == resumed
    after = per_worker_handshakes(node)
    gained = {
        pid: values.get("yes", 0.0) - before.get(pid, {}).get("yes", 0.0)
        for pid, values in after.items()
    }
    served = [pid for pid, value in gained.items() if value > 0]
    assert len(served) == 2, gained


def test_ticket_under_an_unknown_key_is_a_full_handshake(node: Served) -> None:
    """A session from a server with another ticket key (another node, an old key) is offered:
    the node makes a full handshake and answers, never an error."""
    context = device_context(node)
    stranger = build_server_context(
        TlsFiles(node.data_dir / "pki" / "server.pem", node.data_dir / "pki" / "server.key")
    )
    foreign, _ = connect_in_memory(context, stranger)
    assert foreign is not None
    failures_before = node_handshake_failures(node)
    for _ in range(10):
        session, reused, _certificate = poll(node, context, foreign)
        assert not reused
        assert session is not None
    assert node_handshake_failures(node) == failures_before


def test_a_session_resumes_only_on_the_listener_that_made_it(node: Served) -> None:
    """A device proven on the listener that asks for certificates must not carry that proof to
    another listener by resumption (OpenSSL does not verify the certificate again), nor a
    session from the listener that asks for none skip the certificate check: each listener has
    its own ticket key."""
    context = device_context(node)
    proven, _reused, _certificate = poll(node, context, None, "devices")
    claimed, _reused, _certificate = poll(node, context, None, "devices_claimed")
    for _ in range(10):
        _session, reused, _certificate = poll(node, context, proven, "devices_claimed")
        assert not reused
        _session, reused, _certificate = poll(node, context, claimed, "devices")
        assert not reused
    # Each on its own listener does resume.
    _session, reused, _certificate = poll(node, context, proven, "devices")
    assert reused
    _session, reused, _certificate = poll(node, context, claimed, "devices_claimed")
    assert reused


def node_handshake_failures(node: Served) -> float:
    status, body = curl(node.urls["metrics"] + "/metrics")
    assert status == 200, body
    pattern = r'^pbxfront_tls_handshake_failures_total\{listener="devices"\} (\S+)$'
    match = re.search(pattern, body, re.M)
    return float(match.group(1)) if match else 0.0


def reissue_server_certificate(node: Served) -> bytes:
    """A new server certificate (same key, names and CA) in place of the old one; its DER."""
    directory = node.data_dir / "pki"
    ca = pki.load_issued(directory / "ca.pem", directory / "ca.key")
    old = pki.load_issued(directory / "server.pem", directory / "server.key")
    names = old.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    issued = pki.issue_certificate(
        ca,
        common_name=str(
            old.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        ),
        dns_names=names.value.get_values_for_type(x509.DNSName),
        ip_addresses=[str(ip) for ip in names.value.get_values_for_type(x509.IPAddress)],
        key=old.key,
        server=True,
        client=False,
    )
    pki.write_pem_files(issued, directory / "server.pem", directory / "server.key")
    return issued.certificate.public_bytes(serialization.Encoding.DER)


def test_sessions_still_resume_after_a_certificate_reload(node: Served) -> None:
    context = device_context(node)
    session, _reused, old_certificate = poll(node, context, None)
    new_certificate = reissue_server_certificate(node)
    assert new_certificate != old_certificate
    node.process.send_signal(signal.SIGHUP)
    # Both workers reload on their own: wait (bounded) until a run of full handshakes (no
    # session offered) all see the new certificate.
    deadline = time.monotonic() + 30
    streak = 0
    while streak < 20:
        assert time.monotonic() < deadline, "the workers did not reload the certificate"
        _session, _reused, certificate = poll(node, context, None)
        streak = streak + 1 if certificate == new_certificate else 0
    # The session from before the reload still resumes, on both workers, and so do the ones
    # that follow it.
    before = per_worker_handshakes(node)
    count = 100
    resumed, session = polls_resumed(node, context, session, count)
    assert resumed >= 0.99 * count, f"{resumed} of {count} resumed after the reload"
    after = per_worker_handshakes(node)
    served = [
        pid
        for pid, values in after.items()
        if values.get("yes", 0.0) > before.get(pid, {}).get("yes", 0.0)
    ]
    assert len(served) == 2, (before, after)
    # A session made after the reload uses the new certificate.
    fresh, _reused, certificate = poll(node, context, None)
    assert certificate == new_certificate
    _session, reused, _certificate = poll(node, context, fresh)
    assert reused


def test_a_worker_started_after_a_reload_has_the_new_certificate_and_the_key(
    node: Served,
) -> None:
    """The master reloads its own contexts on SIGHUP too: a worker it starts later (after a
    crash) serves the current certificate and resumes the node's sessions."""
    context = device_context(node)
    session, _reused, certificate = poll(node, context, None)
    new_certificate = reissue_server_certificate(node)
    node.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    streak = 0
    while streak < 20:
        assert time.monotonic() < deadline, "the workers did not reload the certificate"
        _fresh, _reused, certificate = poll(node, context, None)
        streak = streak + 1 if certificate == new_certificate else 0
    master = psutil.Process(node.process.pid)
    workers = {child.pid for child in master.children()}
    master.children()[0].kill()
    until_blocking(
        lambda: len(master.children()) == 2 and bool({c.pid for c in master.children()} - workers),
        "the master starts a new worker",
    )
    (replacement,) = {child.pid for child in master.children()} - workers
    before = per_worker_handshakes(node)
    count = 100
    resumed, session = polls_resumed(node, context, session, count)
    assert resumed >= 0.99 * count, f"{resumed} of {count} resumed with a new worker"
    after = per_worker_handshakes(node)
    served = [
        pid
        for pid, values in after.items()
        if values.get("yes", 0.0) > before.get(pid, {}).get("yes", 0.0)
    ]
    assert len(served) == 2, (before, after)
    assert str(replacement) in served
    for _ in range(20):
        _fresh, _reused, certificate = poll(node, context, None)
        assert certificate == new_certificate


# --------------------------------------------------------------------------- every Python

PROOF = """
import ssl, sys
from services.core.ticketkeys import TicketKeyError, TicketKeys, connect_in_memory

certificate, key = sys.argv[1], sys.argv[2]

def make():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    return context

# Control: two contexts without a shared key do not resume each other's sessions.
client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client.check_hostname = False
client.verify_mode = ssl.CERT_NONE
session, _ = connect_in_memory(client, make())
_, resumed = connect_in_memory(client, make(), session)
assert not resumed, "contexts resumed without a shared key: the proof would prove nothing"
keys = TicketKeys.load(make)  # raises TicketKeyError unless proven (both TLS versions)
first, second = make(), make()
keys.apply(first)
keys.apply(second)
session, _ = connect_in_memory(client, first)
_, resumed = connect_in_memory(client, second, session)
assert resumed
# The previous key is accepted on this Python (the ticket-key callback is proven).
assert keys.accepts_previous, keys.previous_refusal
old, new = bytes(range(1, 81)), bytes(range(2, 82))
issuer, rotated = make(), make()
keys.of(old).apply(issuer)
keys.of(new, previous=old).apply(rotated)
session, _ = connect_in_memory(client, issuer)
_, resumed = connect_in_memory(client, rotated, session)
assert resumed, "a ticket under the previous key did not resume"
print("proven", sys.version_info[:2], ssl.OPENSSL_VERSION)
"""


def installed_pythons() -> list[str]:
    """This interpreter and every other CPython >= 3.11 found on PATH or under pyenv."""
    found = {os.path.realpath(sys.executable)}
    # pyenv's shims answer for versions that are not selected; the versions are found below.
    directories = [item for item in os.get_exec_path() if "/shims" not in item]
    for minor in range(11, 20):
        path = shutil.which(f"python3.{minor}", path=os.pathsep.join(directories))
        if path:
            found.add(os.path.realpath(path))
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    for path in glob.glob(os.path.join(pyenv_root, "versions", "3.*", "bin", "python3")):
        version = re.match(r"3\.(\d+)", Path(path).parent.parent.name)
        if version and int(version.group(1)) >= 11:
            found.add(os.path.realpath(path))
    return sorted(found)


def test_ticket_key_is_proven_on_every_installed_python(tmp_path: Path) -> None:
    certificate, key = tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=localhost", "-keyout", str(key), "-out", str(certificate)),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    pythons = installed_pythons()
    for python in pythons:
        result = subprocess.run(
            [
                python,
                "-I",
                "-c",
                f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{PROOF}",
                str(certificate),
                str(key),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"{python}:\n{result.stdout}{result.stderr}"
        assert "proven" in result.stdout


def test_wrong_key_length_is_refused_before_openssl_sees_it() -> None:
    with pytest.raises(TicketKeyError, match="80 bytes"):
        TicketKeys.load(lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), b"short")


def test_key_never_shows_in_repr(tmp_path: Path) -> None:
    certificate, key = tmp_path / "server.pem", tmp_path / "server.key"
    issued = pki.issue_certificate(
        pki.create_root_ca(country="DE", organization="Test"), common_name="localhost"
    )
    pki.write_pem_files(issued, certificate, key)
    secret = bytes(range(80))
    keys = TicketKeys.load(lambda: build_server_context(TlsFiles(certificate, key)), secret)
    assert secret.hex() not in repr(keys)
    assert repr(secret) not in repr(keys)


@pytest.fixture
def make_context(tmp_path: Path) -> Callable[[], ssl.SSLContext]:
    certificate, key = tmp_path / "server.pem", tmp_path / "server.key"
    issued = pki.issue_certificate(
        pki.create_root_ca(country="DE", organization="Test"), common_name="localhost"
    )
    pki.write_pem_files(issued, certificate, key)
    return lambda: build_server_context(TlsFiles(certificate, key))


def in_memory_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.minimum_version = client.maximum_version = version
    return client


def keyed(keys: TicketKeys, make: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    context = make()
    keys.apply(context)
    return context


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_a_ticket_survives_one_rotation_renewed_not_two(
    make_context: Callable[[], ssl.SSLContext], version: ssl.TLSVersion
) -> None:
    first, second, third = (bytes([n]) * 40 + bytes(range(40)) for n in (1, 2, 3))
    keys = TicketKeys.load(make_context, first)
    assert keys.accepts_previous, keys.previous_refusal
    client = in_memory_client(version)
    session, _ = connect_in_memory(client, keyed(keys, make_context))
    # Rotated: the old ticket resumes, and comes back renewed under the new key.
    renewed, resumed = connect_in_memory(
        client, keyed(keys.of(second, previous=first), make_context), session
    )
    assert resumed
    assert renewed is not None
    assert connect_in_memory(client, keyed(keys.of(second), make_context), renewed)[1]
    # Rotated again: the first key is gone, its ticket is a full handshake (never an error);
    # the renewed one still resumes.
    twice = keyed(keys.of(third, previous=second), make_context)
    assert not connect_in_memory(client, twice, session)[1]
    assert connect_in_memory(client, twice, renewed)[1]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_a_failing_ticket_callback_means_full_handshakes_and_one_log_line(
    make_context: Callable[[], ssl.SSLContext],
    version: ssl.TLSVersion,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """OpenSSL's cipher set-up failing (or raising) inside the callback: no ticket issued, or
    the presented one treated as unknown, and the connection goes on."""
    keys = TicketKeys.load(make_context)
    binding = keys._binding
    assert binding.crypto is not None

    def raising(*_arguments: object) -> int:
        raise OSError("cipher set-up failed")

    broken = TicketKeys(
        dataclasses.replace(binding, crypto=dataclasses.replace(binding.crypto, hmac_init=raising)),
        keys._key,
    )
    client = in_memory_client(version)
    session, _ = connect_in_memory(client, keyed(keys, make_context))
    failing = keyed(broken, make_context)
    with caplog.at_level(logging.ERROR, "services.core.ticketkeys"):
        for _ in range(3):
            _, resumed = connect_in_memory(client, failing, session)
            assert not resumed
    failures = [r for r in caplog.records if "ticket-key callback failed (OSError)" in r.message]
    assert len(failures) == 1
    # No IV for a new ticket (a 0 from OpenSSL's call): no ticket this time, the connection
    # goes on, and the session it leaves resumes nowhere.
    refusing = TicketKeys(
        dataclasses.replace(
            binding, crypto=dataclasses.replace(binding.crypto, rand_bytes=lambda *_a: 0)
        ),
        keys._key,
    )
    untracked, _ = connect_in_memory(client, keyed(refusing, make_context))
    _, resumed = connect_in_memory(client, keyed(keys, make_context), untracked)
    assert not resumed


def test_damaged_previous_key_is_refused_before_openssl_sees_it(
    make_context: Callable[[], ssl.SSLContext],
) -> None:
    keys = TicketKeys.load(make_context)
    with pytest.raises(TicketKeyError, match="80 bytes, not 3"):
        keys.of(bytes(range(80)), previous=b"abc")
    assert not keys.matches(keys._key, previous=bytes(range(80)))
