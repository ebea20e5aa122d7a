"""Key administration: re-wrap data keys under a new KEK, re-encrypt values under a new data key
(online, in batches), and crypto-shred a tenant (``dl.admin.keys``; ``agency-data keys``).

Re-encryption of a tenant adds a data key and makes it the active one (every process picks it
up within a second), then rewrites each sealed value, and each plain value of a chosen field,
in batches of its own transactions: ``UPDATE ... WHERE`` the value is still the one read, so a
concurrent write is never overwritten (it is sealed under the new key already, or is rewritten
by the next pass). Passes repeat until one finds nothing; the older keys are then removed from
the key store unless asked to keep them. Cache entries are not rewritten: an entry under a
removed key reads as a miss.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from psycopg import sql

from agency_data.errors import ConfigError
from agency_data.inputs import check_bool, check_int, check_tenant
from agency_data.security.fields import FieldCipher, sealed_key

if TYPE_CHECKING:
    from agency_data.postgres.database import Database
    from agency_data.redis.client import RedisClient
    from agency_data.redis.keys import Keys
    from agency_data.vectors.catalog import Catalog

__all__ = ["KeyAdmin", "ReencryptReport"]

# Time for every process to take up a new active key (the keyring looks once a second).
_SETTLE = 2.2


@dataclass
class ReencryptReport:
    """What a re-encryption rewrote, per place, and which keys it removed."""

    tenant: str
    key_id: str
    rewritten: dict[str, int] = field(default_factory=dict)
    removed_keys: list[str] = field(default_factory=list)
    passes: int = 0


class KeyAdmin:
    """Data keys of every tenant: rotate the KEK, re-encrypt, destroy."""

    def __init__(
        self,
        cipher: FieldCipher,
        db: Database,
        catalog: Catalog,
        redis: RedisClient | None,
        keys_of: Any,
    ) -> None:
        self._cipher = cipher
        self._db = db
        self._catalog = catalog
        self._redis = redis
        # tenant -> Keys (the Redis key names of that tenant).
        self._keys_of = keys_of

    def _keyring(self) -> Any:
        if self._cipher.keyring is None:
            raise ConfigError(
                "no key-encryption key is configured (encryption.kek, kek_file, kek_env or "
                "DataLayer(key_manager=...))",
                field="encryption.kek",
            )
        return self._cipher.keyring

    def tenants(self) -> list[str]:
        """Every tenant with data keys in the key store."""
        return list(self._keyring().store.tenants())

    async def rotate(self) -> int:
        """Re-wrap every tenant's data keys under the current KEK; how many keys."""
        keyring = self._keyring()
        total = 0
        for tenant in keyring.store.tenants():
            total += await asyncio.to_thread(keyring.rewrap, tenant)
        return total

    async def destroy(self, tenant: str) -> bool:
        """Crypto-shred ``tenant``: its data keys removed, so that every value sealed for it,
        in PostgreSQL, Redis and every backup, can never be read again. False if it had none."""
        check_tenant(tenant)
        return bool(await asyncio.to_thread(self._keyring().destroy, tenant))

    async def reencrypt(
        self, tenant: str, *, batch_size: int = 500, keep_old: bool = False
    ) -> ReencryptReport:
        """Rewrite ``tenant``'s sealed values (and plain ones of chosen fields) under a new
        data key, online; then remove the older keys unless ``keep_old``."""
        check_tenant(tenant)
        check_int(batch_size, "batch_size", 1, 100_000)
        check_bool(keep_old, "keep_old")
        keyring = self._keyring()
        key_id = await asyncio.to_thread(keyring.new_key, tenant)
        report = ReencryptReport(tenant, key_id)
        await asyncio.sleep(_SETTLE)
        quiet = 0
        while quiet < 2:
            report.passes += 1
            changed = await self._pass(tenant, key_id, batch_size, report)
            quiet = quiet + 1 if changed == 0 else 0
            if quiet == 1:
                # Nothing left: once more after every process surely took the new key up.
                await asyncio.sleep(_SETTLE)
        if not keep_old:
            report.removed_keys = await asyncio.to_thread(keyring.retire, tenant, key_id)
        return report

    async def _pass(self, tenant: str, key_id: str, batch: int, report: ReencryptReport) -> int:
        changed = 0
        places: list[tuple[str, sql.Composable, str, bool]] = []
        for column in ("data", "result"):
            places.append(("tasks", sql.Identifier("tasks"), column, True))
        for name in await self._catalog.names():
            spec = await self._catalog.load(name)
            for column, is_json in (("content", False), ("metadata", True)):
                places.append((spec.table, spec.table_id, column, is_json))
        view = self._db.for_tenant(tenant)
        for table, table_id, column, is_json in places:
            chosen = self._chosen(table, column)
            done = await self._rewrite(
                view, tenant, table, table_id, column, is_json, chosen, key_id, batch
            )
            if done:
                report.rewritten[f"{table}.{column}"] = (
                    report.rewritten.get(f"{table}.{column}", 0) + done
                )
                changed += done
        done = await self._sessions(tenant, key_id)
        if done:
            report.rewritten["sessions.data"] = report.rewritten.get("sessions.data", 0) + done
            changed += done
        return changed

    def _chosen(self, table: str, column: str) -> bool:
        cipher = self._cipher
        if table == "tasks":
            return cipher.chosen("tasks", column)
        name = table.removeprefix("emb_")
        return cipher.chosen("embeddings", column) or cipher.chosen(name, column)

    async def _rewrite(
        self,
        view: Database,
        tenant: str,
        table: str,
        table_id: sql.Composable,
        column: str,
        is_json: bool,
        chosen: bool,
        key_id: str,
        batch: int,
    ) -> int:
        col = sql.Identifier(column)
        current = f"v1:{key_id}:%"
        if is_json:
            sealed_old = sql.SQL("({c} ? '$enc' AND {c}->>'$enc' NOT LIKE %s)").format(c=col)
        else:
            sealed_old = sql.SQL("({c} LIKE '$enc:%%' AND {c} NOT LIKE %s)").format(c=col)
            current = "$enc:" + current
        condition = sealed_old
        if chosen:
            plain = (
                sql.SQL("jsonb_typeof({c}) <> 'null' AND NOT ({c} ? '$enc')")
                if is_json
                else sql.SQL("{c} NOT LIKE '$enc:%%'")
            ).format(c=col)
            condition = sql.SQL("({} OR ({} IS NOT NULL AND {}))").format(sealed_old, col, plain)
        select = sql.SQL(
            "SELECT id, {c} AS value FROM {t} WHERE tenant_id = %s AND {cond} ORDER BY id LIMIT %s"
        ).format(c=col, t=table_id, cond=condition)
        update = sql.SQL(
            "UPDATE {t} SET {c} = %s WHERE tenant_id = %s AND id = %s AND {c} = %s"
        ).format(t=table_id, c=col)
        total = 0
        while True:
            async with view.transaction():
                rows = await view.fetch(select, [tenant, current, batch])
                for row in rows:
                    value = self._cipher.open(tenant, table, column, row["id"], row["value"])
                    resealed = self._cipher.seal(
                        tenant, table, column, row["id"], value, text=not is_json
                    )
                    if is_json:
                        await view.execute(
                            sql.SQL(
                                "UPDATE {t} SET {c} = %s::jsonb WHERE tenant_id = %s AND id = %s "
                                "AND {c} = %s::jsonb"
                            ).format(t=table_id, c=col),
                            [_json(resealed), tenant, row["id"], _json(row["value"])],
                        )
                    else:
                        await view.execute(update, [resealed, tenant, row["id"], row["value"]])
            total += len(rows)
            if len(rows) < batch:
                return total

    async def _sessions(self, tenant: str, key_id: str) -> int:
        redis = self._redis
        if redis is None or not self._cipher.chosen("sessions", "data"):
            return 0
        keys: Keys = self._keys_of(tenant)
        pattern = keys.session("*")
        rewritten = 0
        async for name in redis.scan_iter(match=pattern, count=500):
            async with redis.pipeline(transaction=True) as pipe:
                await pipe.watch(name)
                raw = await pipe.get(name)
                if raw is None:
                    continue
                document = orjson.loads(raw)
                stored = document.get("data")
                if sealed_key(stored) == key_id:
                    continue
                plain = self._cipher.open(tenant, "sessions", "data", document["id"], stored)
                document["data"] = self._cipher.seal(
                    tenant, "sessions", "data", document["id"], plain
                )
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.set(name, orjson.dumps(document), keepttl=True, xx=True)
                try:
                    await pipe.execute()
                except Exception:  # noqa: BLE001 - WatchError: written meanwhile, by the new key
                    continue
                rewritten += 1
        return rewritten


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()
