"""What the LangGraph store accepts: namespaces, keys, values, TTLs, filters and its configs.

Every check raises a typed error of agency-data's naming the argument; a bad namespace raises
:class:`InvalidNamespace`, which is also LangGraph's ``InvalidNamespaceError`` (a
``ValueError``), so code written against LangGraph's own stores catches it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from langgraph.store.base import InvalidNamespaceError, tokenize_path

from agency_data.errors import ConfigError, ValidationError
from agency_data.inputs import brief, check_bool, check_int, encodable
from agency_data.vectors.embedders import Embedder
from agency_data.vectors.filter_ast import parse_filter
from agency_data.vectors.validation import MAX_DIMENSION

__all__ = [
    "FILTER_OPERATORS",
    "Fields",
    "IndexSettings",
    "InvalidNamespace",
    "TTLSettings",
    "check_fields",
    "check_filter",
    "check_key",
    "check_namespace",
    "check_pattern",
    "check_ttl",
    "index_settings",
    "ttl_settings",
]

# The most UTF-8 bytes of a namespace (its labels joined by dots) and of a key: both sit in the
# primary key's index, whose entries PostgreSQL keeps under 2,700 bytes.
MAX_NAMESPACE_BYTES = 1024
MAX_KEY_BYTES = 1024
# A century, in minutes: far beyond any sensible TTL, well inside timestamptz's range.
MAX_TTL_MINUTES = 100 * 366 * 24 * 60.0
MAX_FIELDS = 100
MAX_PATH = 1000
# The comparison operators of LangGraph's filter language.
FILTER_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")

# A field to embed: its path as given, and the path as LangGraph's get_text_at_path takes it
# ("$", the whole value, or its tokens).
Fields: TypeAlias = "list[tuple[str, str | list[str]]]"


class InvalidNamespace(ValidationError, InvalidNamespaceError):
    """A namespace, or one of its labels, is not one LangGraph's stores accept."""


def _namespace_error(field: str, message: str) -> InvalidNamespace:
    return InvalidNamespace(f"{field} {message}", field=field)


def check_namespace(value: Any, field: str, *, stored: bool) -> tuple[str, ...]:
    """``value`` as a namespace tuple; ``stored``: one an item is put in (not empty, nor rooted
    at ``"langgraph"``), else a prefix to look under (empty: everything)."""
    if not isinstance(value, tuple | list):
        raise _namespace_error(
            field, f"must be a tuple of string labels, such as ('users', 'u1'), not {brief(value)}"
        )
    labels = tuple(value)
    for index, label in enumerate(labels):
        _check_label(label, f"{field}[{index}]")
    if stored:
        if not labels:
            raise _namespace_error(field, "is empty: an item's namespace has at least one label")
        if labels[0] == "langgraph":
            raise _namespace_error(
                field, f"{labels!r} is rooted at 'langgraph', which LangGraph reserves"
            )
    if len(".".join(labels).encode()) > MAX_NAMESPACE_BYTES:
        raise _namespace_error(
            field, f"is over {MAX_NAMESPACE_BYTES} bytes (its labels joined by dots)"
        )
    return labels


def check_pattern(value: Any, field: str) -> tuple[str, ...] | None:
    """A ``list_namespaces`` prefix or suffix: labels, of which ``"*"`` matches any one."""
    if value is None:
        return None
    return check_namespace(value, field, stored=False)


def _check_label(label: Any, field: str) -> None:
    if not isinstance(label, str):
        raise _namespace_error(field, f"must be a string, not {brief(label)}")
    if not label:
        raise _namespace_error(field, "is empty; namespace labels are non-empty strings")
    if "." in label:
        raise _namespace_error(field, f"{label!r} contains a period, which namespaces forbid")
    if "\x00" in label:
        raise _namespace_error(field, "contains a NUL character, which namespaces forbid")
    if not encodable(label):
        raise _namespace_error(field, "holds unpaired surrogates, which cannot be stored")


def check_key(value: Any, field: str) -> str:
    """``value`` if it is an item key: a string without NUL, of at most 1,024 UTF-8 bytes."""
    if not isinstance(value, str):
        raise ValidationError(
            f"{field} must be a string, not {brief(value)} (convert ids with str())", field=field
        )
    if "\x00" in value:
        raise ValidationError(f"{field} contains a NUL character", field=field)
    if not encodable(value):
        raise ValidationError(f"{field} holds unpaired surrogates", field=field)
    if len(value.encode()) > MAX_KEY_BYTES:
        raise ValidationError(f"{field} is over {MAX_KEY_BYTES} bytes", field=field)
    return value


