"""``/v1/cache``: the tenant's cache (Redis, behind this process's L1) over HTTP.

An entry is named by a key (any string of 1-1024 characters; in the path, URL-encoded, slashes
allowed) in a namespace (``?namespace=``, default ``default``; 1-64 letters, digits or
``_ . : -``). Values are JSON. The ``records`` namespace is the data layer's own cache of
records (agents): it is not served, since a value written there would be read back as a
record. A cache may always miss: while Redis is down a read is a 404 and a write is dropped,
as in the library.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, delete, get, post, put
from litestar.params import FromPath, JSONBody, QueryParameter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agency_data.cache.store import MAX_TTL, Cache
from agency_data.errors import NotFound, ValidationError
from agency_data.redis.keys import check_key, check_namespace
from agency_data.scope import TenantScope
from agency_data.service.auth import reads, writes
from agency_data.service.routes._common import SCOPE, Tenant

__all__ = ["CacheController"]

# Namespaces the data layer fills itself (see scope.py): not for clients to write or read.
_INTERNAL = frozenset({"records"})
_MISSING: Any = object()


class Entry(BaseModel):
    """A cached value."""

    key: str
    namespace: str
    value: Any


class NewEntry(BaseModel):
    """A value to cache for ``ttl`` seconds (default ``cache.default_ttl``), labelled ``tags``."""

    model_config = ConfigDict(extra="forbid")

    value: Any
    ttl: float | None = Field(None, gt=0, le=MAX_TTL)
    tags: list[str] = Field(default_factory=list, max_length=100)


class Invalidation(BaseModel):
    """What to remove: keys of ``namespace`` matching a glob ``pattern``, or starting with
    ``prefix`` (literally), or entries of any namespace set with any of ``tags``; one of them."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = "default"
    pattern: str | None = Field(None, min_length=1, max_length=1024)
    prefix: str | None = Field(None, min_length=1, max_length=1024)
    tags: list[str] | None = Field(None, min_length=1, max_length=100)

    @model_validator(mode="after")
    def _one_way(self) -> Invalidation:
        given = [v for v in (self.pattern, self.prefix, self.tags) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of pattern, prefix or tags")
        return self


class Removed(BaseModel):
    """How many Redis keys went."""

    removed: int


class CacheController(Controller):
    """The caller's tenant's cache."""

    path = "/v1/cache"
    tags = ["cache"]  # noqa: RUF012 - the framework reads a plain class attribute
    dependencies = SCOPE

    @get("/entries/{key:path}", guards=[reads], summary="Read a cached value")
    async def get_cached(
        self,
        tenant: Tenant,
        key: FromPath[str],
        namespace: Annotated[str, QueryParameter(max_length=64)] = "default",
    ) -> Entry:
        """The cached value of ``key``; 404 if there is none (or it expired)."""
        name = _key(key)
        value = await _cache(tenant, namespace).get(name, _MISSING)
        if value is _MISSING:
            raise NotFound(f"no cached value for {name!r}", entity="cache entry", key=name)
        return Entry(key=name, namespace=namespace, value=value)

    @put("/entries/{key:path}", guards=[writes], status_code=204, summary="Cache a value")
    async def set_cached(
        self,
        tenant: Tenant,
        key: FromPath[str],
        data: JSONBody[NewEntry],
        namespace: Annotated[str, QueryParameter(max_length=64)] = "default",
    ) -> None:
        """Cache ``value`` under ``key``, replacing what was there."""
        await _cache(tenant, namespace).set(_key(key), data.value, ttl=data.ttl, tags=data.tags)

    @delete("/entries/{key:path}", guards=[writes], summary="Remove a cached value")
    async def delete_cached(
        self,
        tenant: Tenant,
        key: FromPath[str],
        namespace: Annotated[str, QueryParameter(max_length=64)] = "default",
    ) -> None:
        """Remove ``key`` (whether or not it was cached)."""
        await _cache(tenant, namespace).delete(_key(key))

    @post("/invalidate", guards=[writes], status_code=200, summary="Invalidate cached values")
    async def invalidate_cached(self, tenant: Tenant, data: JSONBody[Invalidation]) -> Removed:
        """Remove by glob pattern, by literal prefix, or by tag."""
        cache = _cache(tenant, data.namespace)
        if data.pattern is not None:
            removed = await cache.invalidate(data.pattern)
        elif data.prefix is not None:
            removed = await cache.invalidate_prefix(data.prefix)
        else:
            assert data.tags is not None
            removed = await cache.invalidate_tags(*data.tags)
        return Removed(removed=removed)


def _cache(tenant: TenantScope, namespace: str) -> Cache:
    check_namespace(namespace)
    if namespace in _INTERNAL:
        raise ValidationError(
            f"namespace {namespace!r} is the data layer's own cache of records; use another",
            field="namespace",
        )
    return tenant.cache.with_namespace(namespace)


def _key(path: str) -> str:
    # A path parameter starts with the slash before it.
    return check_key(path.removeprefix("/"), "key")
