"""A LangChain ``ByteStore`` in PostgreSQL: bytes under string keys, per tenant and namespace.

Usage::

    docstore = AgencyByteStore(dl.tenant("acme"), namespace="parents")
    retriever = ParentDocumentRetriever(vectorstore=store, docstore=create_kv_docstore(docstore),
                                        child_splitter=splitter)
    cached = CacheBackedEmbeddings.from_bytes_store(model, AgencyByteStore(dl, namespace="emb"))

Values are durable (unlike a cache's): table ``kv_items`` (migration 0014), under row-level
security, so a store made from ``dl.tenant("a")`` reads and writes only tenant a's keys. Each
call is one statement: ``mget``/``mdelete`` by ``= ANY(keys)``, ``mset`` as one upsert of
arrays, ``yield_keys`` in key order, a page at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.stores import ByteStore

from agency_data.errors import ValidationError
from agency_data.inputs import as_items, brief, check_text
from agency_data.integrations.bridge import reach
from agency_data.postgres.database import Database
from agency_data.scope import QueryMethods, database_of
from agency_data.sync.portal import Portal

__all__ = ["AgencyByteStore"]

# In bytes of UTF-8: with the tenant and namespace, a key fits the primary key's index entry.
MAX_KEY_BYTES = 1024
_PAGE = 1000
_GET = (
    "SELECT key, value FROM kv_items WHERE tenant_id = agency_data_current_tenant() "
    "AND namespace = %s AND key = ANY(%s)"
)
_SET = (
    "INSERT INTO kv_items AS t (tenant_id, namespace, key, value) "
    "SELECT agency_data_current_tenant(), %s, k, v FROM unnest(%s::text[], %s::bytea[]) AS i(k, v) "
    "ON CONFLICT (tenant_id, namespace, key) "
    "DO UPDATE SET value = excluded.value, updated_at = clock_timestamp()"
)
_DELETE = (
    "DELETE FROM kv_items WHERE tenant_id = agency_data_current_tenant() "
    "AND namespace = %s AND key = ANY(%s)"
)
_KEYS = (
    "SELECT key FROM kv_items WHERE tenant_id = agency_data_current_tenant() "
    "AND namespace = %s AND key LIKE %s AND key > %s ORDER BY key LIMIT %s"
)


class AgencyByteStore(ByteStore):
    """LangChain's ``ByteStore`` on agency-data (see the module's docstring); ``layer`` is a
    DataLayer or a tenant's view, of the async layer or of the sync front end."""

    def __init__(
        self, layer: Any, *, namespace: str = "default", portal: Portal | None = None
    ) -> None:
        scope, self._portal = reach(
            layer, QueryMethods, "layer", portal, what="DataLayer or tenant view"
        )
        self._db: Database = database_of(scope)
        self.namespace = check_text(namespace, "namespace", max_length=200, max_bytes=200)
        if not namespace:
            raise ValidationError("namespace must not be empty", field="namespace")

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys``, in order (None for a key that has none)."""
        return self._portal.call(self._get(keys))

    async def amget(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys``, in order (None for a key that has none)."""
        return await self._portal.acall(self._get(keys))

    def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        """Set each key's value (the last one given, if a key appears twice), all or none."""
        self._portal.call(self._set(key_value_pairs))

    async def amset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        """Set each key's value (the last one given, if a key appears twice), all or none."""
        await self._portal.acall(self._set(key_value_pairs))

    def mdelete(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` (those that have no value are skipped)."""
        self._portal.call(self._delete(keys))

    async def amdelete(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` (those that have no value are skipped)."""
        await self._portal.acall(self._delete(keys))

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        """Every key (starting with ``prefix``, if given), in key order."""
        # The async iterator, stepped on the loop (where its pages need no hop).
        return self._portal.iterate(self.ayield_keys(prefix=prefix))

    async def ayield_keys(self, *, prefix: str | None = None) -> AsyncIterator[str]:
        """Every key (starting with ``prefix``, if given), in key order."""
        after = ""
        while True:
            page = await self._portal.acall(self._page(prefix, after))
            for key in page:
                yield key
            if len(page) < _PAGE:
                return
            after = page[-1]

    async def _get(self, keys: Sequence[str]) -> list[bytes | None]:
        wanted = _keys(keys, "keys")
        if not wanted:
            return []
        rows = await self._db.fetch(_GET, [self.namespace, list(set(wanted))])
        found = {row["key"]: bytes(row["value"]) for row in rows}
        return [found.get(key) for key in wanted]

    async def _set(self, pairs: Sequence[tuple[str, bytes]]) -> None:
        latest: dict[str, bytes] = {}
        for n, pair in enumerate(as_items(pairs, "key_value_pairs")):
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise ValidationError(
                    f"key_value_pairs[{n}] must be a (key, value) pair, not {brief(pair)}",
                    field=f"key_value_pairs[{n}]",
                )
            key = _key(pair[0], f"key_value_pairs[{n}][0]")
            value = pair[1]
            if not isinstance(value, bytes | bytearray | memoryview):
                raise ValidationError(
                    f"key_value_pairs[{n}][1] must be bytes, not {brief(value)}",
                    field=f"key_value_pairs[{n}][1]",
                )
            latest[key] = bytes(value)
        if latest:
            # In key order: two writers of the same keys lock their rows in the same order
            # (given in different orders, they could each wait for the other).
            keys = sorted(latest)
            await self._db.execute(_SET, [self.namespace, keys, [latest[k] for k in keys]])

    async def _delete(self, keys: Sequence[str]) -> None:
        doomed = _keys(keys, "keys")
        if doomed:
            await self._db.execute(_DELETE, [self.namespace, doomed])

    async def _page(self, prefix: str | None, after: str) -> list[str]:
        if prefix is not None:
            check_text(prefix, "prefix", max_length=MAX_KEY_BYTES, max_bytes=MAX_KEY_BYTES)
        pattern = _escaped(prefix or "") + "%"
        rows = await self._db.fetch(_KEYS, [self.namespace, pattern, after, _PAGE])
        return [row["key"] for row in rows]


def _keys(keys: Any, field: str) -> list[str]:
    return [_key(key, f"{field}[{n}]") for n, key in enumerate(as_items(keys, field))]


def _key(key: Any, field: str) -> str:
    check_text(key, field, max_length=MAX_KEY_BYTES, max_bytes=MAX_KEY_BYTES)
    if not key:
        raise ValidationError(f"{field} must not be empty", field=field)
    return str(key)


def _escaped(prefix: str) -> str:
    # LIKE's wildcards and its escape character, taken literally.
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
