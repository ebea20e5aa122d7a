"""The gate's limits and alternatives: JWTs from a JWKS, rate limits, body sizes, time limits,
and who may read /metrics."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from agency_data.config import ServiceConfig
from tests.conftest import other_connection
from tests.service_support import TENANT, Service, service_on

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def jwks() -> Iterator[tuple[str, Any]]:
    """A JWKS document served on loopback, and the private key of its one key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/jwks.json", key
    server.shutdown()
    server.server_close()


def _token(key: Any, **claims: Any) -> str:
    """A JWT signed by ``key``; a claim given as None is left out."""
    payload = {"sub": "svc-planner", "tenant": TENANT, "role": "read-write", "aud": "agency-data"}
    payload |= {"exp": int(time.time()) + 60, **claims}
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "k1"})


async def test_jwts_signed_by_the_jwks_are_accepted_others_refused(
    database: str, redis_url: str, tmp_path: Path, jwks: tuple[str, Any]
) -> None:
    url, key = jwks
    config = ServiceConfig(port=0, jwks_url=url, jwt_audience="agency-data")
    async with service_on(database, redis_url, tmp_path, config) as svc:

        async def post(token: str) -> httpx.Response:
            return await svc.client.post(
                "/v1/agents",
                json={"name": "a", "type": "t"},
                headers={"Authorization": f"Bearer {token}"},
            )

        created = await post(_token(key))
        assert created.status_code == 201, created.text
        assert created.json()["tenant_id"] == TENANT
        # Another audience, expired, HMAC with the public key as secret, unsigned, no tenant,
        # an unknown role, a key not in the JWKS: all 401, nothing written.
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        for token in (
            _token(key, aud="someone-else"),
            _token(key, exp=int(time.time()) - 10),
            jwt.encode({"sub": "x", "tenant": TENANT, "aud": "agency-data"}, "s" * 32, "HS256"),
            jwt.encode({"sub": "x", "tenant": TENANT, "aud": "agency-data"}, None, "none"),
            _token(key, tenant="not a tenant!"),
            _token(key, role="root"),
            _token(other),
        ):
            refused = await post(token)
            assert refused.status_code == 401, refused.text
            assert refused.json()["code"] == "AuthenticationFailed"
        # A token without a role claim is read-only.
        reader = _token(key, role=None)
        assert (await post(reader)).status_code == 403
        listed = await svc.client.get("/v1/agents", headers={"Authorization": f"Bearer {reader}"})
        assert [a["name"] for a in listed.json()["items"]] == ["a"]
        assert await svc.dl.tenant(TENANT).agents.count() == 1
        # API keys keep working beside JWTs.
        assert (await svc.call("GET", "/v1/agents")).status_code == 200


