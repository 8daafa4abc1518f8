"""The admin API over real HTTPS: authentication, roles, inventory CRUD, OpenAPI, metrics."""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest

from services.admin.fleet import FLEET_ENDPOINTS
from services.admin.handlers import ENDPOINTS
from services.core.auth import AccountRepository, Role
from services.core.config import ListenerSettings, Settings
from services.core.inventory import apply_inventory, read_inventory_file
from services.core.runner import Node
from services.frontend.api import ENDPOINTS as FRONTEND_ENDPOINTS
from services.onboard import ENDPOINTS as ONBOARD_ENDPOINTS
from services.update.admin_api import ENDPOINTS as UPDATE_ENDPOINTS
from tests.conftest import SessionPki, start_services

ADMIN_PASSWORD = "correct horse battery"
SENDER_PASSWORD = "sender password 123"


@dataclass
class Api:
    base: str
    session: aiohttp.ClientSession
    node: Node

    def url(self, path: str) -> str:
        return self.base + path


def basic(name: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


ADMIN = basic("admin", ADMIN_PASSWORD)


@pytest.fixture
async def api(pool: asyncpg.Pool, session_pki: SessionPki, repo_root: Any) -> AsyncIterator[Api]:
    accounts = AccountRepository(pool)
    await accounts.add("admin", frozenset({Role.ADMIN}), ADMIN_PASSWORD)
    await accounts.add("sender", frozenset({Role.EVENT_SENDER}), SENDER_PASSWORD)
    async with pool.acquire() as connection:
        await apply_inventory(
            connection, read_inventory_file(repo_root / "config" / "inventory.example.toml")
        )
    listeners = {
        "admin": ListenerSettings(
            port=0,
            services=("admin",),
            tls=True,
            certificate=session_pki.server_certificate,
            key=session_pki.server_key,
        )
    }
    node = await start_services(Settings(), pool, listeners)
    context = ssl.create_default_context(cafile=str(session_pki.ca))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield Api(node.addresses["admin"], session, node)
    await node.stop()


async def test_no_credentials_is_401_with_both_challenges(api: Api) -> None:
    async with api.session.get(api.url("/api/v1/customers")) as response:
        assert response.status == 401
        challenges = response.headers.getall("WWW-Authenticate")
        assert any(c.startswith("Basic ") for c in challenges)
        assert any(c.startswith("Bearer ") for c in challenges)
        assert (await response.json())["error"] == "authentication required"


@pytest.mark.parametrize(
    "headers",
    [
        basic("admin", "wrong password!"),
        basic("nobody", ADMIN_PASSWORD),
        {"Authorization": "Basic !!!notbase64"},
        {"Authorization": "Bearer not-a-token"},
    ],
)
async def test_wrong_credentials_are_401(api: Api, headers: dict[str, str]) -> None:
    async with api.session.get(api.url("/api/v1/customers"), headers=headers) as response:
        assert response.status == 401


async def test_wrong_role_is_403(api: Api) -> None:
    async with api.session.get(
        api.url("/api/v1/customers"), headers=basic("sender", SENDER_PASSWORD)
    ) as response:
        assert response.status == 403
        assert "admin, operator" in (await response.json())["error"]


async def test_token_flow_and_revocation_by_password_change(api: Api, pool: asyncpg.Pool) -> None:
    async with api.session.post(api.url("/api/v1/tokens"), headers=ADMIN) as response:
        assert response.status == 201
        token = (await response.json())["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    async with api.session.get(api.url("/api/v1/frontends"), headers=bearer) as response:
        assert response.status == 200
        assert [f["id"] for f in (await response.json())["frontends"]] == ["sb1"]
    await AccountRepository(pool).set_password("admin", "another long password")
    async with api.session.get(api.url("/api/v1/frontends"), headers=bearer) as response:
        assert response.status == 401


async def test_customer_crud_without_secrets(api: Api) -> None:
    async with api.session.get(
        api.url("/api/v1/customers/Kuenkel00001"), headers=ADMIN
    ) as response:
        assert response.status == 200
        customer = await response.json()
    assert customer["registration_password_set"] is True
    assert "registration_password" not in customer
    body = {k: v for k, v in customer.items() if not k.endswith("_set")}
    body["id"] = "Acme00002"
    body["name"] = "Acme"
    async with api.session.put(
        api.url("/api/v1/customers/Acme00002"), json=body, headers=ADMIN
    ) as response:
        assert response.status == 201, await response.text()
        created = await response.json()
    assert created["registration_password_set"] is False
    body["registration_password"] = "s3cret-registration"
    async with api.session.put(
        api.url("/api/v1/customers/Acme00002"), json=body, headers=ADMIN
    ) as response:
        assert response.status == 200
        assert "s3cret" not in await response.text()
        assert (await response.json())["registration_password_set"] is True
    # Omitting the secret keeps it.
    del body["registration_password"]
    body["name"] = "Acme Ltd"
    async with api.session.put(
        api.url("/api/v1/customers/Acme00002"), json=body, headers=ADMIN
    ) as response:
        assert (await response.json())["registration_password_set"] is True
    async with api.session.delete(
        api.url("/api/v1/customers/Acme00002"), headers=ADMIN
    ) as response:
        assert response.status == 204
    async with api.session.get(api.url("/api/v1/customers/Acme00002"), headers=ADMIN) as response:
        assert response.status == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "text"),
    [
        ("PUT", "/api/v1/devices/009033aabbcc", "{not json", 400, "not JSON"),
        ("PUT", "/api/v1/devices/009033aabbcc", "[1, 2]", 400, "JSON object"),
        ("PUT", "/api/v1/devices/not-a-mac", "{}", 400, "mac:"),
        (
            "PUT",
            "/api/v1/devices/009033aabbcc",
            '{"device_type": "IP232", "device_class": "phone", "customer": "Kuenkel00001", "x": 1}',
            400,
            "x: unknown field",
        ),
        (
            "PUT",
            "/api/v1/devices/009033aabbcc",
            '{"device_type": "IP232", "device_class": "toaster", "customer": "Kuenkel00001"}',
            422,
            "must be one of phone, gateway, pbx",
        ),
        (
            "PUT",
            "/api/v1/devices/009033aabbcc",
            '{"device_type": "IP232", "device_class": "phone", "customer": "Nobody"}',
            422,
            "Nobody",
        ),
        ("GET", "/api/v1/devices/009033aabbcc", None, 404, "no device"),
        ("GET", "/api/v1/devices?limit=0", None, 400, "limit"),
        ("PUT", "/api/v1/variables/planet/x/name", '{"value": "1"}', 400, "layer"),
        ("PUT", "/api/v1/variables/global/name", '{"value": 5}', 400, "value: must be a string"),
        ("PUT", "/api/v1/variables/global/name", '{"value": "a\\nconfig write"}', 422, "value"),
    ],
)
async def test_bad_input(
    api: Api, method: str, path: str, body: str | None, status: int, text: str
) -> None:
    async with api.session.request(
        method, api.url(path), data=body, headers={**ADMIN, "Content-Type": "application/json"}
    ) as response:
        answer = await response.text()
        assert response.status == status, answer
        assert text in answer


