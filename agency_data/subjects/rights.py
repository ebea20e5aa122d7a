"""Data subject rights: everything held about a subject, exported or erased, in every store.

Where a subject's id appears is configured (``subjects``): JSON paths into tasks' data,
agents' capabilities, embeddings' metadata, session data and stream messages; embeddings of
chosen entity types whose ``entity_id`` is the subject; and cache entries tagged
``subject:<id>`` (``subjects.cache_tag``) by the code that cached them.

Rows are found by reading the tenant's rows and looking at the opened values (sealed fields
included: the database cannot look inside them), a batch at a time. ``erase`` removes every
find: rows in one transaction per table (their deletes are audited as any), sessions and
stream messages in Redis, and the tagged cache entries from Redis and from every process's L1
(by the invalidation broadcast). It then records the erasure in the tenant's audit trail with
its counts and a digest of the subject id, never the values.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from psycopg import sql

from agency_data.audit.notes import SYSTEM_TRAIL
from agency_data.config import SubjectsConfig
from agency_data.errors import ValidationError
from agency_data.inputs import check_tenant, check_text
from agency_data.memory.erasure import erase_memories, memory_versions
from agency_data.outbox.changes import erase_changes
from agency_data.outbox.relay import RELAY_LOCK
from agency_data.redis.errors import translate_errors as redis_errors
from agency_data.redis.keys import Keys
from agency_data.security.fields import COLLECTION_COLUMNS, SEALABLE

if TYPE_CHECKING:
    from agency_data.cache.store import Cache
    from agency_data.postgres.database import Database
    from agency_data.redis.client import RedisClient
    from agency_data.vectors.catalog import Catalog

__all__ = ["ErasureReport", "SubjectRights"]

_BATCH = 1000
# Where a subject may appear in PostgreSQL: the report's name for it, the table's name (the
# associated data of its sealed values), the table, its sealable columns, the JSON paths.
_Place = tuple[str, str, sql.Composable, tuple[str, ...], list[tuple[str, ...]], str]
_MAX_SUBJECT = 500


@dataclass
class ErasureReport:
    """What an erasure removed, per store and place."""

    tenant: str
    subject_digest: str | None
    removed: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Everything removed."""
        return sum(self.removed.values())