async def test_rate_limit_answers_429_with_retry_after(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    config = ServiceConfig(port=0, rate_limit=1, rate_burst=3)
    async with service_on(database, redis_url, tmp_path, config) as svc:
        statuses = [(await svc.call("GET", "/v1/agents")).status_code for _ in range(6)]
        assert statuses.count(200) >= 3
        limited = await svc.call("GET", "/v1/agents")
        assert limited.status_code == 429
        assert limited.json()["code"] == "RateLimited"
        assert int(limited.headers["retry-after"]) >= 1
        # Per key: another key of the same tenant is not held back.
        assert (await svc.call("GET", "/v1/agents", role="read-only")).status_code == 200


async def test_bodies_over_the_limit_are_413_and_write_nothing(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    config = ServiceConfig(port=0, max_body_bytes=2048)
    async with service_on(database, redis_url, tmp_path, config) as svc:
        big = {"name": "a", "type": "t", "capabilities": {"x": "y" * 4096}}
        response = await svc.call("POST", "/v1/agents", json=big)
        assert response.status_code == 413, response.text
        assert response.json()["code"] == "PayloadTooLarge"
        assert await svc.dl.tenant(TENANT).agents.count() == 0


async def test_a_request_past_its_time_limit_is_504_and_the_pool_recovers(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    config = ServiceConfig(port=0, request_timeout=0.3)
    async with service_on(database, redis_url, tmp_path, config) as svc:
        async with other_connection(svc.dl, TENANT) as conn:
            await conn.execute("LOCK TABLE agents IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            response = await svc.call("POST", "/v1/agents", json={"name": "a", "type": "t"})
            assert response.status_code == 504, response.text
            assert response.json()["code"] == "RequestTimeout"
            assert time.monotonic() - started < 5
        # The cancelled statement left no connection stuck, nor a row.
        for _ in range(5):
            created = await svc.call("POST", "/v1/agents", json={"name": "b", "type": "t"})
            assert created.status_code == 201
        names = {a.name for a in (await svc.dl.tenant(TENANT).agents.list()).items}
        assert names == {"b"}


async def test_metrics_answer_loopback_or_the_bearer_of_the_token(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    async with service_on(database, redis_url, tmp_path) as svc:
        await svc.call("GET", "/v1/agents")
        text = (await svc.client.get("/metrics")).text
        assert (
            'agency_data_http_requests_total{method="GET",route="/v1/agents",status="200"}' in text
        )
        assert "agency_data_pool_" in text or "agency_data_" in text
    config = ServiceConfig(port=0, metrics_token="s3cret-token")
    async with service_on(database, redis_url, tmp_path, config) as svc:
        assert (await svc.client.get("/metrics")).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await svc.client.get("/metrics", headers=wrong)).status_code == 401
        right = {"Authorization": "Bearer s3cret-token"}
        assert (await svc.client.get("/metrics", headers=right)).status_code == 200


async def test_health_ready_and_the_document_need_no_key(service: Service) -> None:
    assert (await service.client.get("/health")).json() == {"status": "ok"}
    ready = (await service.client.get("/ready")).json()
    assert ready == {"status": "ok", "components": {"postgresql": True, "redis": True}}
    document = (await service.client.get("/schema/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    assert "Problem" in document["components"]["schemas"]


async def test_many_requests_at_once_each_run_as_their_own_tenant(service: Service) -> None:
    async def create(tenant: str, i: int) -> str:
        response = await service.call(
            "POST", "/v1/agents", tenant=tenant, json={"name": f"{tenant}-{i}", "type": "t"}
        )
        assert response.status_code == 201
        return str(response.json()["tenant_id"])

    tenants = await asyncio.gather(*(create(t, i) for i in range(30) for t in ("acme", "globex")))
    assert tenants.count("acme") == tenants.count("globex") == 30
    for tenant in ("acme", "globex"):
        page = (await service.call("GET", "/v1/agents?limit=100", tenant=tenant)).json()
        assert {a["name"].split("-")[0] for a in page["items"]} == {tenant}


async def test_stopping_answers_long_polls_at_once_with_nothing_taken(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    from agency_data import DataLayer
    from agency_data.service.server import running
    from tests.conftest import make_config

    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        _, key = await dl.admin.api_keys.create(TENANT, "read-write")
        agent = await dl.tenant(TENANT).agents.create("w", "t")
        # The client outlives the server: it is the server's stopping that ends the claim.
        async with httpx.AsyncClient(timeout=30) as client:
            async with running(dl, ServiceConfig(port=0)) as svc:
                claim = asyncio.create_task(
                    client.post(
                        f"{svc.url}/v1/tasks/claim",
                        json={"agent_id": str(agent.id), "wait": 20},
                        headers={"Authorization": f"Bearer {key}"},
                    )
                )
                await asyncio.sleep(0.5)
                started = time.monotonic()
            stopped = time.monotonic() - started
            answered = await claim
        assert stopped < 5
        assert answered.status_code == 200, answered.text
        assert answered.json() == {"items": []}
