"""API keys of the service: each bound to one tenant and one role, only a digest stored.

A key reads ``adk_<tenant>.<id>.<secret>``: the tenant in unpadded URL-safe base64, a 16
character id, and 32 random bytes (43 characters). PostgreSQL keeps the id, a name, the role
and the SHA-256 digest of the secret, never the secret, so the key is shown once, when made.

Checking a key looks it up *as the tenant it names*, through row-level security: the service
needs no role that sees every tenant, and a key whose tenant part was changed finds no row.
Revocation is a row update, so it holds from the next request on.

Usage::

    key, secret = await dl.admin.api_keys.create("acme", "read-write", name="planner")
    principal = await dl.admin.api_keys.verify(secret)     # ApiKey(tenant_id="acme", ...)
    await dl.admin.api_keys.revoke(key.id)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import hashlib
import hmac
import secrets
import string
from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from agency_data.batching import PointReads
from agency_data.errors import AuthenticationFailed, NotFound, ValidationError
from agency_data.inputs import check_choice, check_seconds, check_tenant, check_text
from agency_data.postgres.database import Database

__all__ = ["ApiKey", "ApiKeyRole", "ApiKeys", "parse_key"]

PREFIX = "adk_"
_ID_ALPHABET = string.ascii_lowercase + string.digits
_ID_LENGTH = 16
_SECRET_BYTES = 32
# A key is a few dozen characters; anything much longer is not one (and is not hashed).
_MAX_KEY = 256

_COLUMNS = "tenant_id, id, name, role, created_at, expires_at, revoked_at"


class ApiKeyRole(StrEnum):
    """What a key may do: read; read and write a tenant's data; also administer it."""

    READ_ONLY = "read-only"
    READ_WRITE = "read-write"
    ADMIN = "admin"

    @property
    def article(self) -> str:
        """The role with its article, for messages: "a read-only", "an admin"."""
        return f"an {self.value}" if self is ApiKeyRole.ADMIN else f"a {self.value}"

    def allows(self, needed: ApiKeyRole) -> bool:
        """Whether this role includes ``needed`` (admin > read-write > read-only)."""
        return _RANK[self] >= _RANK[needed]


_RANK = {ApiKeyRole.READ_ONLY: 0, ApiKeyRole.READ_WRITE: 1, ApiKeyRole.ADMIN: 2}


class ApiKey(BaseModel):
    """An API key as stored: everything but its secret."""

    model_config = ConfigDict(frozen=True)

    tenant_id: str
    id: str
    name: str
    role: ApiKeyRole
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


def parse_key(text: Any) -> tuple[str, str, bytes]:
    """``(tenant, id, secret digest)`` of a key's text; :class:`AuthenticationFailed` if it is
    not shaped like one of ours."""
    if not isinstance(text, str) or not text.startswith(PREFIX) or len(text) > _MAX_KEY:
        raise _refused()
    parts = text[len(PREFIX) :].split(".")
    if len(parts) != 3:
        raise _refused()
    encoded, key_id, secret = parts
    try:
        tenant = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        check_tenant(tenant)
    except (binascii.Error, UnicodeDecodeError, ValidationError, ValueError):
        raise _refused() from None
    if len(key_id) != _ID_LENGTH or not set(key_id) <= set(_ID_ALPHABET) or not secret:
        raise _refused()
    return tenant, key_id, _digest(secret)