async def test_device_and_variables(api: Api) -> None:
    device = {"device_type": "IP232", "device_class": "phone", "customer": "Kuenkel00001"}
    async with api.session.put(
        api.url("/api/v1/devices/00-90-33-AA-BB-CC"), json=device, headers=ADMIN
    ) as response:
        assert response.status == 201, await response.text()
        assert (await response.json())["hardware_id"] == "IP232-aa-bb-cc"
    async with api.session.put(
        api.url("/api/v1/variables/device/009033aabbcc/h-test"),
        json={"value": "device"},
        headers=ADMIN,
    ) as response:
        assert response.status == 200, await response.text()
    async with api.session.put(
        api.url("/api/v1/variables/global/h-secret"),
        json={"value": "hidden", "secret": True},
        headers=ADMIN,
    ) as response:
        assert response.status == 200
    async with api.session.get(
        api.url("/api/v1/devices/009033aabbcc/variables"), headers=ADMIN
    ) as response:
        resolved = (await response.json())["variables"]
    assert resolved["h-test"] == {
        "value": "device",
        "secret": False,
        "layer": "device",
        "scope": "009033aabbcc",
    }
    assert resolved["h-secret"]["value"] is None
    async with api.session.get(
        api.url("/api/v1/devices?customer=Kuenkel00001&limit=2"), headers=ADMIN
    ) as response:
        assert len((await response.json())["devices"]) == 2
    async with api.session.delete(
        api.url("/api/v1/devices/009033aabbcc"), headers=ADMIN
    ) as response:
        assert response.status == 204


