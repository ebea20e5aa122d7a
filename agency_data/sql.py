"""Composing SQL without string formatting.

Identifiers (tables, columns) are quoted by PostgreSQL's rules; values always travel as bind
parameters. Everything here builds psycopg ``sql`` objects, which every query call accepts::

    from agency_data.sql import SQL, identifier, identifiers, equals_all

    where, params = equals_all({"type": "worker", "status": "active"})
    query = SQL("SELECT {} FROM {} WHERE {}").format(
        identifiers(["id", "name"]), identifier("public", "agents"), where
    )
    rows = await dl.fetch(query, params)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from psycopg.sql import SQL, Composed, Identifier, Literal, Placeholder

from agency_data.errors import ValidationError

__all__ = [
    "SQL",
    "Composed",
    "Identifier",
    "Literal",
    "Placeholder",
    "equals_all",
    "identifier",
    "identifiers",
]


def identifier(*parts: str) -> Identifier:
    """A (possibly schema-qualified) name, quoted: ``identifier("public", "agents")``."""
    if not parts:
        raise ValidationError("an identifier needs at least one part", field="identifier")
    for part in parts:
        if not isinstance(part, str) or not part or "\x00" in part:
            raise ValidationError(f"{part!r} is not a usable identifier", field="identifier")
    return Identifier(*parts)


def identifiers(names: Iterable[str]) -> Composed:
    """Column names, quoted and comma-separated."""
    quoted = [identifier(name) for name in names]
    if not quoted:
        raise ValidationError("at least one identifier is needed", field="identifier")
    return SQL(", ").join(quoted)


def equals_all(columns: Mapping[str, Any]) -> tuple[Composed, list[Any]]:
    """``col1 = %s AND col2 = %s ...`` for the mapping, and its values as parameters."""
    if not columns:
        raise ValidationError("at least one column is needed", field="identifier")
    clauses = [SQL("{} = %s").format(identifier(name)) for name in columns]
    return SQL(" AND ").join(clauses), list(columns.values())
