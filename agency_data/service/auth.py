"""Who is calling: API keys and bearer JWTs, the role each route needs, and rate limits.

A request carries its key as ``Authorization: Bearer adk_...`` (or ``X-API-Key: adk_...``).
With ``service.jwks_url`` set, a bearer token that is not one of our keys is verified as a JWT
signed by a key of that JWKS document; its tenant and role come from the configured claims,
and its ``sub`` names the caller in the audit trail.

Rate limits are a generic cell rate algorithm in one Lua script: one key in Redis per API key,
holding when its next request is due. When Redis cannot be reached, requests are let through
(and a warning logged): the limit protects the service, and losing Redis must not stop writes
to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from agency_data.config import ServiceConfig
from agency_data.errors import (
    AgencyDataError,
    AuthenticationFailed,
    BackendUnavailable,
    ConfigError,
    PermissionDenied,
    RateLimited,
    ValidationError,
)
from agency_data.inputs import check_tenant
from agency_data.redis.keys import Keys
from agency_data.redis.scripts import ScriptRegistry
from agency_data.security.api_keys import PREFIX, ApiKeyRole, ApiKeys

__all__ = [
    "Authenticator",
    "Principal",
    "RateLimiter",
    "administers",
    "reads",
    "writes",
]

_log = logging.getLogger("agency_data.service")

# Asymmetric algorithms only: a JWKS holds public keys, and "none" or HMAC with a public key
# as its secret are the classic ways around a verifier.
_JWT_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]


@dataclass(frozen=True)
class Principal:
    """The caller of a request: its tenant, role, name (the audit actor) and key id."""

    tenant: str
    role: ApiKeyRole
    name: str
    key_id: str


class Authenticator:
    """Turns a request's credentials into a :class:`Principal`."""

    def __init__(self, keys: ApiKeys, config: ServiceConfig) -> None:
        self._keys = keys
        self._config = config
        self._jwks: Any = None
        if config.jwks_url is not None:
            try:
                import jwt
            except ImportError as exc:  # pragma: no cover - PyJWT comes with the service extra
                raise ConfigError(
                    "service.jwks_url needs PyJWT: pip install 'agency-data[service]'",
                    field="service.jwks_url",
                ) from exc
            self._jwks = jwt.PyJWKClient(config.jwks_url, cache_keys=True, lifespan=300)

    async def authenticate(self, headers: dict[str, str]) -> Principal:
        """The principal of a request with ``headers`` (lower-case names)."""
        token = headers.get("x-api-key")
        if token is None:
            scheme, _, value = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise AuthenticationFailed(
                    "this request carries no credentials: send 'Authorization: Bearer <API key>'"
                    " (make a key with `agency-data keys create --tenant T --role R`)"
                )
            token = value.strip()
        if token.startswith(PREFIX) or self._jwks is None:
            key = await self._keys.verify(token)
            return Principal(key.tenant_id, key.role, key.name, key.id)
        return await asyncio.to_thread(self._verify_jwt, token)

    def _verify_jwt(self, token: str) -> Principal:
        import jwt

        config = self._config
        try:
            signing = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                signing.key,
                algorithms=_JWT_ALGORITHMS,
                audience=config.jwt_audience,
                issuer=config.jwt_issuer,
                options={"require": ["exp", "sub"], "verify_aud": config.jwt_audience is not None},
            )
        except jwt.PyJWKClientConnectionError as exc:
            raise BackendUnavailable(
                "the identity provider's JWKS could not be fetched", backend="jwks"
            ) from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(f"the bearer token was refused: {exc}") from None
        try:
            tenant = check_tenant(claims.get(config.jwt_tenant_claim))
        except ValidationError:
            raise AuthenticationFailed(
                f"the bearer token's {config.jwt_tenant_claim!r} claim names no valid tenant"
            ) from None
        try:
            role = ApiKeyRole(claims.get(config.jwt_role_claim, ApiKeyRole.READ_ONLY.value))
        except ValueError:
            raise AuthenticationFailed(
                f"the bearer token's {config.jwt_role_claim!r} claim must be one of "
                "read-only, read-write, admin"
            ) from None
        subject = str(claims["sub"])[:200] or "jwt"
        return Principal(tenant, role, subject, f"jwt:{subject}")


def _requires(role: ApiKeyRole) -> Any:
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        # async: the framework runs a plain function guard in a worker thread, per request.
        principal = connection.scope.get("user")
        if not isinstance(principal, Principal):
            raise AuthenticationFailed("this request carries no credentials")
        if not principal.role.allows(role):
            raise PermissionDenied(
                f"this needs {role.article} key; the key {principal.key_id} is {principal.role.value}",
            )

    guard.__name__ = f"requires_{role.name.lower()}"
    return guard


reads = _requires(ApiKeyRole.READ_ONLY)
"""Guard: any key."""
writes = _requires(ApiKeyRole.READ_WRITE)
"""Guard: a read-write or admin key."""
administers = _requires(ApiKeyRole.ADMIN)
"""Guard: an admin key."""


_GCRA = """
local now = redis.call('TIME')
local t = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or t)
if tat < t then tat = t end
local due = tat + interval
if due - tolerance > t then return due - tolerance - t end
redis.call('SET', KEYS[1], due, 'PX', math.ceil(due - t))
return 0
"""


class RateLimiter:
    """Per-key rate limits in Redis (``service.rate_limit`` a second, bursts of
    ``service.rate_burst``)."""

    def __init__(self, scripts: ScriptRegistry | None, config: ServiceConfig) -> None:
        self._scripts = scripts if config.rate_limit > 0 else None
        self._interval = 1000.0 / config.rate_limit if config.rate_limit > 0 else 0.0
        self._tolerance = self._interval * config.rate_burst
        if self._scripts is not None:
            self._scripts.register("agency_data_gcra", _GCRA)

    async def check(self, principal: Principal) -> None:
        """Count a request of ``principal``; :class:`RateLimited` if it is over its limit."""
        if self._scripts is None:
            return
        key = Keys(principal.tenant).rate_limit(principal.key_id)
        try:
            wait = await self._scripts.run(
                "agency_data_gcra", keys=[key], args=[self._interval, self._tolerance]
            )
        except AgencyDataError as exc:
            _log.warning("rate limit not checked (Redis: %s); the request goes through", exc)
            return
        if wait:
            raise RateLimited(
                f"key {principal.key_id} is over its rate limit; retry in {wait / 1000:.2f} s",
                retry_after=float(wait) / 1000,
            )