def check_ttl(value: Any, field: str) -> float | None:
    """``value`` as minutes to live (None: for ever)."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= MAX_TTL_MINUTES
    ):
        raise ValidationError(
            f"{field} must be a number of minutes above 0 and at most {MAX_TTL_MINUTES:.0f}, "
            f"or None for no expiry, not {brief(value)}",
            field=field,
        )
    return float(value)


def check_fields(value: Any, field: str) -> Fields:
    """Paths to embed (LangGraph's syntax: ``"text"``, ``"a.b"``, ``"items[*].text"``,
    ``"$"`` for the whole value), without repeats."""
    if not isinstance(value, list | tuple) or not value:
        raise ValidationError(
            f"{field} must be a non-empty list of field paths such as ['text'], not {brief(value)}",
            field=field,
        )
    if len(value) > MAX_FIELDS:
        raise ValidationError(f"{field} names more than {MAX_FIELDS} paths", field=field)
    fields: Fields = []
    # The same path twice would make the same embeddings twice.
    unique = list(dict.fromkeys(value)) if all(isinstance(p, str) for p in value) else value
    for index, path in enumerate(unique):
        where = f"{field}[{index}]"
        if not isinstance(path, str) or not path.strip() or len(path) > MAX_PATH:
            raise ValidationError(
                f"{where} must be a non-blank path of at most {MAX_PATH} characters, not "
                f"{brief(path)}",
                field=where,
            )
        if "\x00" in path or not encodable(path):
            raise ValidationError(f"{where} holds NUL or unpaired surrogates", field=where)
        fields.append((path, "$" if path == "$" else tokenize_path(path)))
    return fields


def check_filter(value: Any, field: str) -> dict[str, Any]:
    """A LangGraph filter (``{"kind": "note", "score": {"$gte": 3}}``) in agency-data's filter
    language, with each key as a path below ``metadata`` (the caller puts it where the value
    is); checked by parsing it, so a bad value fails here, naming it.

    A dotted key reaches into nested objects (``"author.name"``), as in agency-data's filters;
    a dict without operators is compared whole.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(
            f"{field} must be a dict of value fields to match, such as {{'kind': 'note'}}, not "
            f"{brief(value)}",
            field=field,
        )
    translated: dict[str, Any] = {}
    for key, condition in value.items():
        where = f"{field}.{key}" if isinstance(key, str) else field
        if not isinstance(key, str) or not key or key.startswith("$"):
            raise ValidationError(
                f"{field} key {brief(key)} is not a field name; put operators inside a field: "
                "{'score': {'$gt': 1}}",
                field=where,
            )
        if isinstance(condition, Mapping) and any(
            isinstance(op, str) and op.startswith("$") for op in condition
        ):
            unknown = [op for op in condition if op not in FILTER_OPERATORS]
            if unknown:
                raise ValidationError(
                    f"{where} uses {', '.join(brief(op) for op in unknown)}; the operators are "
                    f"{' '.join(FILTER_OPERATORS)}, and a dict holding one holds only operators",
                    field=where,
                )
        translated[f"metadata.{key}"] = condition
    try:
        parse_filter(translated)
    except ValidationError as exc:
        # The parser names "metadata.<key>" (or "filter"): the caller's filter names "<key>".
        text, name = str(exc), exc.field or ""
        if name.startswith("metadata."):
            text = f"{field}.{text.removeprefix('metadata.')}"
            name = f"{field}.{name.removeprefix('metadata.')}"
        else:
            text, name = field + text.removeprefix("filter"), field
        raise ValidationError(text, field=name) from None
    return translated


@dataclass(frozen=True)
class IndexSettings:
    """A checked index config: the collection's shape and embedder, and what to embed."""

    dims: int
    embedder: Embedder
    fields: Fields
    metric: str
    storage: Literal["vector", "halfvec"]
    kind: Literal["hnsw", "ivfflat", "flat"]
    options: dict[str, int]


_INDEX_KEYS = ("dims", "embed", "fields", "distance_type", "ann_index_config")
_DISTANCES = {"cosine": "cosine", "l2": "euclidean", "inner_product": "inner_product"}
_ANN_OPTIONS = {"hnsw": ("m", "ef_construction"), "ivfflat": ("nlist",), "flat": ()}


def index_settings(index: Any) -> IndexSettings | None:
    """LangGraph's ``IndexConfig`` (with ``PostgresIndexConfig``'s ``distance_type`` and
    ``ann_index_config``), checked; a :class:`ConfigError` names what is wrong."""
    if index is None:
        return None
    if not isinstance(index, Mapping):
        raise ConfigError(
            f"index must be a dict such as {{'dims': 1536, 'embed': ...}}, not {brief(index)}",
            field="index",
        )
    unknown = [key for key in index if key not in _INDEX_KEYS]
    if unknown:
        raise ConfigError(
            f"index has unknown keys {unknown}; known: {', '.join(_INDEX_KEYS)}", field="index"
        )
    if "dims" not in index or "embed" not in index:
        raise ConfigError("index needs 'dims' and 'embed'", field="index")
    with _as_config("index.dims"):
        dims = check_int(index["dims"], "index.dims", 1, MAX_DIMENSION)
    fields_value = index.get("fields") or ["$"]
    if isinstance(fields_value, str):
        fields_value = [fields_value]
    with _as_config("index.fields"):
        fields = check_fields(fields_value, "index.fields")
    distance = index.get("distance_type", "cosine")
    if distance not in _DISTANCES:
        raise ConfigError(
            f"index.distance_type {brief(distance)} is not one of: {', '.join(_DISTANCES)}",
            field="index.distance_type",
        )
    storage, kind, options = _ann(index.get("ann_index_config") or {})
    return IndexSettings(
        dims=dims,
        embedder=_embedder(index["embed"]),
        fields=fields,
        metric=_DISTANCES[distance],
        storage=storage,
        kind=kind,
        options=options,
    )


