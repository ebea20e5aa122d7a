"""LangGraph's checkpointer on agency-data: :class:`AgencyCheckpointSaver`.

Usage::

    from agency_data.integrations.langgraph import AgencyCheckpointSaver

    async with DataLayer() as dl:
        saver = AgencyCheckpointSaver(dl.tenant("acme"))     # inside the layer's event loop
        graph = builder.compile(checkpointer=saver)
        await graph.ainvoke(inputs, {"configurable": {"thread_id": "conversation-1"}})

The checkpoints live in agency-data's schema (migration 0012), reached through the layer's
pool, so tenancy (row-level security), error translation and metrics apply: a saver
built from ``dl.tenant("a")`` sees only tenant a's threads. Every write is one statement,
atomic on its own. Values go through LangGraph's serializer (``serde``, JsonPlusSerializer by
default, or an EncryptedSerializer), as with LangGraph's own PostgresSaver.

The synchronous methods (``get_tuple``, ``list``, ``put``...) run the async ones on the
layer's event loop through a :class:`~agency_data.sync.Portal`: call them from other threads
(a sync graph in a worker thread); on the loop's own thread they raise :class:`UsageError`,
as LangGraph's AsyncPostgresSaver refuses them there.
"""

from __future__ import annotations

import builtins
import random
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Collection,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from agency_data.errors import Conflict, ValidationError
from agency_data.inputs import as_items, brief, check_choice, check_text
from agency_data.integrations.bridge import reach
from agency_data.integrations.langgraph import _codec, _inputs, _sql
from agency_data.manager import DataLayer
from agency_data.models import DEFAULT_TENANT
from agency_data.observability import observed
from agency_data.postgres.database import Database
from agency_data.scope import QueryMethods, TenantScope, database_of
from agency_data.sync.portal import Portal

__all__ = ["AgencyCheckpointSaver"]

T = TypeVar("T")

# Checkpoints a listing reads per round trip: few enough to hold their values in memory.
_PAGE = 50


class AgencyCheckpointSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpointer storing threads in agency-data's PostgreSQL, per tenant.

    ``source``: a connected :class:`DataLayer` (its default tenant) or a tenant's view
    (``dl.tenant("acme")``). ``portal``: how the sync methods reach the layer's loop; by
    default the loop running when the saver is built (build it inside async code), or the
    portal of a synchronous front end that owns the loop. ``serde``: LangGraph's serializer.
    """

    def __init__(
        self,
        source: DataLayer | TenantScope,
        *,
        portal: Portal | None = None,
        serde: SerializerProtocol | None = None,
    ) -> None:
        if serde is not None and not (
            callable(getattr(serde, "dumps_typed", None)) or callable(getattr(serde, "dumps", None))
        ):
            raise ValidationError(
                f"serde must be a LangGraph serializer (with dumps_typed and loads_typed), "
                f"not {brief(serde)}",
                field="serde",
            )
        super().__init__(serde=serde)
        inner, self._portal = reach(
            source, QueryMethods, "source", portal, what="DataLayer or tenant view"
        )
        scope: TenantScope = inner.tenant(DEFAULT_TENANT) if isinstance(inner, DataLayer) else inner
        self.tenant_id = scope.tenant_id
        self._db: Database = database_of(scope)
        self._telemetry = self._db.telemetry
        self._max_json = self._db.config.max_json_bytes

    # -- async: LangGraph's interface ----------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its ``checkpoint_id``, else the thread's latest in
        its namespace) with its values and pending writes, or None."""
        thread, ns, checkpoint_id = _inputs.address(config, "config")
        return await self._portal.acall(self._get_tuple(thread, ns, checkpoint_id))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """The checkpoints of ``config``'s thread (every thread when None), newest first:
        those whose metadata contains ``filter``, older than ``before``, at most ``limit``."""
        listing = self._listing(config, filter, before, limit)
        if self._portal.on_loop:
            async for item in listing:
                yield item
            return
        # Another loop's caller: each step runs on the layer's loop.
        try:
            while True:
                try:
                    item = await self._portal.acall(_next(listing))
                except StopAsyncIteration:
                    return
                yield item
        finally:
            await self._portal.acall(listing.aclose())

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store ``checkpoint`` (child of ``config``'s checkpoint, if it names one) with its
        metadata and the values of the channels in ``new_versions``; its config."""
        thread, ns, parent = _inputs.address(config, "config")
        new = _inputs.new_checkpoint(config, checkpoint, metadata, new_versions, self._max_json)
        statement = _sql.put_checkpoint(
            self.tenant_id,
            thread,
            ns,
            new.checkpoint_id,
            parent,
            new.run_id,
            new.body,
            new.metadata,
            new.versions_json,
            _codec.blobs(self.serde, new.values, new.versions),
        )
        await self._portal.acall(self._put(statement))
        return {
            "configurable": {
                "thread_id": thread,
                "checkpoint_ns": ns,
                "checkpoint_id": new.checkpoint_id,
            }
        }

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's ``writes`` (channel, value pairs) against ``config``'s checkpoint."""
        thread, ns, checkpoint_id = _inputs.address(config, "config")
        if checkpoint_id is None:
            raise ValidationError(
                "config names no checkpoint_id: writes belong to a stored checkpoint; pass "
                "the config aput returned",
                field="config.configurable.checkpoint_id",
            )
        task = _inputs.text(task_id, "task_id", _inputs.MAX_ID)
        path = check_text(task_path, "task_path", max_length=_inputs.MAX_NS)
        rows = _codec.write_rows(self.serde, _inputs.writes(writes))
        if not rows:
            return
        statement = _sql.put_writes(self.tenant_id, thread, ns, checkpoint_id, task, path, rows)
        await self._portal.acall(self._put_writes(statement))

    async def adelete_thread(self, thread_id: str) -> None:
        """Remove every checkpoint, value and write of ``thread_id`` (of every namespace)."""
        statement = _sql.delete_threads(self.tenant_id, [_inputs.thread_id(thread_id, "thread_id")])
        await self._portal.acall(self._delete_thread(statement))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Remove the checkpoints the runs ``run_ids`` made (``metadata["run_id"]``), with
        their writes and the values no other checkpoint uses."""
        runs = [
            _inputs.run_id(run, f"run_ids[{i}]")
            for i, run in enumerate(as_items(run_ids, "run_ids"))
        ]
        if runs:
            statement = _sql.delete_runs(self.tenant_id, runs)
            await self._portal.acall(self._delete_runs(statement))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, value and write of one thread to another, which must have
        no checkpoints yet (:class:`Conflict` otherwise); a thread with none copies nothing."""
        source = _inputs.thread_id(source_thread_id, "source_thread_id")
        target = _inputs.thread_id(target_thread_id, "target_thread_id")
        if source == target:
            raise ValidationError(
                "source_thread_id and target_thread_id are the same thread; copy to a new one",
                field="target_thread_id",
            )
        await self._portal.acall(self._copy(source, target))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Shrink ``thread_ids``: ``"keep_latest"`` keeps the latest checkpoint of each
        namespace (with the ancestors its delta channels are rebuilt from); ``"delete"``
        removes the threads."""
        threads = [
            _inputs.thread_id(thread, f"thread_ids[{i}]")
            for i, thread in enumerate(as_items(thread_ids, "thread_ids"))
        ]
        check_choice(strategy, "strategy", _inputs.STRATEGIES)
        if not threads:
            return
        if strategy == "delete":
            statement = _sql.delete_threads(self.tenant_id, threads)
        else:
            statement = _sql.prune_keep_latest(self.tenant_id, threads)
        await self._portal.acall(self._prune(statement))

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """What LangGraph rebuilds a delta channel from: for each of ``channels``, the writes
        of ``config``'s checkpoint's ancestors since the nearest one holding its value."""
        _inputs.address(config, "config")
        names = _inputs.channel_names(channels)
        return await super().aget_delta_channel_history(config=config, channels=names)

    def get_next_version(self, current: str | None, channel: None) -> str:
        """The version after ``current``: an increasing counter with a random tail, so that
        two forks of a thread never give the same version to different values."""
        return _inputs.next_version(current, random.random())

    def with_allowlist(
        self, extra_allowlist: Collection[tuple[str, ...]]
    ) -> BaseCheckpointSaver[str]:
        """This saver with more classes its serde may read back (module path tuples, or
        classes): a shallow copy sharing the layer and portal."""
        return super().with_allowlist(_inputs.allowlist(extra_allowlist))

    # -- sync: the same, run on the layer's loop from another thread --------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """:meth:`aget_tuple`, from a thread other than the layer's loop."""
        return self._call(self.aget_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """:meth:`alist`, from a thread other than the layer's loop."""
        if self._portal.on_loop:
            self._call(_nothing())  # refused, with the portal's explanation
        return self._portal.iterate(self.alist(config, filter=filter, before=before, limit=limit))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """:meth:`aput`, from a thread other than the layer's loop."""
        return self._call(self.aput(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """:meth:`aput_writes`, from a thread other than the layer's loop."""
        self._call(self.aput_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        """:meth:`adelete_thread`, from a thread other than the layer's loop."""
        self._call(self.adelete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """:meth:`adelete_for_runs`, from a thread other than the layer's loop."""
        self._call(self.adelete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """:meth:`acopy_thread`, from a thread other than the layer's loop."""
        self._call(self.acopy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """:meth:`aprune`, from a thread other than the layer's loop."""
        self._call(self.aprune(thread_ids, strategy=strategy))

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """:meth:`aget_delta_channel_history`, from a thread other than the layer's loop."""
        return self._call(self.aget_delta_channel_history(config=config, channels=channels))

    # -- the work, on the layer's loop ---------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._portal.call(coro)

    @observed("checkpoints.get")
    async def _get_tuple(
        self, thread: str, ns: str, checkpoint_id: str | None
    ) -> CheckpointTuple | None:
        query, params = _sql.get_tuple(self.tenant_id, thread, ns, checkpoint_id)
        # Binary rows: values and writes are bytea, several times cheaper to read so.
        row = await self._db.fetch_one(query, params, binary=True)
        return None if row is None else _codec.load(self.serde, row)

    async def _listing(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> AsyncGenerator[CheckpointTuple, None]:
        where = _inputs.listing(config, filter, before, limit, self._max_json)
        left = where.limit
        after: _sql.Position | None = None
        while left is None or left > 0:
            size = _PAGE if left is None else min(left, _PAGE)
            page = await self._page(
                _sql.list_page(
                    self.tenant_id,
                    thread=where.thread,
                    ns=where.ns,
                    checkpoint_id=where.checkpoint_id,
                    metadata=where.metadata,
                    before=where.before,
                    after=after,
                    size=size,
                )
            )
            for row in page:
                yield _codec.load(self.serde, row)
            if len(page) < size:
                return
            last = page[-1]
            after = (last["checkpoint_id"], last["thread_id"], last["checkpoint_ns"])
            if left is not None:
                left -= len(page)

    @observed("checkpoints.list")
    async def _page(self, statement: _sql.Statement) -> builtins.list[dict[str, Any]]:
        return await self._db.fetch(*statement, binary=True)

    # One timed operation per kind of write, each a single statement.
    @observed("checkpoints.put")
    async def _put(self, statement: _sql.Statement) -> None:
        await self._db.execute(*statement)

    @observed("checkpoints.put_writes")
    async def _put_writes(self, statement: _sql.Statement) -> None:
        await self._db.execute(*statement)

    @observed("checkpoints.delete_thread")
    async def _delete_thread(self, statement: _sql.Statement) -> None:
        await self._db.execute(*statement)

    @observed("checkpoints.delete_for_runs")
    async def _delete_runs(self, statement: _sql.Statement) -> None:
        await self._db.execute(*statement)

    @observed("checkpoints.prune")
    async def _prune(self, statement: _sql.Statement) -> None:
        await self._db.execute(*statement)

    @observed("checkpoints.copy_thread")
    async def _copy(self, source: str, target: str) -> None:
        used = await self._db.fetch_value(*_sql.copy_thread(self.tenant_id, source, target))
        if used:
            raise Conflict(
                f"thread {target!r} has checkpoints already, so nothing was copied into it; "
                "delete it first (delete_thread) or copy to a new thread id",
                field="target_thread_id",
            )


async def _next(items: AsyncIterator[T]) -> T:
    return await anext(items)


async def _nothing() -> None:
    return None
