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
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from filelock import FileLock, Timeout
from psycopg import sql

from agency_data.errors import ConfigError, Conflict, NotFound
from agency_data.inputs import check_int, check_seconds, check_tenant
from agency_data.redis.keys import Keys
from agency_data.security.fields import FieldCipher, sealed_key
from agency_data.security.keys import Keyring

if TYPE_CHECKING:
    from agency_data.postgres.database import Database
    from agency_data.redis.client import RedisClient
    from agency_data.vectors.catalog import Catalog

__all__ = ["KeyAdmin", "ReencryptReport"]

# How long the last pass waits for writers that sealed with the old key to commit.
_SETTLE = 2.0
# Below every UUID: where a pass starts.


class _Sealable(NamedTuple):
    """A column that may hold sealed values: its table (the values' associated data names
    it), the table as SQL, whether it holds JSON, and the column that names a row."""

    table: str
    table_id: sql.Composable
    column: str
    is_json: bool
    id_column: str = "id"


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
        admin: Database | None = None,
    ) -> None:
        self._cipher = cipher
        # The owner's view: key operations are recorded in the system audit trail.
        self._admin = admin
        self._db = db
        self._catalog = catalog
        self._redis = redis

    def _keyring(self) -> Keyring:
        if self._cipher.keyring is None:
            raise ConfigError(
                "no key-encryption key is configured (encryption.kek, kek_file, kek_env or "
                "DataLayer(key_manager=...))",
                field="encryption.kek",
            )
        return self._cipher.keyring

    def tenants(self) -> list[str]:
        """Every tenant with data keys in the key store."""
        return self._keyring().store.tenants()

    async def rotate(self) -> int:
        """Re-wrap every tenant's data keys under the current KEK; how many keys."""
        keyring = self._keyring()
        total = 0
        for tenant in keyring.store.tenants():
            total += await asyncio.to_thread(keyring.rewrap, tenant)
        await self._record("keys.rotate", None, {"keys": total})
        return total

    async def _record(self, operation: str, tenant: str | None, detail: dict[str, Any]) -> None:
        if self._admin is not None:
            await self._admin.notes.action(self._admin, operation, "keys", tenant, detail)

    async def destroy(self, tenant: str) -> bool:
        """Crypto-shred ``tenant``: its data keys removed, so that every value sealed for it,
        in PostgreSQL, Redis and every backup, can never be read again. False if it had none."""
        check_tenant(tenant)
        destroyed = bool(await asyncio.to_thread(self._keyring().destroy, tenant))
        if destroyed:
            await self._record("keys.destroy", tenant, {})
        return destroyed

    async def reencrypt(self, tenant: str, *, batch_size: int = 500) -> ReencryptReport:
        """Rewrite ``tenant``'s sealed values (and plain ones of chosen fields) under a new
        data key, online. The older keys stay, able to decrypt what a transaction still open
        sealed with them; :meth:`retire` removes them once nothing uses them."""
        check_tenant(tenant)
        check_int(batch_size, "batch_size", 1, 100_000)
        keyring = self._keyring()
        if not await asyncio.to_thread(keyring.keys_of, tenant):
            raise NotFound(
                f"tenant {tenant} has no data key: nothing was ever sealed for it",
                entity="tenant",
                key=tenant,
            )
        running = FileLock(str(keyring.store.directory / f".{tenant}.reencrypt.lock"), mode=0o600)
        try:
            await asyncio.to_thread(running.acquire, timeout=0)
        except Timeout:
            raise Conflict(
                f"a re-encryption of tenant {tenant} is running already; wait for it",
                field="tenant",
            ) from None
        try:
            key_id = await asyncio.to_thread(keyring.new_key, tenant)
            report = ReencryptReport(tenant, key_id)
            quiet = 0
            while quiet < 2:
                report.passes += 1
                changed = await self._pass(tenant, key_id, batch_size, report)
                quiet = quiet + 1 if changed == 0 else 0
                if quiet == 1:
                    # Nothing left: once more, after writers that began before the new key
                    # had a moment to commit.
                    await asyncio.sleep(_SETTLE)
            await self._record(
                "keys.reencrypt", tenant, {"key": key_id, "rewritten": report.rewritten}
            )
            return report
        finally:
            running.release()

    async def retire(self, tenant: str, *, grace: float = 3600.0) -> list[str]:
        """Remove ``tenant``'s older keys that no stored value uses and that stopped being
        active at least ``grace`` seconds ago (a transaction still open could otherwise hold
        a value sealed with one); the keys removed."""
        check_tenant(tenant)
        grace = check_seconds(grace, "grace", low=0.0, high=365 * 86400.0)
        keyring = self._keyring()
        keys = await asyncio.to_thread(keyring.keys_of, tenant)
        if len(keys) < 2:
            return []
        now = datetime.now(UTC)
        old = [
            key.key_id
            for key, successor in itertools.pairwise(keys)
            if (now - successor.created_at).total_seconds() >= grace
        ]
        used = await self._used_keys(tenant, old)
        doomed = [key_id for key_id in old if key_id not in used]
        if doomed:
            await asyncio.to_thread(keyring.remove, tenant, doomed)
            await self._record("keys.retire", tenant, {"keys": doomed})
        return doomed

    async def _used_keys(self, tenant: str, key_ids: list[str]) -> set[str]:
        used: set[str] = set()
        view = self._db.for_tenant(tenant)
        for place in await self._places():
            col = sql.Identifier(place.column)
            text = sql.SQL("{c}->>'$enc'" if place.is_json else "{c}").format(c=col)
            for key_id in key_ids:
                if key_id in used:
                    continue
                pattern = ("" if place.is_json else "$enc:") + f"v1:{key_id}:%"
                found = await view.fetch_value(
                    sql.SQL("SELECT 1 FROM {} WHERE tenant_id = %s AND {} LIKE %s LIMIT 1").format(
                        place.table_id, text
                    ),
                    [tenant, pattern],
                )
                if found is not None:
                    used.add(key_id)
        used.update(await self._session_keys(tenant))
        return used

    async def _places(self) -> list[_Sealable]:
        tasks, schedules = sql.Identifier("tasks"), sql.Identifier("task_schedules")
        places = [
            _Sealable("tasks", tasks, "data", True),
            _Sealable("tasks", tasks, "result", True),
            _Sealable("tasks", tasks, "error", False),
            _Sealable("tasks", tasks, "traceback", False),
            _Sealable("task_schedules", schedules, "data", True, "name"),
        ]
        for name in await self._catalog.names():
            spec = await self._catalog.load(name)
            places.append(_Sealable(spec.table, spec.table_id, "content", False))
            places.append(_Sealable(spec.table, spec.table_id, "metadata", True))
        return places

    async def _pass(self, tenant: str, key_id: str, batch: int, report: ReencryptReport) -> int:
        changed = 0
        view = self._db.for_tenant(tenant)
        for place in await self._places():
            done = await self._rewrite(view, tenant, place, key_id, batch)
            if done:
                name = f"{place.table}.{place.column}"
                report.rewritten[name] = report.rewritten.get(name, 0) + done
                changed += done
        done = await self._sessions(tenant, key_id)
        if done:
            report.rewritten["sessions.data"] = report.rewritten.get("sessions.data", 0) + done
            changed += done
        return changed

    def _chosen(self, table: str, column: str) -> bool:
        cipher = self._cipher
        if table == "tasks":
            return cipher.chosen("tasks", "error" if column == "traceback" else column)
        if table == "task_schedules":
            return cipher.chosen("tasks", "data")
        name = table.removeprefix("emb_")
        return cipher.chosen("embeddings", column) or cipher.chosen(name, column)

    async def _rewrite(
        self, view: Database, tenant: str, place: _Sealable, key_id: str, batch: int
    ) -> int:
        table, table_id, column, is_json = place.table, place.table_id, place.column, place.is_json
        chosen = self._chosen(table, column)
        col = sql.Identifier(column)
        ident = sql.Identifier(place.id_column)
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
        # Forward through the table once per pass (by id): a row whose compare-and-set missed
        # (written meanwhile) waits for the next pass instead of being read again at once.
        # The first page has no key to start after (ids are UUIDs or strings).
        first, select = (
            sql.SQL(
                "SELECT {i} AS id, {c} AS value, {c}::text AS exact FROM {t} "
                "WHERE tenant_id = %s" + after + " AND {cond} ORDER BY {i} LIMIT %s"
            ).format(i=ident, c=col, t=table_id, cond=condition)
            for after in ("", " AND {i} > %s")
        )
        update = sql.SQL(
            "UPDATE {t} SET {c} = %s{cast} WHERE tenant_id = %s AND {i} = %s AND {c}::text = %s"
        ).format(t=table_id, c=col, i=ident, cast=sql.SQL("::jsonb" if is_json else ""))
        total = 0
        after: Any = None
        while True:
            async with view.transaction():
                if after is None:
                    rows = await view.fetch(first, [tenant, current, batch])
                else:
                    rows = await view.fetch(select, [tenant, after, current, batch])
                for row in rows:
                    value = self._cipher.open(tenant, table, column, row["id"], row["value"])
                    resealed = self._cipher.seal(
                        tenant, table, column, row["id"], value, text=not is_json, key_id=key_id
                    )
                    stored = _json(resealed) if is_json else resealed
                    total += await view.execute(update, [stored, tenant, row["id"], row["exact"]])
            if len(rows) < batch:
                return total
            after = rows[-1]["id"]

    async def _session_keys(self, tenant: str) -> set[str]:
        redis = self._redis
        if redis is None:
            return set()
        found: set[str] = set()
        async for name in redis.scan_iter(match=Keys(tenant).session("*"), count=500):
            raw = await redis.get(name)
            if raw is not None and (key := sealed_key(orjson.loads(raw).get("data"))):
                found.add(key)
        return found

    async def _sessions(self, tenant: str, key_id: str) -> int:
        redis = self._redis
        if redis is None:
            return 0
        chosen = self._cipher.chosen("sessions", "data")
        keys = Keys(tenant)
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
                sealed_with = sealed_key(stored)
                # Sealed under an older key, or plain while the field is chosen.
                if sealed_with == key_id or (sealed_with is None and not chosen):
                    continue
                plain = self._cipher.open(tenant, "sessions", "data", document["id"], stored)
                document["data"] = self._cipher.seal(
                    tenant, "sessions", "data", document["id"], plain, key_id=key_id
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
