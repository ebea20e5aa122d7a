"""A running service for the service's tests: real uvicorn on loopback over a fresh database.

The ``service`` fixture (in conftest.py) yields a :class:`Service`: the URL, an
HTTP client, and keys of each role for two tenants, made through the library as the CLI does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agency_data import DataLayer
from agency_data.config import ServiceConfig
from agency_data.service.server import running
from tests.conftest import make_config

TENANT = "acme"
OTHER = "globex"


@dataclass
class Service:
    """A running service and what a test needs to call it."""

    dl: DataLayer
    url: str
    client: httpx.AsyncClient
    keys: dict[tuple[str, str], str]

    def auth(self, role: str = "read-write", tenant: str = TENANT) -> dict[str, str]:
        """Headers carrying the key of ``tenant`` with ``role``."""
        return {"Authorization": f"Bearer {self.keys[(tenant, role)]}"}

    async def call(
        self, method: str, path: str, *, role: str = "read-write", tenant: str = TENANT, **kw: Any
    ) -> httpx.Response:
        """``method path`` with the key of ``tenant`` and ``role``."""
        headers = {**self.auth(role, tenant), **kw.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kw)


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The RFC 9457 problem ``response`` carries, checked to have ``status`` and ``code``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status, body
    assert body["code"] == code, body
    assert body["type"].startswith("urn:agency-data:problem:"), body
    return body


@asynccontextmanager
async def start_service(
    dl: DataLayer, config: ServiceConfig | None = None
) -> AsyncIterator[Service]:
    """Serve ``dl`` on a free loopback port, with keys of every role for two tenants."""
    keys: dict[tuple[str, str], str] = {}
    for tenant in (TENANT, OTHER):
        for role in ("read-only", "read-write", "admin"):
            _, keys[(tenant, role)] = await dl.admin.api_keys.create(
                tenant, role, name=f"{tenant}-{role}"
            )
    settings = config if config is not None else ServiceConfig(port=0)
    async with (
        running(dl, settings) as svc,
        httpx.AsyncClient(base_url=svc.url, timeout=30) as client,
    ):
        yield Service(dl, svc.url, client, keys)


@asynccontextmanager
async def service_on(
    database: str,
    redis_url: str,
    tmp_path: Path,
    config: ServiceConfig | None = None,
    **sections: Any,
) -> AsyncIterator[Service]:
    """A DataLayer on ``database`` (config ``sections`` over the test defaults) and its
    service; see :class:`Service`."""
    async with (
        DataLayer(make_config(database, redis_url, tmp_path, **sections)) as dl,
        start_service(dl, config) as svc,
    ):
        yield svc
