"""LangGraph's checkpointer on agency-data: :class:`AgencyCheckpointSaver`.

Usage::

    from agency_data.integrations.langgraph import AgencyCheckpointSaver

    async with DataLayer() as dl:
        saver = AgencyCheckpointSaver(dl.tenant("acme"))     # inside the layer's event loop
        graph = builder.compile(checkpointer=saver)
        await graph.ainvoke(inputs, {"configurable": {"thread_id": "conversation-1"}})

The checkpoints live in agency-data's schema (migration 0012), reached through the layer's
pool, so tenancy (row-level security), retries, error translation and metrics apply: a saver
built from ``dl.tenant("a")`` sees only tenant a's threads. Every write is one statement,
atomic on its own. Values go through LangGraph's serializer (``serde``, JsonPlusSerializer by
default, or an EncryptedSerializer), as with LangGraph's own PostgresSaver.

The synchronous methods (``get_tuple``, ``list``, ``put``...) run the async ones on the
layer's event loop through a :class:`~agency_data.sync.Portal`: call them from other threads
(a sync graph in a worker thread); on the loop's own thread they raise :class:`UsageError`,
as LangGraph's AsyncPostgresSaver refuses them there.
"""

from __future__ import annotations

import asyncio
import builtins
import random
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from uuid import UUID

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from agency_data.errors import AgencyDataError, Conflict, UsageError, ValidationError
from agency_data.inputs import as_items, brief, check_choice, check_int, check_text, encode_json
from agency_data.integrations.langgraph import _sql
from agency_data.manager import DataLayer
from agency_data.models import DEFAULT_TENANT
from agency_data.observability import observed
from agency_data.postgres.database import Database
from agency_data.scope import TenantScope
from agency_data.sync.portal import Portal

__all__ = ["AgencyCheckpointSaver"]

T = TypeVar("T")

