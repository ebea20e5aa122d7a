"""Keeping agent memory small: consolidation into summaries, and pruning by policy."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from datetime import timedelta

import numpy as np
import numpy.typing as npt
from psycopg import sql

from agency_data.errors import NotFound, ValidationError
from agency_data.inputs import (
    brief,
    check_bool,
    check_callable,
    check_int,
    check_number,
    check_text,
)
from agency_data.memory import _sql
from agency_data.memory._base import MemoryBase
from agency_data.memory._checks import (
    MAX_TEXT,
    check_agent,
    check_kind,
    check_memory_id,
    memory_record,
    seconds,
)
from agency_data.memory.models import MemoryRecord, Remembered
from agency_data.observability import observed
from agency_data.postgres.errors import translate_errors
from agency_data.vectors.catalog import CollectionSpec
from agency_data.vectors.compat import vector_to_list

__all__ = ["Summariser", "Upkeep"]

Summariser = Callable[[list[MemoryRecord]], str | Awaitable[str]]


class Upkeep(MemoryBase):
    """Consolidation and pruning of a tenant's memories."""

    @observed("memory.consolidate")
    async def consolidate(
        self,
        agent_id: str | None,
        summarise: Summariser,
        *,
        older_than: float | timedelta = 7 * 86_400.0,
        max_importance: float = 0.3,
        min_group: int = 2,
        kind: str = "summary",
    ) -> list[Remembered]:
        """Replace each subject's old, unimportant memories of ``agent_id`` by one summary.

        Memories that happened more than ``older_than`` ago with importance at most
        ``max_importance`` are grouped by subject (those without one form a group); a group
        of ``min_group`` or more goes to ``summarise`` (any callable, plain or async, taking
        the memories oldest first and returning the summary's text; nothing here calls a
        model by itself). The summary is remembered as a memory of ``kind`` with the group's
        subject, highest importance and latest time; the memories it replaced are forgotten
        with ``consolidated_into`` naming it, and :meth:`replaced` lists them. The summary is
        embedded by the memory's embedder, or, without one, placed at the normalised mean of
        the vectors it replaces. A group that changed while it was being summarised is left
        for the next run.
        """
        agent = check_agent(agent_id)
        check_callable(summarise, "summarise")
        age = seconds(older_than, "older_than")
        ceiling = check_number(max_importance, "max_importance", low=0.0, high=1.0)
        smallest = check_int(min_group, "min_group", 2, 10_000)
        kind = check_kind(kind)
        spec = await self._spec()
        query, params = _sql.consolidation_sql(
            spec, self.tenant, self.collection, agent, ceiling, age
        )
        with translate_errors("choosing memories to consolidate"):
            rows = await self._db.fetch(query, params)
        groups: dict[str | None, list[MemoryRecord]] = {}
        for row in rows:
            record = memory_record(self._opened(spec, row))
            groups.setdefault(record.subject, []).append(record)
        made = []
        for subject, members in groups.items():
            if len(members) < smallest:
                continue
            summary = await _summary(summarise, members)
            done = await self._replace(spec, agent, subject, members, summary, kind)
            if done is not None:
                made.append(done)
        return made

    async def _replace(
        self,
        spec: CollectionSpec,
        agent: str | None,
        subject: str | None,
        members: list[MemoryRecord],
        summary: str,
        kind: str,
    ) -> Remembered | None:
        ids = [m.id for m in members]
        vector = await self._summary_vector(summary, spec, ids)
        async with self._db.transaction():
            with translate_errors("consolidating"):
                rows = await self._db.fetch(
                    "SELECT id, version FROM memories WHERE tenant_id = %s AND id = ANY(%s) "
                    "AND forgotten_at IS NULL ORDER BY id FOR UPDATE",
                    [self.tenant, ids],
                )
                if {(r["id"], r["version"]) for r in rows} != {(m.id, m.version) for m in members}:
                    return None
                made = await self._create(
                    spec,
                    agent,
                    vector,
                    summary,
                    kind,
                    max(m.importance for m in members),
                    {"consolidated": len(members)},
                    subject,
                    max(m.happened_at for m in members),
                )
                await self._db.execute(
                    "INSERT INTO memory_links (tenant_id, summary_id, replaced_id) "
                    "SELECT %s, %s, unnest(%s::text[])",
                    [self.tenant, made.id, ids],
                )
                await self._forget_rows(spec, rows, hard=False, event="consolidated", into=made.id)
        return made

    async def _summary_vector(
        self, summary: str, spec: CollectionSpec, ids: list[str]
    ) -> npt.NDArray[np.float32]:
        if self.embedder is not None:
            return await self._embed(summary, spec)
        # Memories remembered as vectors: the summary sits at their normalised mean, or, when
        # they cancel out (a mean without direction would match nothing), at the newest's.
        rows = await self._db.fetch(
            sql.SQL(
                "SELECT e.vector FROM {} e JOIN memories m ON m.tenant_id = e.tenant_id "
                "AND m.id = e.id WHERE e.tenant_id = %s AND e.id = ANY(%s) "
                "ORDER BY m.happened_at DESC, m.id"
            ).format(spec.table_id),
            [self.tenant, ids],
        )
        vectors = np.asarray([vector_to_list(r["vector"]) for r in rows], np.float64)
        mean = vectors.mean(axis=0)
        norm = float(np.linalg.norm(mean))
        if norm < 1e-6 * float(np.linalg.norm(vectors, axis=1).max()):
            mean, norm = vectors[0], float(np.linalg.norm(vectors[0]))
        return np.asarray(mean / norm, np.float32)

    @observed("memory.replaced")
    async def replaced(self, summary_id: str) -> list[MemoryRecord]:
        """The memories a consolidation summary replaced, oldest first, each with the text it
        had; :class:`NotFound` if there is no memory ``summary_id``."""
        wanted = check_memory_id(summary_id)
        with translate_errors("reading a summary's links"):
            rows = await self._db.fetch(
                "SELECT l.replaced_id FROM memories s LEFT JOIN memory_links l "
                "ON l.tenant_id = s.tenant_id AND l.summary_id = s.id "
                "WHERE s.tenant_id = %s AND s.id = %s",
                [self.tenant, wanted],
            )
        if not rows:
            raise NotFound(f"memory {wanted!r} does not exist", entity="memory", key=wanted)
        replaced = [r["replaced_id"] for r in rows if r["replaced_id"] is not None]
        found = await self._select(ids=replaced, forgotten=True) if replaced else []
        return sorted(found, key=lambda m: (m.happened_at, m.id))

    @observed("memory.prune")
    async def prune(
        self,
        agent_id: str | None = None,
        *,
        older_than: float | timedelta | None = None,
        below_importance: float | None = None,
        keep: int | None = None,
        hard: bool = False,
    ) -> int:
        """Forget memories by policy; return how many.

        A memory goes when it is older than ``older_than`` and less important than
        ``below_importance`` (those given), or when its agent has more than ``keep`` live
        memories and it is not among the ``keep`` most important (newest first among equals).
        ``agent_id`` None: every agent's. ``hard`` deletes them as :meth:`forget` does.
        """
        agent = check_agent(agent_id)
        age = None if older_than is None else seconds(older_than, "older_than")
        floor = (
            None
            if below_importance is None
            else check_number(below_importance, "below_importance", low=0.0, high=1.0)
        )
        most = None if keep is None else check_int(keep, "keep", 0, 10**9)
        check_bool(hard, "hard")
        if age is None and floor is None and most is None:
            raise ValidationError(
                "prune needs older_than, below_importance or keep", field="older_than"
            )
        spec = await self._spec()
        query, params = _sql.prune_sql(self.tenant, self.collection, agent, age, floor, most)
        async with self._db.transaction():
            with translate_errors("pruning memories"):
                rows = await self._db.fetch(query, params)
                return await self._forget_rows(spec, rows, hard=hard)


async def _summary(summarise: Summariser, members: list[MemoryRecord]) -> str:
    made = summarise(list(members))
    if inspect.isawaitable(made):
        made = await made
    if not isinstance(made, str) or not made.strip():
        raise ValidationError(
            f"summarise must return the summary's text, not {brief(made)}", field="summarise"
        )
    return check_text(made, "summary", max_length=MAX_TEXT)