class SubjectRights:
    """``dl.subjects``: export and erase what a tenant holds about a subject."""

    def __init__(
        self,
        db: Database,
        admin: Database,
        catalog: Catalog,
        redis: RedisClient | None,
        config: SubjectsConfig,
        cache_of: Any,
        digest_key: bytes | None = None,
    ) -> None:
        # audit.digest_key: the erasure's record names the subject by an HMAC under it (a
        # plain digest of an email address is read back by guessing), or not at all.
        self._digest_key = digest_key
        self._db = db
        self._admin = admin
        self._catalog = catalog
        self._redis = redis
        self.config = config
        # tenant -> that tenant's Cache (to invalidate tagged entries everywhere).
        self._cache_of = cache_of

    async def export(self, tenant: str, subject: str) -> dict[str, Any]:
        """Everything ``tenant`` holds about ``subject``, as one JSON-ready document."""
        tenant, subject = self._check(tenant, subject)
        document: dict[str, Any] = {"tenant": tenant, "subject": subject}
        for place, name, table, sealable, paths, key in await self._tables():
            rows = [
                row
                async for row in self._matching(tenant, subject, name, table, sealable, paths, key)
            ]
            if rows:
                document.setdefault(place.split(".")[0], {})[place.split(".")[-1]] = rows
        document["sessions"] = [s async for _, s in self._sessions(tenant, subject)]
        document["streams"] = {
            name: [message for _, message in messages]
            for name, messages in (await self._stream_messages(tenant, subject)).items()
        }
        document["cache"] = await self._cache_entries(tenant, subject)
        return document

    async def erase(self, tenant: str, subject: str) -> ErasureReport:
        """Remove everything ``tenant`` holds about ``subject`` from every store; the counts."""
        tenant, subject = self._check(tenant, subject)
        report = ErasureReport(tenant, self._digest(subject))
        view = self._db.for_tenant(tenant)
        if self._redis is not None:
            # Redis must answer before anything is removed: an erasure is done everywhere or
            # reported failed (run it again), never recorded half done.
            with redis_errors("erasing a subject"):
                await self._redis.ping()
        for place, name, table, sealable, paths, key in await self._tables():
            ids = [
                row[key]
                async for row in self._matching(tenant, subject, name, table, sealable, paths, key)
            ]
            if ids:
                async with view.transaction():
                    report.removed[place] = await view.execute(
                        sql.SQL("DELETE FROM {} WHERE tenant_id = %s AND {} = ANY(%s)").format(
                            table, sql.Identifier(key)
                        ),
                        [tenant, ids],
                    )
                    if place.startswith("embeddings."):
                        # A memory's collection row (agency_data.memory): the memory goes, with
                        # every version and everything made from it.
                        await self._erase_memories(view, tenant, [str(i) for i in ids], report)
                    # The change feed (a tracked table) held the rows' values too.
                    await erase_changes(view, tenant, name, [str(i) for i in ids])
        # Memories whose earlier versions named the subject (forgotten ones have no collection
        # row left, and an update may have moved the current one to someone else).
        named = [i async for i in self._memories_naming(tenant, subject)]
        if named:
            async with view.transaction():
                await self._erase_memories(view, tenant, named, report)
        sessions = [(held, s) async for held, s in self._sessions(tenant, subject)]
        if sessions and self._redis is not None:
            keys = Keys(tenant)
            with redis_errors("erasing sessions"):
                pipe = self._redis.pipeline(transaction=False)
                for held, session in sessions:
                    pipe.delete(held)
                    pipe.srem(keys.agent_sessions(session["agent_id"]), session["id"])
                await pipe.execute()
            report.removed["sessions"] = len(sessions)
        for name, messages in (await self._stream_messages(tenant, subject)).items():
            assert self._redis is not None
            with redis_errors("erasing stream messages"):
                await self._redis.xdel(name, *[ident for ident, _ in messages])
            report.removed[f"streams.{name.rsplit(':', 1)[-1]}"] = len(messages)
        cached = await self._cache_of(tenant).invalidate_tags(self._tag(subject))
        if cached:
            report.removed["cache"] = cached
        await self._admin.execute(
            "SELECT agency_data_audit_append(%s, 'subject.erase', 'subject', %s, %s::jsonb)",
            [tenant, report.subject_digest, orjson.dumps(report.removed).decode()],
        )
        return report

    async def erase_tenant(self, tenant: str) -> ErasureReport:
        """Remove everything of ``tenant`` from every store: its rows in every table, every
        Redis key of it (sessions, streams, locks, cache, from every process's L1 too) and its
        data keys (so that its sealed values in backups are unreadable as well). Its audit
        trail stays (records hold digests, not values) and records the erasure."""
        check_tenant(tenant)
        report = ErasureReport(tenant, None)
        view = self._db.for_tenant(tenant)
        tables = ["task_schedules", "task_types", "tasks", "agents"]
        # LangGraph's checkpoints and store (agency_data.integrations.langgraph), used or not.
        tables += [
            "langgraph_checkpoint_writes",
            "langgraph_checkpoint_blobs",
            "langgraph_checkpoints",
            "langgraph_store",
        ]
        # LangChain's byte store (agency_data.integrations.langchain).
        tables += ["kv_items"]
        # The knowledge graph (each table named, so the report counts its rows; mentions and
        # relations would go with their entities), then agent memory: its versions and links
        # go with it (ON DELETE CASCADE).
        tables += ["memory_mentions", "memory_relations", "memory_entities", "memories"]
        # The service's API keys: an erased tenant's keys stop working.
        tables += ["api_keys"]
        tables += [(await self._catalog.load(n)).table for n in await self._catalog.names()]
        # Last: the deletes above may have written changes and messages (tracked tables).
        tables += ["outbox", "changes", "change_consumers"]
        async with view.transaction():
            # A relay round under way would send the tenant's messages after its keys are
            # erased below: wait for it, and hold off the next until this commits.
            await view.execute("SELECT pg_advisory_xact_lock(%s)", [RELAY_LOCK])
            for table in tables:
                removed = await view.execute(
                    sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(sql.Identifier(table)),
                    [tenant],
                )
                if removed:
                    report.removed[table] = removed
        if self._redis is not None:
            cache = self._cache_of(tenant)
            namespaces: set[str] = set()
            doomed: list[bytes | str] = []
            prefix = Keys(tenant).prefix
            with redis_errors("erasing a tenant's keys"):
                async for key in self._redis.scan_iter(match=prefix + "*", count=1000):
                    doomed.append(key)
                    rest = _text(key).removeprefix(prefix)
                    if rest.startswith("c:"):
                        namespaces.add(rest[2:].split(":", 1)[0])
            for namespace in sorted(namespaces):
                # Through the cache: every process drops its L1 entries of the namespace.
                await cache.clear(namespace)
            with redis_errors("erasing a tenant's keys"):
                for start in range(0, len(doomed), 500):
                    await self._redis.delete(*doomed[start : start + 500])
            if doomed:
                report.removed["redis keys"] = len(doomed)
        keyring = self._db.cipher.keyring
        if keyring is not None and await asyncio.to_thread(keyring.destroy, tenant):
            report.removed["data keys"] = 1
        await self._admin.execute(
            "SELECT agency_data_audit_append(%s, 'tenant.erase', 'tenant', %s, %s::jsonb)",
            [SYSTEM_TRAIL, tenant, orjson.dumps(report.removed).decode()],
        )
        return report

    # -- finding -------------------------------------------------------------------------------

    def _check(self, tenant: str, subject: str) -> tuple[str, str]:
        check_tenant(tenant)
        check_text(subject, "subject", max_length=_MAX_SUBJECT)
        if not subject.strip():
            raise ValidationError("subject must name someone: not blank", field="subject")
        return tenant, subject

    def _digest(self, subject: str) -> str | None:
        if self._digest_key is None:
            return None
        return hmac.new(self._digest_key, subject.encode(), hashlib.sha256).hexdigest()

    def _tag(self, subject: str) -> str:
        return self.config.cache_tag.replace("{subject}", subject)

    async def _tables(self) -> list[_Place]:
        config = self.config
        places: list[_Place] = []
        if config.tasks:
            task_paths = [("data", *p.split(".")) for p in config.tasks]
            places.append(
                (
                    "tasks",
                    "tasks",
                    sql.Identifier("tasks"),
                    SEALABLE["tasks"],
                    task_paths,
                    "id",
                )
            )
            # A schedule about the subject would go on making tasks about it.
            places.append(
                (
                    "task_schedules",
                    "task_schedules",
                    sql.Identifier("task_schedules"),
                    SEALABLE["task_schedules"],
                    task_paths,
                    "name",
                )
            )
        if config.agents:
            places.append(
                (
                    "agents",
                    "agents",
                    sql.Identifier("agents"),
                    (),
                    [("capabilities", *p.split(".")) for p in config.agents],
                    "id",
                )
            )
        if config.collections or config.entity_types:
            for name in await self._catalog.names():
                spec = await self._catalog.load(name)
                paths = [("metadata", *p.split(".")) for p in config.collections]
                places.append(
                    (
                        f"embeddings.{name}",
                        spec.table,
                        spec.table_id,
                        COLLECTION_COLUMNS,
                        paths,
                        "id",
                    )
                )
        return places

    async def _erase_memories(
        self, view: Database, tenant: str, ids: list[str], report: ErasureReport
    ) -> None:
        erased = await erase_memories(view, self._catalog, tenant, ids)
        if erased:
            report.removed["memories"] = report.removed.get("memories", 0) + erased

    async def _memories_naming(self, tenant: str, subject: str) -> AsyncIterator[str]:
        """Ids of the memories any version of which names ``subject``: in its metadata at the
        collections' paths, or as its agent when its kind is one of the entity types."""
        config = self.config
        paths = [tuple(p.split(".")) for p in config.collections]
        kinds = set(config.entity_types)
        if not paths and not kinds:
            return
        found: set[str] = set()
        async for version in memory_versions(self._db.for_tenant(tenant), tenant):
            memory = version["memory_id"]
            if memory not in found and (
                any(_names(_at(version["metadata"], path), subject) for path in paths)
                or (version["kind"] in kinds and version["agent_id"] == subject)
            ):
                found.add(memory)
                yield memory

    async def _matching(
        self,
        tenant: str,
        subject: str,
        name: str,
        table: sql.Composable,
        sealable: tuple[str, ...],
        paths: list[tuple[str, ...]],
        key: str = "id",
    ) -> AsyncIterator[dict[str, Any]]:
        view = self._db.for_tenant(tenant)
        cipher = self._db.cipher
        # Keyset pages; the first has no key to start after (ids are UUIDs or strings).
        first, query = (
            sql.SQL(
                "SELECT to_jsonb(t) - 'search' - 'content_tsv' - 'lease_token' AS row FROM {} t "
                "WHERE tenant_id = %s" + after + " ORDER BY {k} LIMIT %s"
            ).format(table, k=sql.Identifier(key))
            for after in ("", " AND {k} > %s")
        )
        after: Any = None
        entity_types = set(self.config.entity_types)
        while True:
            if after is None:
                page = await view.fetch(first, [tenant, _BATCH])
            else:
                page = await view.fetch(query, [tenant, after, _BATCH])
            rows = [r["row"] for r in page]
            if sealable:
                # The tenant's keys read (off the event loop) once a batch, not a row.
                await cipher.ensure(tenant, write=False)
            for row in rows:
                opened = cipher.open_row(tenant, name, row, sealable, key) if sealable else row
                if any(_names(_at(opened, path), subject) for path in paths) or (
                    opened.get("entity_type") in entity_types and opened.get("entity_id") == subject
                ):
                    yield opened
            if len(rows) < _BATCH:
                return
            after = rows[-1][key]

    async def _sessions(
        self, tenant: str, subject: str
    ) -> AsyncIterator[tuple[bytes, dict[str, Any]]]:
        if self._redis is None or not self.config.sessions:
            return
        cipher = self._db.cipher
        await cipher.ensure(tenant, write=False)
        paths = [("data", *p.split(".")) for p in self.config.sessions]
        with redis_errors("reading sessions"):
            async for key in self._redis.scan_iter(match=Keys(tenant).session("*"), count=500):
                raw = await self._redis.get(key)
                if raw is None:
                    continue
                document = orjson.loads(raw)
                document["data"] = cipher.open(
                    tenant, "sessions", "data", document["id"], document["data"]
                )
                if any(_names(_at(document, path), subject) for path in paths):
                    yield key, document

    async def _stream_messages(self, tenant: str, subject: str) -> dict[str, list[tuple[str, Any]]]:
        found: dict[str, list[tuple[str, Any]]] = {}
        if self._redis is None or not self.config.streams:
            return found
        paths = [tuple(p.split(".")) for p in self.config.streams]
        with redis_errors("reading streams"):
            async for key in self._redis.scan_iter(match=Keys(tenant).stream("*"), count=500):
                name = _text(key)
                if await self._redis.type(key) not in (b"stream", "stream"):
                    continue
                entries: list[Any] = await self._redis.xrange(key) or []
                for ident, fields in entries:
                    message = orjson.loads((fields or {}).get(b"d", b"null"))
                    if any(_names(_at(message, path), subject) for path in paths):
                        found.setdefault(name, []).append((_text(ident), message))
        return found

    async def _cache_entries(self, tenant: str, subject: str) -> list[Any]:
        cache: Cache = self._cache_of(tenant)
        return await cache.tagged(self._tag(subject))


def _names(value: Any, subject: str) -> bool:
    # An id stored as a number names the subject given as text ("42").
    if isinstance(value, str):
        return value == subject
    return isinstance(value, int) and not isinstance(value, bool) and str(value) == subject


def _at(value: Any, path: Sequence[str]) -> Any:
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