async def test_openapi_matches_routes(api: Api) -> None:
    async with api.session.get(api.url("/api/v1/openapi.json")) as response:
        assert response.status == 200
        document = await response.json()
    documented = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    served = {
        (e.method, e.path)
        for e in [
            *ENDPOINTS,
            *FLEET_ENDPOINTS,
            *UPDATE_ENDPOINTS,
            *FRONTEND_ENDPOINTS,
            *ONBOARD_ENDPOINTS,
        ]
    }
    assert documented == served
    # Every documented route is really routed: an unauthenticated call gets 401, not 404/405.
    for method, path in sorted(documented - {("GET", "/api/v1/openapi.json")}):
        concrete = path.replace("{customer_id}", "Kuenkel00001").replace("{mac}", "009033010203")
        concrete = (
            concrete.replace("{layer}", "device").replace("{scope}", "x").replace("{name}", "n")
        ).replace("{frontend_id}", "sb1")
        async with api.session.request(method, api.url(concrete)) as response:
            assert response.status == 401, (method, concrete, response.status)


async def test_metrics_and_healthz(api: Api) -> None:
    async with api.session.get(api.url("/healthz")) as response:
        assert response.status == 200
        assert (await response.json())["database"] == "ok"
    async with api.session.get(api.url("/api/v1/frontends"), headers=ADMIN) as response:
        assert response.status == 200
    # limits.metrics_auth (default): strangers get 401, an admin the metrics.
    async with api.session.get(api.url("/metrics")) as response:
        assert response.status == 401
    async with api.session.get(api.url("/metrics"), headers=ADMIN) as response:
        assert response.status == 200
        text = await response.text()
    assert (
        'pbxfront_http_requests_total{method="GET",route="/api/v1/frontends",service="admin",'
        'status="200"} 1.0' in text
    )
    assert "pbxfront_http_request_duration_seconds_bucket" in text


async def test_unknown_path_and_method(api: Api) -> None:
    async with api.session.get(api.url("/api/v1/nothing-here")) as response:
        assert response.status == 404
    async with api.session.post(api.url("/api/v1/frontends"), headers=ADMIN) as response:
        assert response.status == 405
        assert "GET" in response.headers["Allow"]


async def test_device_status_endpoints(api: Api) -> None:
    async with api.session.get(
        api.url("/api/v1/devices/00-90-33-01-02-03/status"), headers=ADMIN
    ) as response:
        assert response.status == 200
        status = await response.json()
    assert status["hardware_id"] == "IP232-01-02-03"
    assert status["last_seen"] is None
    assert status["polls"] == 0
    async with api.session.post(
        api.url("/api/v1/devices/009033010203/restage"), headers=ADMIN
    ) as response:
        assert response.status == 202
    async with api.session.get(api.url("/api/v1/status?stale=1"), headers=ADMIN) as response:
        devices = (await response.json())["devices"]
    assert len(devices) == 4  # never seen counts as stale
    assert [d["restage_requested"] for d in devices if d["mac"] == "009033010203"] == [True]
    async with api.session.get(
        api.url("/api/v1/devices/0090330000ff/status"), headers=ADMIN
    ) as response:
        assert response.status == 404
    async with api.session.get(api.url("/api/v1/unknown-devices"), headers=ADMIN) as response:
        assert (await response.json())["devices"] == []
