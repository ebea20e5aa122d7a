"""The collections catalog: which collections exist, their shape, and their tables.

Each collection is a row of ``embedding_collections`` and a table of its own, created together
in one transaction by the owner role, with row-level security on from the start. The
application role only reads the catalog. Specs are cached per DataLayer; a stale cache costs
speed (a search plan that does not use a newer index), never correctness.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from psycopg import sql

from agency_data.config import VectorConfig
from agency_data.errors import Conflict, NotFound, ValidationError
from agency_data.inputs import brief, check_bool, check_choice, check_int
from agency_data.postgres.database import Database
from agency_data.vectors.embedders import Embedder
from agency_data.vectors.metrics import METRICS
from agency_data.vectors.validation import MAX_DIMENSION

__all__ = ["DEFAULT_COLLECTION", "Catalog", "CollectionSpec"]

DEFAULT_COLLECTION = "default"

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
# Up to this many bytes a vector stays in the row (PLAIN storage) instead of TOAST: TOASTed
# vectors make the table look tiny to the planner and exact scans several times slower.
_PLAIN_LIMIT = 7000

Storage = Literal["vector", "halfvec"]


@dataclass(frozen=True)
class CollectionSpec:
    """A collection's fixed shape and its current index."""

    name: str
    table: str
    dimension: int
    metric: str
    storage: Storage
    index_kind: str | None = None
    index_quantization: str = "none"
    index_options: dict[str, Any] = field(default_factory=dict)

    @property
    def table_id(self) -> sql.Identifier:
        """The table's quoted name."""
        return sql.Identifier(self.table)

    @property
    def index_name(self) -> str:
        """The name of the collection's vector index."""
        return f"{self.table}_ann"

    @property
    def plain_storage(self) -> bool:
        """True when a vector fits the row, so it is stored PLAIN (never TOASTed)."""
        return 8 + self.dimension * (4 if self.storage == "vector" else 2) <= _PLAIN_LIMIT

    @property
    def vector_type(self) -> sql.Composable:
        """``vector(d)`` or ``halfvec(d)``."""
        return sql.SQL("{}({})").format(sql.SQL(self.storage), sql.Literal(self.dimension))


def check_name(name: str, field: str = "name") -> str:
    """``name`` if it is a valid collection name."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationError(
            f"collection name {brief(name)} must be 1-48 lower-case letters, digits or _, "
            "starting with a letter",
            field=field,
        )
    return name


class Catalog:
    """Reads collection specs (as the application) and writes them (as the owner), with a cache.

    The default collection, shaped by ``config.vector``, is made on first use.
    """

    def __init__(self, db: Database, admin: Database, config: VectorConfig) -> None:
        self._db = db
        self._admin = admin
        self._config = config
        self._cache: dict[str, CollectionSpec] = {}
        # What new collections' tables are audited with (audit.tables names "embeddings").
        self.audited: str | None = None
        # Collections' text embedders, given at create_collection: this process's, not stored.
        self.embedders: dict[str, Embedder] = {}

    async def get(self, name: str) -> CollectionSpec:
        """The spec of collection ``name``; :class:`NotFound` if it does not exist."""
        spec = self._cache.get(name)
        if spec is None:
            try:
                spec = await self.load(name)
            except NotFound:
                if name != DEFAULT_COLLECTION:
                    raise
                config = self._config
                spec = await self.create(
                    DEFAULT_COLLECTION,
                    config.dimension,
                    config.distance_metric,
                    "halfvec" if config.quantization == "halfvec" else "vector",
                    exist_ok=True,
                )
        return spec

    async def load(self, name: str) -> CollectionSpec:
        """The spec of ``name`` as the database has it now."""
        row = await self._db.fetch_one(
            "SELECT name, table_name, dimension, metric, storage, index_kind, index_quantization, "
            "index_options FROM embedding_collections WHERE name = %s",
            [check_name(name)],
        )
        if row is None:
            self._cache.pop(name, None)
            raise NotFound(
                f"collection {name!r} does not exist; create it with create_collection()",
                entity="collection",
                key=name,
            )
        spec = CollectionSpec(
            name=row["name"],
            table=row["table_name"],
            dimension=row["dimension"],
            metric=row["metric"],
            storage=row["storage"],
            index_kind=row["index_kind"],
            index_quantization=row["index_quantization"],
            index_options=row["index_options"],
        )
        self._cache[name] = spec
        return spec

    async def names(self) -> list[str]:
        """Every collection's name, sorted."""
        rows = await self._db.fetch("SELECT name FROM embedding_collections ORDER BY name")
        return [row["name"] for row in rows]

    async def create(
        self, name: str, dimension: int, metric: str, storage: str, *, exist_ok: bool
    ) -> CollectionSpec:
        """Create a collection and its table, or return the existing one when it matches."""
        check_name(name)
        check_choice(metric, "metric", METRICS)
        check_choice(storage, "storage", ("vector", "halfvec"))
        check_int(dimension, "dimension", 1, MAX_DIMENSION)
        check_bool(exist_ok, "exist_ok")
        spec = CollectionSpec(name, f"emb_{name}", dimension, metric, storage)  # type: ignore[arg-type]
        try:
            async with self._admin.transaction():
                await self._admin.execute(
                    "INSERT INTO embedding_collections (name, table_name, dimension, metric, storage) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    [name, spec.table, dimension, metric, storage],
                )
                for statement in _table_ddl(spec):
                    await self._admin.execute(statement)
                if self.audited is not None:
                    await self._admin.execute(
                        "SELECT agency_data_audit(%s::regclass, true, %s)",
                        [spec.table, self.audited],
                    )
                await self._admin.notes.action(
                    self._admin,
                    "collection.create",
                    "collection",
                    name,
                    {"dimension": dimension, "metric": metric, "storage": storage},
                )
        except Conflict:
            existing = await self.load(name)
            same = (existing.dimension, existing.metric, existing.storage) == (
                dimension,
                metric,
                storage,
            )
            if exist_ok and same:
                return existing
            raise Conflict(
                f"collection {name!r} already exists ({existing.dimension} dimensions, "
                f"{existing.metric}, {existing.storage})"
                + ("" if same else "; its shape differs from the one asked for"),
                field="name",
            ) from None
        self._cache[name] = spec
        return spec

    async def drop(self, name: str, *, sole_tenant: str | None = None) -> None:
        """Drop the collection and every embedding in it (all tenants); with ``sole_tenant``,
        :class:`Conflict` (and nothing dropped) when any other tenant has a row in it."""
        spec = await self.load(name)
        async with self._admin.transaction():
            if sole_tenant is not None:
                await self._refuse_others(spec, sole_tenant)
            await self._admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(spec.table_id))
            await self._admin.execute("DELETE FROM embedding_collections WHERE name = %s", [name])
            await self._admin.notes.action(self._admin, "collection.drop", "collection", name)
        self._cache.pop(name, None)
        # A collection made again under this name starts without the dropped one's embedder.
        self.embedders.pop(name, None)

    async def refuse_shared(self, name: str, tenant: str) -> None:
        """:class:`Conflict` when a tenant other than ``tenant`` has a row in collection
        ``name``: what one tenant's administrator does to a collection (its index) must not
        cost others. Nothing changes either way."""
        spec = await self.load(name)
        try:
            async with self._admin.transaction():
                await self._refuse_others(spec, tenant)
                raise _LookedOnly
        except _LookedOnly:
            pass

    async def _refuse_others(self, spec: CollectionSpec, tenant: str) -> None:
        # Row-level security (forced on the owner too) hides the other tenants' rows, so the
        # owner looks without it: lifted for this transaction only, under the lock that ALTER
        # takes (no row can be added meanwhile, nobody sees the table unforced), and put back
        # by the rollback when the drop is refused.
        await self._admin.execute(
            sql.SQL("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY").format(spec.table_id)
        )
        others = await self._admin.fetch_value(
            sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE tenant_id <> %s)").format(spec.table_id),
            [tenant],
        )
        if others:
            raise Conflict(
                f"collection {spec.name!r} holds other tenants' embeddings: a tenant may drop "
                "or change only a collection (and its index) no other tenant uses",
                field="name",
            )

    async def set_index(
        self, spec: CollectionSpec, kind: str | None, quantization: str, options: dict[str, Any]
    ) -> CollectionSpec:
        """Record the collection's index."""
        await self._admin.execute(
            "UPDATE embedding_collections SET index_kind = %s, index_quantization = %s, "
            "index_options = %s::jsonb WHERE name = %s",
            [kind, quantization, json.dumps(options), spec.name],
        )
        await self._admin.notes.action(
            self._admin,
            "index.create" if kind is not None else "index.drop",
            "collection",
            spec.name,
            {"kind": kind, "quantization": quantization, "options": options}
            if kind is not None
            else None,
        )
        updated = replace(
            spec, index_kind=kind, index_quantization=quantization, index_options=options
        )
        self._cache[spec.name] = updated
        return updated