class ApiKeys:
    """Make, list, revoke and check API keys (``dl.admin.api_keys``).

    ``admin`` is the owner's database (making and revoking keys is administration); ``app``
    is the pool the service runs on, used to check keys as their own tenant.
    """

    def __init__(self, admin: Database, app: Database) -> None:
        self._admin = admin
        self._app = app
        # Concurrent requests' keys are looked up together: one query per tenant and loop turn.
        self._reads: PointReads[tuple[str, str], dict[str, Any]] = PointReads(
            self._read_one, self._read_many
        )

    async def aclose(self) -> None:
        """Wait for the key lookups still running."""
        await self._reads.aclose()

    async def create(
        self,
        tenant: str,
        role: ApiKeyRole | str,
        *,
        name: str | None = None,
        expires_in: float | None = None,
    ) -> tuple[ApiKey, str]:
        """Make a key for ``tenant`` with ``role``; return it and its text, which is never
        shown again. ``name`` (default: the key's id) is the audit trail's actor for what
        the key does; ``expires_in`` (seconds) ends it by itself."""
        check_tenant(tenant)
        chosen = ApiKeyRole(check_choice(role, "role", [r.value for r in ApiKeyRole]))
        key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))
        label = key_id if name is None else check_text(name, "name", max_length=200).strip()
        if not label:
            raise ValidationError("name must not be blank", field="name")
        lifetime = None
        if expires_in is not None:
            lifetime = timedelta(
                seconds=check_seconds(expires_in, "expires_in", low=1, high=100 * 366 * 86_400)
            )
        secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).decode().rstrip("=")
        row = await self._admin.for_tenant(tenant).fetch_one(
            f"""INSERT INTO api_keys (tenant_id, id, name, role, secret_hash, expires_at)
                VALUES (%s, %s, %s, %s, %s, clock_timestamp() + %s)
                RETURNING {_COLUMNS}""",
            [tenant, key_id, label, chosen.value, _digest(secret), lifetime],
        )
        assert row is not None
        encoded = base64.urlsafe_b64encode(tenant.encode()).decode().rstrip("=")
        return ApiKey.model_validate(row), f"{PREFIX}{encoded}.{key_id}.{secret}"

    async def list(
        self, tenant: str | None = None, *, revoked: bool = False
    ) -> builtins.list[ApiKey]:
        """The keys of ``tenant`` (of every tenant when None, as the owner sees them), oldest
        first; revoked ones too with ``revoked=True``."""
        db = self._admin if tenant is None else self._admin.for_tenant(check_tenant(tenant))
        where = "" if revoked else "WHERE revoked_at IS NULL"
        rows = await db.fetch(f"SELECT {_COLUMNS} FROM api_keys {where} ORDER BY created_at, id")
        return [ApiKey.model_validate(row) for row in rows]

    async def revoke(self, key_id: str, *, tenant: str | None = None) -> ApiKey:
        """Revoke the key with ``key_id``: requests carrying it are refused from now on.
        :class:`NotFound` if there is no such key (of ``tenant``, when given)."""
        if not isinstance(key_id, str) or len(key_id) != _ID_LENGTH or key_id.strip(_ID_ALPHABET):
            raise ValidationError(
                f"key_id must be a key's id, {_ID_LENGTH} lowercase letters and digits (the "
                "middle part of adk_<tenant>.<id>.<secret>, as `keys issued` lists it); what "
                "was given is not shown, as it may be a whole key",
                field="key_id",
            )
        db = self._admin if tenant is None else self._admin.for_tenant(check_tenant(tenant))
        row = await db.fetch_one(
            f"""UPDATE api_keys SET revoked_at = coalesce(revoked_at, clock_timestamp())
                WHERE id = %s RETURNING {_COLUMNS}""",
            [key_id],
        )
        if row is None:
            raise NotFound(f"there is no API key {key_id}", entity="api_key", key=key_id)
        return ApiKey.model_validate(row)

    async def verify(self, text: Any) -> ApiKey:
        """The live key ``text`` is; :class:`AuthenticationFailed` if it is malformed, unknown,
        revoked or expired (the error does not say which)."""
        tenant, key_id, digest = parse_key(text)
        row = await self._reads.get((tenant, key_id))
        if row is None or not hmac.compare_digest(bytes(row["secret_hash"]), digest):
            raise _refused()
        return ApiKey.model_validate({k: v for k, v in row.items() if k != "secret_hash"})

    async def _read_one(self, key: tuple[str, str]) -> dict[str, Any] | None:
        return (await self._read_many([key])).get(key)

    async def _read_many(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        by_tenant: dict[str, builtins.list[str]] = {}
        for tenant, key_id in keys:
            by_tenant.setdefault(tenant, []).append(key_id)

        async def read(tenant: str, ids: builtins.list[str]) -> builtins.list[dict[str, Any]]:
            return await self._app.for_tenant(tenant).fetch(
                f"""SELECT {_COLUMNS}, secret_hash FROM api_keys
                    WHERE id = ANY(%s) AND revoked_at IS NULL
                      AND (expires_at IS NULL OR expires_at > clock_timestamp())""",
                [ids],
            )

        groups = await asyncio.gather(*(read(t, ids) for t, ids in by_tenant.items()))
        return {(row["tenant_id"], row["id"]): row for rows in groups for row in rows}


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _refused() -> AuthenticationFailed:
    return AuthenticationFailed(
        "the API key is not valid: it is malformed, unknown, revoked or expired; make one with "
        "`agency-data keys create --tenant T --role R`"
    )
