"""Values in and out of LangGraph's serializer (its ``serde``), and rows into checkpoints.

A value the serde cannot write is the caller's input: a :class:`ValidationError` naming it.
A stored value it cannot read back (another serde wrote it: a different encryption key, a
class off its allow-list) is reported with the checkpoint and channel it belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langgraph.checkpoint.base import WRITES_IDX_MAP, CheckpointTuple, PendingWrite
from langgraph.checkpoint.serde.base import SerializerProtocol

from agency_data.errors import AgencyDataError, ValidationError
from agency_data.inputs import brief

__all__ = ["blobs", "load", "write_rows"]


def blobs(
    serde: SerializerProtocol, values: Mapping[str, Any], versions: Mapping[str, Any]
) -> list[tuple[str, str, bytes | None]]:
    """``(channel, type, blob)`` of each channel given a new version; a channel without a
    value has the type ``"empty"`` and no blob, as in LangGraph's savers."""
    return [
        (channel, *_dump(serde, values[channel], f"checkpoint.channel_values[{channel!r}]"))
        if channel in values
        else (channel, "empty", None)
        for channel in versions
    ]


def write_rows(
    serde: SerializerProtocol, writes: list[tuple[int, str, Any]]
) -> list[tuple[int, str, str, bytes]]:
    """``(idx, channel, type, blob)`` rows of a task's writes: idx is the write's place, or
    the special channel's negative number; a special channel written twice keeps its last."""
    rows: dict[int, tuple[int, str, str, bytes]] = {}
    for index, channel, value in writes:
        kind, blob = _dump(serde, value, f"writes[{index}][1]")
        idx = WRITES_IDX_MAP.get(channel, index)
        rows[idx] = (idx, channel, kind, blob)
    return list(rows.values())


def load(serde: SerializerProtocol, row: Mapping[str, Any]) -> CheckpointTuple:
    """The checkpoint tuple of a row of the checkpointer's SELECT."""
    thread, ns, checkpoint_id = row["thread_id"], row["checkpoint_ns"], row["checkpoint_id"]
    where = f"checkpoint {checkpoint_id} of thread {thread!r}"
    values = {
        channel: _load(serde, kind, blob, f"{where}, channel {channel!r},")
        for channel, kind, blob in zip(
            row["blob_channels"] or (),
            row["blob_types"] or (),
            row["blob_values"] or (),
            strict=True,
        )
    }
    writes: list[PendingWrite] = [
        (task, channel, _load(serde, kind, blob, f"{where}, a write of task {task},"))
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
            {"configurable": {"thread_id": thread, "checkpoint_ns": ns, "checkpoint_id": parent}}
            if parent
            else None
        ),
        pending_writes=writes,
    )


def _dump(serde: SerializerProtocol, value: Any, field: str) -> tuple[str, bytes]:
    try:
        kind, blob = serde.dumps_typed(value)
    except Exception as exc:
        raise ValidationError(
            f"{field} cannot be serialized by the checkpointer's serde "
            f"({type(exc).__name__}: {brief(str(exc))}); store values LangGraph can "
            "serialize, or pass a serde that handles this type",
            field=field,
        ) from exc
    # bytes, not bytearray: the driver sends a list of them as one bytea array.
    return kind, bytes(blob)


def _load(serde: SerializerProtocol, kind: str, blob: bytes | None, where: str) -> Any:
    try:
        return serde.loads_typed((kind, blob if blob is not None else b""))
    except Exception as exc:
        raise AgencyDataError(
            f"{where} could not be read back ({type(exc).__name__}: {brief(str(exc))}): was it "
            "stored with another serde (another encryption key, a class off the allow-list)?"
        ) from exc