def _table_ddl(spec: CollectionSpec) -> list[sql.Composed]:
    table = spec.table_id
    statements = [
        sql.SQL(
            """CREATE TABLE {table} (
                id          text COLLATE "C" NOT NULL DEFAULT gen_random_uuid()::text
                            CONSTRAINT {id_length} CHECK (length(id) BETWEEN 1 AND 512),
                tenant_id   text NOT NULL DEFAULT 'default'
                            CHECK (tenant_id ~ '^[A-Za-z0-9_.:-]{{1,64}}$'),
                entity_type text NOT NULL CHECK (btrim(entity_type) <> ''),
                entity_id   text NOT NULL,
                vector      {vtype} NOT NULL,
                metadata    jsonb NOT NULL DEFAULT '{{}}' CHECK (jsonb_typeof(metadata) = 'object'),
                content     text,
                content_tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', coalesce(content, ''))) STORED,
                created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
                PRIMARY KEY (tenant_id, id)
            )"""
        ).format(
            table=table,
            vtype=spec.vector_type,
            id_length=sql.Identifier(f"{spec.table}_id_length"),
        ),
        sql.SQL("CREATE INDEX {} ON {} (tenant_id, entity_type, entity_id)").format(
            sql.Identifier(f"{spec.table}_entity"), table
        ),
        # No GIN index on metadata: under row-level security only leakproof operators may use
        # an index, and jsonb's @> is not one (migration 0008).
        sql.SQL("CREATE INDEX {} ON {} USING gin (content_tsv)").format(
            sql.Identifier(f"{spec.table}_content"), table
        ),
        # Exact scans of large collections can then use both cores.
        sql.SQL("ALTER TABLE {} SET (parallel_workers = 2)").format(table),
        # Each tenant sees and writes only its own rows, whatever SQL reaches the table
        # (ENABLE + FORCE row-level security and the policy of migration 0007).
        sql.SQL("SELECT agency_data_isolate_tenants({})").format(sql.Literal(spec.table)),
        # Its writes become store events when a session asks for them (migration 0017).
        sql.SQL("SELECT agency_data_announce_embeddings({}, {})").format(
            sql.Literal(spec.table), sql.Literal(spec.name)
        ),
    ]
    if spec.plain_storage:
        statements.append(
            sql.SQL("ALTER TABLE {} ALTER COLUMN vector SET STORAGE PLAIN").format(table)
        )
    return statements


class _LookedOnly(Exception):
    """Rolls back a transaction that only looked (and lifted row security to look)."""
