"""Reading migration files into :class:`Migration` objects, and putting them in order.

A migration is a pair of files, ``0003_tasks.up.sql`` and (optionally) ``0003_tasks.down.sql``.
Header comments at the top of the up file set its options::

    -- depends: agency_data:0002, myapp:0007_users
    -- transaction: false
    -- replaces: 5e180c56...9343c

Each migration also depends on the one before it in its own directory. ``replaces`` names
the checksums of earlier versions of an applied file that databases may have recorded: an
edit that only adds what later migrations already guarantee (so databases that ran the old
text need nothing more) is then not refused as a changed migration.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from dataclasses import replace

from agency_data.errors import MigrationError
from agency_data.migrations._model import Migration, MigrationSource

__all__ = ["load_migrations", "resolve"]

_FILE = re.compile(r"^(?P<version>\d+)_(?P<name>[a-z0-9_]+)\.(?P<direction>up|down)\.sql$")
_HEADER = re.compile(
    r"^--\s*(?P<key>depends|transaction|replaces)\s*:\s*(?P<value>.*?)\s*$", re.IGNORECASE
)
_CHECKSUM = re.compile(r"^[0-9a-f]{64}$")


def load_migrations(sources: Sequence[MigrationSource]) -> list[Migration]:
    """Every migration of ``sources``, in an order that respects all dependencies.

    Ties are broken by source order, then version, so the order is the same on every machine.
    """
    found: list[Migration] = []
    for source in sources:
        found.extend(_load_source(source))
    return _ordered(found)


def resolve(ref: str, migrations: Sequence[Migration]) -> Migration:
    """The one migration that ``ref`` names, or a :class:`MigrationError` saying why not."""
    hits = [m for m in migrations if m.matches(ref)]
    if not hits:
        raise MigrationError(f"no migration is named {ref!r}; see `agency-data migrate status`")
    if len(hits) > 1:
        names = ", ".join(m.key for m in hits)
        raise MigrationError(f"{ref!r} is ambiguous ({names}); name it as namespace:version")
    return hits[0]


def _load_source(source: MigrationSource) -> list[Migration]:
    if not source.directory.is_dir():
        raise MigrationError(f"migration directory {source.directory} does not exist")
    ups: dict[str, tuple[str, str]] = {}
    downs: dict[str, str] = {}
    for path in sorted(source.directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE.match(path.name)
        if match is None:
            raise MigrationError(
                f"{path} is not named like 0001_name.up.sql or 0001_name.down.sql "
                "(lower-case name, digits first)"
            )
        version, name = match["version"], match["name"]
        if match["direction"] == "up":
            if version in ups:
                raise MigrationError(
                    f"version {version} appears twice in {source.directory}: "
                    f"{ups[version][0]} and {name}"
                )
            ups[version] = (name, path.read_text())
        else:
            downs[f"{version}_{name}"] = path.read_text()
    orphans = set(downs) - {f"{v}_{n}" for v, (n, _) in ups.items()}
    if orphans:
        raise MigrationError(
            f"down steps without an up step in {source.directory}: {sorted(orphans)}"
        )

    migrations: list[Migration] = []
    previous: str | None = None
    for version in sorted(ups, key=int):
        name, up_sql = ups[version]
        depends, transactional, replaces = _headers(up_sql, source, f"{version}_{name}")
        if previous is not None:
            depends = (previous, *depends)
        migration = Migration(
            namespace=source.namespace,
            version=version,
            name=name,
            up_sql=up_sql,
            down_sql=downs.get(f"{version}_{name}"),
            depends=depends,
            transactional=transactional,
            replaces=replaces,
            path=source.directory / f"{version}_{name}.up.sql",
        )
        migrations.append(migration)
        previous = migration.key
    return migrations


def _headers(
    up_sql: str, source: MigrationSource, ident: str
) -> tuple[tuple[str, ...], bool, tuple[str, ...]]:
    depends: list[str] = []
    replaces: list[str] = []
    transactional = True
    for line in up_sql.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break
        header = _HEADER.match(stripped)
        if header is None:
            continue
        key = header["key"].lower()
        if key == "depends":
            for ref in filter(None, (r.strip() for r in header["value"].split(","))):
                depends.append(ref if ":" in ref else f"{source.namespace}:{ref}")
        elif key == "replaces":
            for checksum in filter(None, (c.strip() for c in header["value"].split(","))):
                if not _CHECKSUM.match(checksum):
                    raise MigrationError(
                        f"{source.namespace}:{ident}: '-- replaces:' takes SHA-256 checksums "
                        f"(64 lower-case hex digits, as `migrate status` records them), "
                        f"not {checksum[:80]!r}"
                    )
                replaces.append(checksum)
        else:
            value = header["value"].lower()
            if value not in ("true", "false"):
                raise MigrationError(
                    f"{source.namespace}:{ident}: '-- transaction:' takes true or false, not {value!r}"
                )
            transactional = value == "true"
    return tuple(depends), transactional, tuple(replaces)


def _ordered(migrations: list[Migration]) -> list[Migration]:
    keys = [m.key for m in migrations]
    rank = {key: i for i, key in enumerate(keys)}
    edges: dict[str, set[str]] = {key: set() for key in keys}
    for migration in migrations:
        for ref in migration.depends:
            dependency = resolve(ref, migrations) if ref not in rank else None
            target = dependency.key if dependency else ref
            if target == migration.key:
                raise MigrationError(f"{migration.key} depends on itself")
            edges[migration.key].add(target)
    # From here on a migration's dependencies are full keys, whatever form the file used.
    by_key = {m.key: replace(m, depends=tuple(sorted(edges[m.key]))) for m in migrations}
    waiting = {key: len(deps) for key, deps in edges.items()}
    dependents: dict[str, list[str]] = {key: [] for key in keys}
    for key, deps in edges.items():
        for dep in deps:
            dependents[dep].append(key)
    ready = [(rank[key], key) for key, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    ordered: list[Migration] = []
    while ready:
        _, key = heapq.heappop(ready)
        ordered.append(by_key[key])
        for dependent in dependents[key]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, (rank[dependent], dependent))
    if len(ordered) != len(migrations):
        stuck = sorted(key for key, count in waiting.items() if count > 0)
        raise MigrationError(f"migrations depend on each other in a cycle: {stuck}")
    return ordered