def _ann(
    config: Any,
) -> tuple[Literal["vector", "halfvec"], Literal["hnsw", "ivfflat", "flat"], dict[str, int]]:
    field = "index.ann_index_config"
    if not isinstance(config, Mapping):
        raise ConfigError(f"{field} must be a dict, not {brief(config)}", field=field)
    kind = config.get("kind", "hnsw")
    if kind not in _ANN_OPTIONS:
        raise ConfigError(
            f"{field}.kind {brief(kind)} is not one of: hnsw, ivfflat, flat", field=f"{field}.kind"
        )
    storage = config.get("vector_type", "vector")
    if storage not in ("vector", "halfvec"):
        raise ConfigError(
            f"{field}.vector_type {brief(storage)} is not one of: vector, halfvec",
            field=f"{field}.vector_type",
        )
    known = ("kind", "vector_type", *_ANN_OPTIONS[kind])
    unknown = [key for key in config if key not in known]
    if unknown:
        raise ConfigError(
            f"{field} has keys {unknown} that a {kind} index does not take; known: "
            f"{', '.join(known)}",
            field=field,
        )
    options: dict[str, int] = {}
    for name in _ANN_OPTIONS[kind]:
        if name in config:
            with _as_config(f"{field}.{name}"):
                options[name] = check_int(config[name], f"{field}.{name}", 1, 32768)
    return storage, kind, options


def _embedder(embed: Any) -> Embedder:
    if isinstance(embed, str):
        # A "provider:model" name needs LangChain's init_embeddings (and the provider's
        # package); LangGraph's ensure_embeddings finds it, or says what is missing.
        from langgraph.store.base import ensure_embeddings

        try:
            embed = ensure_embeddings(embed)
        except Exception as exc:
            raise ConfigError(
                f"index.embed {embed!r} names a model, which needs LangChain's "
                f"init_embeddings and the provider's package: {exc}; or give an Embeddings "
                "object or a function mapping a list of texts to vectors",
                field="index.embed",
            ) from exc
    try:
        return Embedder.of(embed)
    except ValidationError as exc:
        raise ConfigError(f"index.{exc}", field="index.embed") from None


@contextmanager
def _as_config(field: str) -> Iterator[None]:
    """Re-raise the block's ValidationError as a ConfigError: a config's value was bad."""
    try:
        yield
    except ValidationError as exc:
        raise ConfigError(str(exc), field=field) from None


@dataclass(frozen=True)
class TTLSettings:
    """A checked TTL config (LangGraph's ``TTLConfig``)."""

    default_ttl: float | None = None
    refresh_on_read: bool = True
    sweep_interval_minutes: float | None = None
    omit_expired: bool = False


_TTL_KEYS = ("default_ttl", "refresh_on_read", "sweep_interval_minutes", "omit_expired")


def ttl_settings(ttl: Any) -> TTLSettings | None:
    """LangGraph's ``TTLConfig``, checked; a :class:`ConfigError` names what is wrong."""
    if ttl is None:
        return None
    if not isinstance(ttl, Mapping):
        raise ConfigError(
            f"ttl must be a dict such as {{'default_ttl': 60}}, not {brief(ttl)}", field="ttl"
        )
    unknown = [key for key in ttl if key not in _TTL_KEYS]
    if unknown:
        raise ConfigError(
            f"ttl has unknown keys {unknown}; known: {', '.join(_TTL_KEYS)}", field="ttl"
        )
    with _as_config("ttl.default_ttl"):
        default = check_ttl(ttl.get("default_ttl"), "ttl.default_ttl")
    with _as_config("ttl.sweep_interval_minutes"):
        interval = check_ttl(ttl.get("sweep_interval_minutes"), "ttl.sweep_interval_minutes")
    with _as_config("ttl.refresh_on_read"):
        refresh = check_bool(ttl.get("refresh_on_read", True), "ttl.refresh_on_read")
    with _as_config("ttl.omit_expired"):
        omit = check_bool(ttl.get("omit_expired", False), "ttl.omit_expired")
    return TTLSettings(default, refresh, interval, omit)