# Longest ids accepted: together they fit a primary key's index entry (about 2,700 bytes).
_MAX_THREAD = 512
_MAX_NS = 1024
_MAX_ID = 256
_MAX_CHANNEL = 512
# Checkpoints a listing reads per round trip: few enough to hold their values in memory.
_PAGE = 50
_STRATEGIES = ("keep_latest", "delete")


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
        if isinstance(source, DataLayer):
            scope = source.tenant(DEFAULT_TENANT)
        elif isinstance(source, TenantScope):
            scope = source
        else:
            raise ValidationError(
                "source must be a connected DataLayer or a tenant's view (dl.tenant(...)), "
                f"not {brief(source)}",
                field="source",
            )
        if portal is None:
            try:
                portal = Portal.of(asyncio.get_running_loop())
            except RuntimeError:
                raise UsageError(
                    "build the checkpointer inside async code, on the event loop the "
                    "DataLayer runs on (its sync methods then work from other threads), or "
                    "pass portal= the Portal of a synchronous front end that owns that loop"
                ) from None
        elif not isinstance(portal, Portal):
            raise ValidationError(
                f"portal must be an agency_data.sync.Portal, not {brief(portal)}", field="portal"
            )
        self._portal = portal
        self.tenant_id = scope.tenant_id
        # The scope's own database view (not the raw one its query methods use): statements
        # of the library's own, whose connections need no reset before reuse.
        self._db: Database = scope._database()
        self._telemetry = self._db.telemetry
        self._max_json = self._db.config.max_json_bytes

    # -- async: LangGraph's interface ----------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its ``checkpoint_id``, else the thread's latest in
        its namespace) with its values and pending writes, or None."""
        thread, ns, checkpoint_id = _address(config, "config")
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
        thread, ns, parent = _address(config, "config")
        statement, checkpoint_id = self._put_statement(
            config, thread, ns, parent, checkpoint, metadata, new_versions
        )
        await self._portal.acall(self._put(statement))
        return {
            "configurable": {
                "thread_id": thread,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint_id,
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
        thread, ns, checkpoint_id = _address(config, "config")
        if checkpoint_id is None:
            raise ValidationError(
                "config names no checkpoint_id: writes belong to a stored checkpoint; pass "
                "the config aput returned",
                field="config.configurable.checkpoint_id",
            )
        task = _text(task_id, "task_id", _MAX_ID)
        path = check_text(task_path, "task_path", max_length=_MAX_NS)
        rows = self._write_rows(writes)
        if not rows:
            return
        statement = _sql.put_writes(self.tenant_id, thread, ns, checkpoint_id, task, path, rows)
        await self._portal.acall(self._put_writes(statement))

    async def adelete_thread(self, thread_id: str) -> None:
        """Remove every checkpoint, value and write of ``thread_id`` (of every namespace)."""
        statement = _sql.delete_threads(self.tenant_id, [_thread(thread_id, "thread_id")])
        await self._portal.acall(self._delete_thread(statement))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Remove the checkpoints the runs ``run_ids`` made (``metadata["run_id"]``), with
        their writes and the values no other checkpoint uses."""
        runs = [_run_id(run, f"run_ids[{i}]") for i, run in enumerate(as_items(run_ids, "run_ids"))]
        if runs:
            statement = _sql.delete_runs(self.tenant_id, runs)
            await self._portal.acall(self._delete_runs(statement))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, value and write of one thread to another, which must have
        no checkpoints yet (:class:`Conflict` otherwise); a thread with none copies nothing."""
        source = _thread(source_thread_id, "source_thread_id")
        target = _thread(target_thread_id, "target_thread_id")
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
            _thread(thread, f"thread_ids[{i}]")
            for i, thread in enumerate(as_items(thread_ids, "thread_ids"))
        ]
        check_choice(strategy, "strategy", _STRATEGIES)
        if not threads:
            return
        if strategy == "delete":
            statement = _sql.delete_threads(self.tenant_id, threads)
        else:
            statement = _sql.prune_keep_latest(self.tenant_id, threads)
        await self._portal.acall(self._prune(statement))

    def get_next_version(self, current: str | None, channel: None) -> str:
        """The version after ``current``: an increasing counter with a random tail, so that
        two forks of a thread never give the same version to different values."""
        if current is None:
            number = 0
        elif isinstance(current, int):
            number = current
        else:
            number = int(str(current).split(".")[0])
        return f"{number + 1:032}.{random.random():016}"

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

    # -- the work, on the layer's loop ---------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._portal.call(coro)

    @observed("checkpoints.get")
    async def _get_tuple(
        self, thread: str, ns: str, checkpoint_id: str | None
    ) -> CheckpointTuple | None:
        query, params = _sql.get_tuple(self.tenant_id, thread, ns, checkpoint_id)
        row = await self._db.fetch_one(query, params)
        return None if row is None else self._load(row)

    async def _listing(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> AsyncGenerator[CheckpointTuple, None]:
        if config is None:
            thread = ns = checkpoint_id = None
        else:
            thread, ns, checkpoint_id = _parts(config, "config")
        metadata = None
        if filter is not None:
            if not isinstance(filter, Mapping):
                raise ValidationError(
                    f"filter must be a dict of metadata values, not {brief(filter)}",
                    field="filter",
                )
            if filter:
                metadata = encode_json(dict(filter), "filter", self._max_json)
        before_id = None
        if before is not None:
            before_id = _address(before, "before")[2]
            if before_id is None:
                raise ValidationError(
                    "before names no checkpoint_id: pass the config of a stored checkpoint",
                    field="before.configurable.checkpoint_id",
                )
        left = None if limit is None else check_int(limit, "limit", 0, 2**62)
        after: _sql.Position | None = None
        while left is None or left > 0:
            size = _PAGE if left is None else min(left, _PAGE)
            page = await self._page(
                _sql.list_page(
                    self.tenant_id,
                    thread=thread,
                    ns=ns,
                    checkpoint_id=checkpoint_id,
                    metadata=metadata,
                    before=before_id,
                    after=after,
                    size=size,
                )
            )
            for row in page:
                yield self._load(row)
            if len(page) < size:
                return
            last = page[-1]
            after = (last["checkpoint_id"], last["thread_id"], last["checkpoint_ns"])
            if left is not None:
                left -= len(page)

    @observed("checkpoints.list")
    async def _page(self, statement: _sql.Statement) -> builtins.list[dict[str, Any]]:
        return await self._db.fetch(*statement)

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

    # -- rows in, rows out ---------------------------------------------------------------------

    def _put_statement(
        self,
        config: RunnableConfig,
        thread: str,
        ns: str,
        parent: str | None,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> tuple[_sql.Statement, str]:
        if not isinstance(checkpoint, Mapping):
            raise ValidationError(
                f"checkpoint must be a LangGraph Checkpoint (a dict), not {brief(checkpoint)}",
                field="checkpoint",
            )
        checkpoint_id = _text(checkpoint.get("id"), "checkpoint.id", _MAX_ID)
        values = _mapping(checkpoint.get("channel_values"), "checkpoint.channel_values")
        _versions(checkpoint.get("channel_versions"), "checkpoint.channel_versions")
        versions = _versions(new_versions, "new_versions")
        if not isinstance(metadata, Mapping):
            raise ValidationError(
                f"metadata must be a dict, not {brief(metadata)}", field="metadata"
            )
        if config.get("metadata") is not None and not isinstance(config["metadata"], Mapping):
            raise ValidationError(
                f"config['metadata'] must be a dict, not {brief(config['metadata'])}",
                field="config.metadata",
            )
        stored = get_serializable_checkpoint_metadata(config, metadata)
        run = stored.get("run_id")
        body = {key: value for key, value in checkpoint.items() if key != "channel_values"}
        blobs: builtins.list[tuple[str, str, bytes | None]] = []
        for channel in versions:
            if channel in values:
                kind, blob = self._dump(values[channel], f"checkpoint.channel_values[{channel!r}]")
                blobs.append((channel, kind, blob))
            else:
                blobs.append((channel, "empty", None))
        statement = _sql.put_checkpoint(
            self.tenant_id,
            thread,
            ns,
            checkpoint_id,
            parent,
            None if run is None else _run_id(run, "metadata.run_id"),
            encode_json(body, "checkpoint", self._max_json),
            encode_json(stored, "metadata", self._max_json),
            encode_json(versions, "new_versions", self._max_json),
            blobs,
        )
        return statement, checkpoint_id

    def _write_rows(self, writes: Any) -> builtins.list[tuple[int, str, str, bytes]]:
        # One row per index: a special channel written twice keeps its last value.
        rows: dict[int, tuple[int, str, str, bytes]] = {}
        for index, write in enumerate(as_items(writes, "writes")):
            field = f"writes[{index}]"
            if not isinstance(write, tuple | builtins.list) or len(write) != 2:
                raise ValidationError(
                    f"{field} must be a (channel, value) pair, not {brief(write)}", field=field
                )
            channel = _text(write[0], f"{field}[0]", _MAX_CHANNEL)
            kind, blob = self._dump(write[1], f"{field}[1]")
            idx = WRITES_IDX_MAP.get(channel, index)
            rows[idx] = (idx, channel, kind, blob)
        return builtins.list(rows.values())

    def _dump(self, value: Any, field: str) -> tuple[str, bytes]:
        try:
            kind, blob = self.serde.dumps_typed(value)
        except Exception as exc:
            raise ValidationError(
                f"{field} cannot be serialized by the checkpointer's serde "
                f"({type(exc).__name__}: {brief(str(exc))}); store values LangGraph can "
                "serialize, or pass a serde that handles this type",
                field=field,
            ) from exc
        return kind, bytes(blob)

    def _loads(self, kind: str, blob: bytes | None, where: str) -> Any:
        try:
            return self.serde.loads_typed((kind, blob if blob is not None else b""))
        except Exception as exc:
            raise AgencyDataError(
                f"{where} could not be read back ({type(exc).__name__}: {brief(str(exc))}): "
                "was it stored with another serde (an encryption key, a msgpack allow-list)?"
            ) from exc

    def _load(self, row: Mapping[str, Any]) -> CheckpointTuple:
        thread, ns, checkpoint_id = row["thread_id"], row["checkpoint_ns"], row["checkpoint_id"]
        where = f"checkpoint {checkpoint_id} of thread {thread!r}"
        values = {
            channel: self._loads(kind, blob, f"{where}, channel {channel!r},")
            for channel, kind, blob in zip(
                row["blob_channels"] or (),
                row["blob_types"] or (),
                row["blob_values"] or (),
                strict=True,
            )
        }
        writes: builtins.list[PendingWrite] = [
            (task, channel, self._loads(kind, blob, f"{where}, a write of task {task},"))
            for task, channel, kind, blob in zip(
                row["write_tasks"] or (),
                row["write_channels"] or (),
                row["write_types"] or (),
                row["write_values"] or (),
                strict=True,
            )
        ]
        parent = row["parent_checkpoint_id"]
        checkpoint: Any = {**row["checkpoint"], "channel_values": values}
        return CheckpointTuple(
            config={
                "configurable": {
                    "thread_id": thread,
                    "checkpoint_ns": ns,
                    "checkpoint_id": checkpoint_id,
                }
            },
            checkpoint=checkpoint,
            metadata=row["metadata"],
            parent_config=(
                {
                    "configurable": {
                        "thread_id": thread,
                        "checkpoint_ns": ns,
                        "checkpoint_id": parent,
                    }
                }
                if parent
                else None
            ),
            pending_writes=writes,
        )


# -- checking LangGraph's arguments ------------------------------------------------------------


def _address(config: Any, field: str) -> tuple[str, str, str | None]:
    """(thread id, namespace, checkpoint id) of a RunnableConfig: the namespace is "" and
    the checkpoint id None when it names none."""
    thread, ns, checkpoint_id = _parts(config, field)
    return thread, "" if ns is None else ns, checkpoint_id


def _parts(config: Any, field: str) -> tuple[str, str | None, str | None]:
    """(thread id, namespace or None, checkpoint id or None) of a RunnableConfig."""
    configurable = config.get("configurable") if isinstance(config, Mapping) else None
    if not isinstance(configurable, Mapping):
        raise ValidationError(
            f"{field} must be a LangGraph config, {{'configurable': {{'thread_id': ...}}}}, "
            f"not {brief(config)}",
            field=field,
        )
    if configurable.get("thread_id") is None:
        raise ValidationError(
            f"{field} names no thread: a checkpointer needs "
            "{'configurable': {'thread_id': ...}} (the conversation's id)",
            field=f"{field}.configurable.thread_id",
        )
    thread = _thread(configurable["thread_id"], f"{field}.configurable.thread_id")
    ns = configurable.get("checkpoint_ns")
    if ns is not None:
        ns = check_text(ns, f"{field}.configurable.checkpoint_ns", max_length=_MAX_NS)
    checkpoint_id = configurable.get("checkpoint_id")
    if checkpoint_id is None or checkpoint_id == "":
        return thread, ns, None
    return thread, ns, _text(checkpoint_id, f"{field}.configurable.checkpoint_id", _MAX_ID)


def _thread(value: Any, field: str) -> str:
    # LangGraph's configs often carry a UUID or a number as the thread id: the same thread.
    if isinstance(value, UUID) or (isinstance(value, int) and not isinstance(value, bool)):
        value = str(value)
    return _text(value, field, _MAX_THREAD)


def _run_id(value: Any, field: str) -> str:
    return _text(str(value) if isinstance(value, UUID) else value, field, _MAX_ID)


def _text(value: Any, field: str, most: int) -> str:
    text = check_text(value, field, max_length=most)
    if not text:
        raise ValidationError(f"{field} is empty", field=field)
    return text


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(f"{field} must be a dict, not {brief(value)}", field=field)
    return value


def _versions(value: Any, field: str) -> dict[str, str | int | float]:
    versions = _mapping(value, field)
    for channel, version in versions.items():
        _text(channel, f"{field} key", _MAX_CHANNEL)
        if isinstance(version, bool) or not isinstance(version, str | int | float):
            raise ValidationError(
                f"{field}[{channel!r}] must be a version (a string or a number), "
                f"not {brief(version)}",
                field=field,
            )
        if isinstance(version, str):
            _text(version, f"{field}[{channel!r}]", _MAX_ID)
    return dict(versions)


async def _next(items: AsyncIterator[T]) -> T:
    return await anext(items)


async def _nothing() -> None:
    return None
