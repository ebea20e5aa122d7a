"""Checking what LangGraph (or its user) hands the checkpointer, before anything is sent.

LangGraph's own savers read configs with ``config["configurable"]["thread_id"]`` and fail with
a KeyError; here every argument is checked first and a bad one is a :class:`ValidationError`
naming it (``config.configurable.thread_id``, ``writes[3][0]``), with nothing written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import get_serializable_checkpoint_metadata

from agency_data.errors import ValidationError
from agency_data.inputs import as_items, brief, check_int, check_text, encode_json

__all__ = [
    "MAX_CHANNEL",
    "MAX_ID",
    "MAX_NS",
    "STRATEGIES",
    "Listing",
    "NewCheckpoint",
    "address",
    "allowlist",
    "channel_names",
    "listing",
    "new_checkpoint",
    "next_version",
    "run_id",
    "text",
    "thread_id",
    "writes",
]

# Longest ids accepted, in bytes of UTF-8 (a character may take four): together they fit a
# primary key's index entry (about 2,700 bytes).
MAX_THREAD = 512
MAX_NS = 1024
MAX_ID = 256
MAX_CHANNEL = 512
STRATEGIES = ("keep_latest", "delete")
# A channel version as LangGraph's savers write them: "<counter>.<random tail>" (whose tail
# Python may print in exponent form, "...1.4.4e-05"), or a number.
_VERSION = re.compile(r"^[0-9]{1,64}(\..*)?$")


def address(config: Any, field: str) -> tuple[str, str, str | None]:
    """(thread id, namespace, checkpoint id) of a RunnableConfig: the namespace is "" and
    the checkpoint id None when it names none."""
    thread, ns, checkpoint_id = _parts(config, field)
    return thread, "" if ns is None else ns, checkpoint_id


def _parts(config: Any, field: str) -> tuple[str, str | None, str | None]:
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
    thread = thread_id(configurable["thread_id"], f"{field}.configurable.thread_id")
    ns = configurable.get("checkpoint_ns")
    if ns is not None:
        ns = check_text(
            ns, f"{field}.configurable.checkpoint_ns", max_length=MAX_NS, max_bytes=MAX_NS
        )
    checkpoint_id = configurable.get("checkpoint_id")
    if checkpoint_id is None or checkpoint_id == "":
        return thread, ns, None
    return thread, ns, text(checkpoint_id, f"{field}.configurable.checkpoint_id", MAX_ID)


def thread_id(value: Any, field: str) -> str:
    """A thread id as stored: LangGraph's configs often carry a UUID or a number, which name
    the same thread as their text."""
    if isinstance(value, UUID) or (isinstance(value, int) and not isinstance(value, bool)):
        value = str(value)
    return text(value, field, MAX_THREAD)


def run_id(value: Any, field: str) -> str:
    """A run id (LangGraph's are UUIDs, or their text)."""
    return text(str(value) if isinstance(value, UUID) else value, field, MAX_ID)


def text(value: Any, field: str, most: int) -> str:
    """``value`` if it is a non-empty string of at most ``most`` bytes of UTF-8, without NUL."""
    checked = check_text(value, field, max_length=most, max_bytes=most)
    if not checked:
        raise ValidationError(f"{field} is empty", field=field)
    return checked


def channel_names(channels: Any) -> list[str]:
    """A list of channel names."""
    return [
        text(channel, f"channels[{i}]", MAX_CHANNEL)
        for i, channel in enumerate(as_items(channels, "channels"))
    ]


def next_version(current: Any, tail: float) -> str:
    """The channel version after ``current``: an increasing counter, then ``tail``."""
    if current is None:
        number = 0
    elif isinstance(current, int) and not isinstance(current, bool):
        number = current
    elif isinstance(current, str) and _VERSION.match(current):
        number = int(current.split(".")[0])
    else:
        raise ValidationError(
            "current must be a channel version (None, an int, or a string such as "
            f"'00000000000000000000000000000001.0.42'), not {brief(current)}",
            field="current",
        )
    # Fixed-point, so that the tail never takes the exponent form.
    return f"{number + 1:032}.{tail:.16f}"


def allowlist(entries: Any) -> list[Any]:
    """Classes, or tuples of module and class names, a serde may read back."""
    allowed: list[Any] = []
    for i, entry in enumerate(as_items(entries, "extra_allowlist")):
        field = f"extra_allowlist[{i}]"
        if isinstance(entry, type):
            allowed.append(entry)
            continue
        if not isinstance(entry, tuple | list) or not entry:
            raise ValidationError(
                f"{field} must be a class or a tuple of names such as "
                f"('mymodule', 'MyClass'), not {brief(entry)}",
                field=field,
            )
        allowed.append(tuple(text(name, field, MAX_ID) for name in entry))
    return allowed


def writes(pairs: Any) -> list[tuple[int, str, Any]]:
    """A task's writes as (index in the list, channel, value)."""
    checked: list[tuple[int, str, Any]] = []
    for index, write in enumerate(as_items(pairs, "writes")):
        field = f"writes[{index}]"
        if not isinstance(write, tuple | list) or len(write) != 2:
            raise ValidationError(
                f"{field} must be a (channel, value) pair, not {brief(write)}", field=field
            )
        checked.append((index, text(write[0], f"{field}[0]", MAX_CHANNEL), write[1]))
    return checked


@dataclass(frozen=True)
class Listing:
    """What a listing selects (None: no condition)."""

    thread: str | None
    ns: str | None
    checkpoint_id: str | None
    metadata: str | None  # JSON text the metadata contains
    before: str | None
    limit: int | None


def listing(config: Any, filter: Any, before: Any, limit: Any, max_json: int) -> Listing:
    """The arguments of ``alist``, checked."""
    thread = ns = checkpoint_id = None
    if config is not None:
        thread, ns, checkpoint_id = _parts(config, "config")
    metadata = None
    if filter is not None:
        if not isinstance(filter, Mapping):
            raise ValidationError(
                f"filter must be a dict of metadata values, not {brief(filter)}", field="filter"
            )
        if filter:
            metadata = encode_json(dict(filter), "filter", max_json)
    before_id = None
    if before is not None:
        before_id = address(before, "before")[2]
        if before_id is None:
            raise ValidationError(
                "before names no checkpoint_id: pass the config of a stored checkpoint",
                field="before.configurable.checkpoint_id",
            )
    most = None if limit is None else check_int(limit, "limit", 0, 2**62)
    return Listing(thread, ns, checkpoint_id, metadata, before_id, most)


@dataclass(frozen=True)
class NewCheckpoint:
    """A checkpoint for ``aput``, checked: its JSON parts encoded, its values still Python."""

    checkpoint_id: str
    values: Mapping[str, Any]
    versions: dict[str, str | int | float]  # the new versions
    body: str  # the checkpoint without its values, as JSON
    metadata: str  # as JSON
    versions_json: str
    run_id: str | None


def new_checkpoint(
    config: RunnableConfig, checkpoint: Any, metadata: Any, new_versions: Any, max_json: int
) -> NewCheckpoint:
    """The arguments of ``aput`` (past its config's address), checked and encoded."""
    if not isinstance(checkpoint, Mapping):
        raise ValidationError(
            f"checkpoint must be a LangGraph Checkpoint (a dict), not {brief(checkpoint)}",
            field="checkpoint",
        )
    checkpoint_id = text(checkpoint.get("id"), "checkpoint.id", MAX_ID)
    values = _mapping(checkpoint.get("channel_values"), "checkpoint.channel_values")
    _versions(checkpoint.get("channel_versions"), "checkpoint.channel_versions")
    versions = _versions(new_versions, "new_versions")
    if not isinstance(metadata, Mapping):
        raise ValidationError(f"metadata must be a dict, not {brief(metadata)}", field="metadata")
    if config.get("metadata") is not None and not isinstance(config["metadata"], Mapping):
        raise ValidationError(
            f"config['metadata'] must be a dict, not {brief(config['metadata'])}",
            field="config.metadata",
        )
    # As LangGraph's savers store it: the config's own metadata merged in, NULs dropped.
    stored = get_serializable_checkpoint_metadata(config, metadata)  # type: ignore[arg-type]
    run = stored.get("run_id")
    body = {key: value for key, value in checkpoint.items() if key != "channel_values"}
    return NewCheckpoint(
        checkpoint_id=checkpoint_id,
        values=values,
        versions=versions,
        body=encode_json(body, "checkpoint", max_json),
        metadata=encode_json(stored, "metadata", max_json),
        versions_json=encode_json(versions, "new_versions", max_json),
        run_id=None if run is None else run_id(run, "metadata.run_id"),
    )


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(f"{field} must be a dict, not {brief(value)}", field=field)
    return value


def _versions(value: Any, field: str) -> dict[str, str | int | float]:
    versions = _mapping(value, field)
    for channel, version in versions.items():
        text(channel, f"{field} key", MAX_CHANNEL)
        if isinstance(version, bool) or not isinstance(version, str | int | float):
            raise ValidationError(
                f"{field}[{channel!r}] must be a version (a string or a number), "
                f"not {brief(version)}",
                field=field,
            )
        if isinstance(version, str):
            text(version, f"{field}[{channel!r}]", MAX_ID)
    return dict(versions)
