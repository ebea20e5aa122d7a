"""What every view of agent memory shares: its collection, embedder and writes of versions."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from agency_data.config import MemoryConfig
from agency_data.errors import NotFound, ValidationError
from agency_data.inputs import check_text
from agency_data.memory import _sql
from agency_data.memory._checks import (
    MAX_TEXT,
    as_jsonb,
    check_label,
    directed,
    history_key,
    memory_record,
    vector_param,
)
from agency_data.memory.access import AccessLog
from agency_data.memory.erasure import erase_memories
from agency_data.memory.graph import KnowledgeGraph
from agency_data.memory.models import MemoryRecord, Remembered
from agency_data.outbox.changes import ChangeFeed
from agency_data.postgres.database import Database
from agency_data.postgres.errors import translate_errors
from agency_data.security.fields import COLLECTION_COLUMNS, sealed_key
from agency_data.vectors.catalog import Catalog, CollectionSpec
from agency_data.vectors.embedders import Embedder
from agency_data.vectors.validation import as_vector

Query = str | Sequence[float] | npt.NDArray[Any]


class MemoryBase:
    """A tenant's memories in one collection: the parts its operations share."""

    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        tenant: str,
        config: MemoryConfig,
        feed: ChangeFeed,
        *,
        collection: str | None = None,
    ) -> None:
        self._db = db
        self._telemetry = db.telemetry
        self._catalog = catalog
        self.tenant: str = tenant
        self._config = config
        self._feed = feed
        self.collection: str = collection or config.collection
        self._embedder: Embedder | None = None
        self._access = AccessLog(db, tenant, config.access_flush)
        self.graph: KnowledgeGraph = KnowledgeGraph(db, tenant)

    async def aclose(self) -> None:
        """Write the recall counts still gathered."""
        await self._access.aclose()

    async def _spec(self) -> CollectionSpec:
        try:
            spec = await self._catalog.get(self.collection)
        except NotFound:
            raise NotFound(
                f"memory collection {self.collection!r} does not exist: run "
                "dl.memory.setup(dimension=...) once (as the owner) to make it",
                entity="collection",
                key=self.collection,
            ) from None
        return spec

    def _opened(self, spec: CollectionSpec, row: dict[str, Any]) -> dict[str, Any]:
        return self._db.cipher.open_row(self.tenant, spec.table, row, COLLECTION_COLUMNS)

    @property
    def embedder(self) -> Embedder | None:
        """The text embedder of this memory (given here, or to ``setup``), if any."""
        return self._embedder or self._catalog.embedders.get(self.collection)

    def _embedder_or_fail(self) -> Embedder:
        embedder = self.embedder
        if embedder is None:
            raise ValidationError(
                f"remembering or recalling a text needs an embedder and memory collection "
                f"{self.collection!r} has none here: pass embedder= to dl.memory.setup, or use "
                "memory.with_embedder(model); or pass a vector",
                field="embedder",
            )
        return embedder

    async def _embed(self, text: str, spec: CollectionSpec) -> npt.NDArray[np.float32]:
        matrix = await self._embedder_or_fail().documents([text], spec.dimension)
        row: npt.NDArray[np.float32] = matrix[0]
        return row

    async def _content(
        self, content: Any, text: str | None, spec: CollectionSpec
    ) -> tuple[npt.NDArray[np.float32], str | None]:
        if isinstance(content, str):
            if text is not None:
                raise ValidationError(
                    "text= goes with a vector: the content is already a text", field="text"
                )
            said = check_label(content, "content", MAX_TEXT)
            return directed(await self._embed(said, spec), "content", embedded=True), said
        words = None if text is None else check_text(text, "text", max_length=MAX_TEXT)
        vector = as_vector(content, spec.dimension, spec.storage, where="content")
        return directed(vector, "content"), words

    async def _query(self, query: Any, spec: CollectionSpec) -> npt.NDArray[np.float32]:
        if isinstance(query, str):
            check_label(query, "query", MAX_TEXT)
            vector = await self._embedder_or_fail().query(query, spec.dimension)
            return directed(vector, "query", embedded=True)
        return directed(as_vector(query, spec.dimension, spec.storage, where="query"), "query")

    async def _create(
        self,
        spec: CollectionSpec,
        agent: str | None,
        vector: npt.NDArray[np.float32],
        text: str | None,
        kind: str,
        importance: float,
        metadata: dict[str, Any],
        subject: str | None,
        at: datetime | None,
    ) -> Remembered:
        memory_id = str(uuid.uuid4())
        params = {
            "tenant": self.tenant,
            "id": memory_id,
            "collection": self.collection,
            "agent": agent,
            "kind": kind,
            "subject": subject,
            "importance": importance,
            "at": at,
            "embedding": vector,
            **await self._sealed(spec, memory_id, 1, text, metadata, vector),
        }
        await self._db.execute(_sql.create_sql(spec.table), params)
        return Remembered(id=memory_id, event="created", version=1)

    async def _sealed(
        self,
        spec: CollectionSpec,
        memory_id: str,
        version: int,
        text: str | None,
        metadata: dict[str, Any],
        vector: npt.NDArray[np.float32] | None,
    ) -> dict[str, Any]:
        """The collection row's and the version's text and metadata as stored: sealed when the
        collection's are (encryption.fields), each bound to its own row."""
        cipher = self._db.cipher
        key = history_key(memory_id, version)
        content, version_text = text, text
        meta: Any = metadata
        version_meta: Any = metadata
        seal_text, seal_metadata = (
            text is not None and self._seals("content"),
            self._seals("metadata"),
        )
        if seal_text or seal_metadata:
            await cipher.ensure(self.tenant)
        if seal_text:
            content = cipher.seal(self.tenant, spec.table, "content", memory_id, text, text=True)
            version_text = cipher.seal(self.tenant, "memory_history", "text", key, text, text=True)
        if seal_metadata:
            meta = cipher.seal(self.tenant, spec.table, "metadata", memory_id, metadata)
            version_meta = cipher.seal(self.tenant, "memory_history", "metadata", key, metadata)
        return {
            "vector": None if vector is None else vector_param(vector, spec),
            "content": content,
            "metadata": as_jsonb(meta),
            "text": version_text,
            "version_metadata": as_jsonb(version_meta),
        }

    def _seals(self, column: str) -> bool:
        cipher = self._db.cipher
        return cipher.chosen("embeddings", column) or cipher.chosen(self.collection, column)

    def _opened_version(
        self, row: dict[str, Any], text: str = "text", id_column: str = "memory_id"
    ) -> dict[str, Any]:
        # A version's sealed text and metadata opened (``text``: the column holding its text).
        cipher = self._db.cipher
        key = history_key(row[id_column], row["version"])
        opened = dict(row)
        for column, stored in (("text", text), ("metadata", "metadata")):
            if sealed_key(row.get(stored)) is not None:
                opened[stored] = cipher.open(
                    self.tenant, "memory_history", column, key, row[stored]
                )
        return opened

    async def _select(self, **criteria: Any) -> builtins.list[MemoryRecord]:
        spec = await self._spec()
        query, params = _sql.select_sql(spec, self.tenant, self.collection, **criteria)
        with translate_errors("reading memories"):
            rows = await self._db.fetch(query, params)
        return [memory_record(self._read(spec, row)) for row in rows]

    def _read(self, spec: CollectionSpec, row: dict[str, Any]) -> dict[str, Any]:
        if row.get("last_version") is None:
            return self._opened(spec, row)
        last = self._opened_version(
            {
                "memory_id": row["id"],
                "version": row["last_version"],
                "text": row["last_text"],
                "metadata": row["last_metadata"],
            }
        )
        return {**row, "content": last["text"], "metadata": last["metadata"]}

    async def _forget_rows(
        self,
        spec: CollectionSpec,
        rows: builtins.list[dict[str, Any]],
        *,
        hard: bool,
        event: Literal["forgotten", "consolidated"] = "forgotten",
        into: str | None = None,
    ) -> int:
        ids = [row["id"] for row in rows]
        if not ids:
            return 0
        if hard:
            return await erase_memories(self._db, self._catalog, self.tenant, ids)
        return await self._db.execute(
            _sql.forget_sql(spec.table),
            {"tenant": self.tenant, "ids": ids, "into": into, "event": event},
        )
