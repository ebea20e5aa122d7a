"""The three least-privilege roles, their grants, and the checks that warn when they are not used.

- the **owner** runs migrations, DDL and backups, owns the tables, and (when a superuser set
  it up) bypasses row-level security, which it could turn off on its own tables anyway;
- the **application** role is the pool's: not a superuser, owns nothing, cannot bypass row-level
  security, and may only read and write rows (and read the collections catalog);
- the **read-only** role may only read.

``setup_roles`` is idempotent: run it again and it changes only what is missing. Passwords are
sent as SCRAM verifiers computed on the client, so no password appears in a statement (or the
server's log of it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import tuple_row

from agency_data.config import PostgresConfig
from agency_data.errors import PermissionDenied
from agency_data.postgres.errors import to_agency_error

__all__ = [
    "RoleNames",
    "grant_privileges",
    "role_warnings",
    "setup_roles",
    "use_owner_role",
]

_log = logging.getLogger("agency_data.security")

# What the application role may do to the catalog of collections: read it. Collections are
# made and dropped by the owner.
_CATALOG = "embedding_collections"
# The advisory lock key that serialises role setup (any fixed number of our own).
_SETUP_LOCK = 0x5F0C7D1A2B3C4D5E


@dataclass(frozen=True)
class RoleNames:
    """The names of the owner, application and read-only roles."""

    owner: str
    app: str
    readonly: str

    @classmethod
    def from_config(cls, config: PostgresConfig) -> RoleNames:
        """The names configured in ``postgresql.owner_role`` / ``app_role`` / ``readonly_role``."""
        return cls(owner=config.owner_role, app=config.app_role, readonly=config.readonly_role)


_GRANT_TRIES = 5


async def setup_roles(
    conn: AsyncConnection[Any],
    names: RoleNames,
    *,
    passwords: Mapping[str, str] | None = None,
    adopt_from: str | None = None,
    migrations_table: str = "agency_data_migrations",
) -> list[str]:
    """Create the roles and grants in ``conn``'s database; return what was done, line by line.

    ``conn`` needs the rights to do it (a superuser, or a role with CREATEROLE that owns the
    database). ``passwords`` maps role names to passwords to set. ``adopt_from`` hands the
    objects of schema public owned by that role (an older release's superuser-owned schema)
    to the owner.
    """
    try:
        # Processes starting together would race to create the same roles and extension.
        await conn.execute("SELECT pg_advisory_lock(%s)", [_SETUP_LOCK])
        try:
            return await _setup_roles(conn, names, passwords, adopt_from, migrations_table)
        finally:
            if not conn.closed:
                await conn.execute("SELECT pg_advisory_unlock(%s)", [_SETUP_LOCK])
    except psycopg.Error as exc:
        raise _denied(exc, "setting up the roles") from exc


async def _setup_roles(
    conn: AsyncConnection[Any],
    names: RoleNames,
    passwords: Mapping[str, str] | None,
    adopt_from: str | None,
    migrations_table: str,
) -> list[str]:
    done: list[str] = []
    # Everything there is to know, in one round trip: this runs at every embedded start.
    rights = await _row(
        conn,
        "SELECT r.rolname, r.rolsuper, r.rolcreaterole, pg_has_role(r.oid, d.datdba, 'MEMBER'), "
        "d.datname, pg_get_userbyid(d.datdba), "
        "EXISTS (SELECT FROM pg_extension WHERE extname = 'vector'), "
        "EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_trgm') "
        "FROM pg_roles r, pg_database d "
        "WHERE r.rolname = current_user AND d.datname = current_database()",
    )
    (user, superuser, createrole, owns_database, database, database_owner, has_vector, has_trgm) = (
        rights
    )
    # GRANT without the right only warns in PostgreSQL: check first, rather than report
    # success after doing nothing.
    if not (superuser or (createrole and owns_database)):
        raise PermissionDenied(
            f"role {user} can neither create roles nor grant on database {database}; run the "
            "role setup as a superuser, or as a role with CREATEROLE that owns the database "
            "(postgresql.admin_dsn)"
        )
    existing = {
        row[0]: (row[1], row[2])
        for row in await _rows(
            conn,
            "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = ANY(%s)",
            [[names.owner, names.app, names.readonly]],
        )
    }
    for name in (names.owner, names.app, names.readonly):
        if name not in existing:
            await conn.execute(
                sql.SQL(
                    "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                    "NOREPLICATION NOBYPASSRLS"
                ).format(sql.Identifier(name))
            )
            done.append(f"created role {name}")
    # The owner may turn row-level security off on its tables anyway; bypassing it lets
    # it back every tenant's rows up (pg_dump) and administer across tenants. Only a
    # superuser may grant it.
    if superuser and not existing.get(names.owner, (False, False))[1]:
        await conn.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(names.owner)))
        done.append(f"let {names.owner} bypass row-level security (backups, administration)")
    for name in (names.app, names.readonly):
        if any(existing.get(name, (False, False))):
            if not superuser:
                raise PermissionDenied(
                    f"role {name} is a superuser or bypasses row-level security, and only "
                    "a superuser can take that away; run this as a superuser"
                )
            await conn.execute(
                sql.SQL("ALTER ROLE {} NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(name))
            )
            done.append(f"took superuser and BYPASSRLS away from {name}")
    for name, password in (passwords or {}).items():
        verifier = conn.pgconn.encrypt_password(password.encode(), name.encode(), b"scram-sha-256")
        await conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(verifier.decode())
            )
        )
        done.append(f"set the password of {name}")
    db = sql.Identifier(database)
    await conn.execute(
        sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}, {}, {}").format(
            db, *(sql.Identifier(n) for n in (names.owner, names.app, names.readonly))
        )
    )
    if superuser and database_owner != names.owner:
        await conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, sql.Identifier(names.owner))
        )
        done.append(f"made {names.owner} the owner of database {database}")
    if not has_vector:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        done.append("created the vector extension")
    if not has_trgm:
        # Trusted, so the owner could create it too, but only in a database it owns: made here,
        # it is there for an owner role that does not own the database (the knowledge graph's
        # name search, migration 0019).
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        done.append("created the pg_trgm extension")
    await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    await conn.execute(
        sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(sql.Identifier(names.owner))
    )
    await conn.execute(
        sql.SQL("GRANT USAGE ON SCHEMA public TO {}, {}").format(
            sql.Identifier(names.app), sql.Identifier(names.readonly)
        )
    )
    if adopt_from is not None and await _adopt(conn, adopt_from, names.owner):
        done.append(f"handed the schema's objects owned by {adopt_from} to {names.owner}")
    if not superuser and conn.info.server_version >= 160000:
        # A CREATEROLE role administers the roles it made, but may act as one only with
        # the SET option, which PostgreSQL 16 no longer grants by itself.
        await conn.execute(
            sql.SQL("GRANT {} TO CURRENT_USER WITH SET TRUE, INHERIT FALSE").format(
                sql.Identifier(names.owner)
            )
        )
    # The grants are the owner's to give; a superuser or a member acts as it for them.
    await use_owner_role(conn, names.owner)
    if await _value(conn, "SELECT current_user") != names.owner:
        raise PermissionDenied(
            f"role {user} may not act as {names.owner} (SET ROLE), so the owner's default "
            f"privileges cannot be set; grant it: GRANT {names.owner} TO {user} WITH SET TRUE"
        )
    try:
        for attempt in range(_GRANT_TRIES):
            try:
                await grant_privileges(conn, names, migrations_table=migrations_table)
                break
            except psycopg.errors.UndefinedTable:
                # Another process's migration dropped or renamed a table between the listing
                # and the grant (processes starting together on one server): list again.
                if attempt == _GRANT_TRIES - 1:
                    raise
    finally:
        await conn.execute("RESET ROLE")
    return done


async def grant_privileges(
    conn: AsyncConnection[Any], names: RoleNames, *, migrations_table: str
) -> None:
    """Grant the application and read-only roles what they need on the owner's tables.

    Runs as the owner. Tables the owner makes later get the same grants by default
    privileges; the migration history and the collections catalog stay the owner's to write.
    """
    app, readonly = sql.Identifier(names.app), sql.Identifier(names.readonly)
    statements = [
        sql.SQL(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
            "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}"
        ).format(app),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {}").format(
            readonly
        ),
        sql.SQL(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {}"
        ).format(app),
    ]
    relations_row = await _rows(
        conn,
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S') "
        "AND pg_has_role(current_user, c.relowner, 'USAGE') ORDER BY c.relname",
    )
    relations = [(str(row[0]), str(row[1])) for row in relations_row]
    tables = [sql.Identifier(name) for name, kind in relations if kind != "S"]
    sequences = [sql.Identifier(name) for name, kind in relations if kind == "S"]
    if tables:
        listed = sql.SQL(", ").join(tables)
        statements.append(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {} TO {}").format(listed, app)
        )
        statements.append(sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(listed, readonly))
    if sequences:
        statements.append(
            sql.SQL("GRANT USAGE, SELECT ON SEQUENCE {} TO {}").format(
                sql.SQL(", ").join(sequences), app
            )
        )
    names_present = {name for name, _ in relations}
    if migrations_table in names_present:
        # Readable (the migration status), never writable: the owner's record of the schema.
        statements.append(
            sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON TABLE {} FROM {}").format(
                sql.Identifier(migrations_table), app
            )
        )
    if _CATALOG in names_present:
        statements.append(
            sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON TABLE {} FROM {}").format(
                sql.Identifier(_CATALOG), app
            )
        )
    for table, kept_from_app in _READ_ONLY_TO_APP.items():
        if table in names_present:
            statements.append(
                sql.SQL("REVOKE " + kept_from_app + " ON TABLE {} FROM {}").format(
                    sql.Identifier(table), app
                )
            )
    async with conn.pipeline():  # one round trip for them all
        for statement in statements:
            await conn.execute(statement)


# Tables the application role only reads: every tenant's view runs as it, and these hold no
# tenant's rows but what every tenant depends on.
_READ_ONLY_TO_APP: dict[str, LiteralString] = {
    # The audit trail: records are added through SECURITY DEFINER functions, as the owner
    # (migration 0010); the owner's edits break the chain.
    "audit_pending": "INSERT, UPDATE, DELETE, TRUNCATE",
    "audit_log": "INSERT, UPDATE, DELETE, TRUNCATE",
    "audit_heads": "INSERT, UPDATE, DELETE, TRUNCATE",
    # Commit order and how far the relays and the feed's pruner have got (migration 0016):
    # written by the commit-order trigger and the relay, as the owner. A tenant's SQL that
    # moved them would make the relay skip, or the feed lose, every tenant's messages.
    "commit_order": "INSERT, UPDATE, DELETE, TRUNCATE",
    "outbox_relay": "INSERT, UPDATE, DELETE, TRUNCATE",
    "change_feed": "INSERT, UPDATE, DELETE, TRUNCATE",
}


async def use_owner_role(conn: AsyncConnection[Any], owner: str) -> None:
    """Act as ``owner`` on ``conn`` when its login role may, so what it creates is the owner's.

    A superuser (or a member of the owner role) given as ``postgresql.admin_dsn`` would
    otherwise own the tables it creates, and the grants made by default privileges would
    not apply to them.
    """
    # PostgreSQL 16 split membership: SET ROLE needs the SET option, not just membership.
    may_set = "SET" if conn.info.server_version >= 160000 else "MEMBER"
    row = await _row(
        conn,
        "SELECT current_user = %s, pg_has_role(current_user, oid, %s) "
        "FROM pg_roles WHERE rolname = %s",
        [owner, may_set, owner],
    )
    if row is not None and not row[0] and row[1]:
        await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))


async def role_warnings(conn: AsyncConnection[Any]) -> list[str]:
    """What is wrong with ``conn``'s role as the pool's: superuser, BYPASSRLS, table owner."""
    row = await _row(
        conn,
        "SELECT current_user, r.rolsuper, r.rolbypassrls, "
        "ARRAY(SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "      WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') "
        "      AND pg_has_role(current_user, c.relowner, 'USAGE') ORDER BY 1) "
        "FROM pg_roles r WHERE r.rolname = current_user",
    )
    if row is None:
        return []
    user, superuser, bypass, owned = row
    warnings = []
    if superuser:
        warnings.append(
            f"the pool's role {user} is a superuser: row-level security does not apply to it, "
            "so tenant views do not protect raw SQL; use an application role (see "
            "`agency-data roles setup`)"
        )
    elif bypass:
        warnings.append(
            f"the pool's role {user} has BYPASSRLS: row-level security does not apply to it; "
            "use an application role (see `agency-data roles setup`)"
        )
    if owned:
        shown = ", ".join(owned[:5]) + (" ..." if len(owned) > 5 else "")
        warnings.append(
            f"the pool's role {user} owns tables ({shown}), so it could turn row-level "
            "security off; give the tables to an owner role and connect as an application "
            "role (postgresql.admin_dsn for the owner, see `agency-data roles setup`)"
        )
    return warnings


async def _adopt(conn: AsyncConnection[Any], previous: str, owner: str) -> bool:
    # Objects that belong to an extension (pgvector's functions) stay the extension's.
    pending = await _value(
        conn,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm') "
        "AND pg_get_userbyid(c.relowner) = %s",
        [previous],
    )
    if not pending:
        return False
    await conn.execute(
        sql.SQL(
            """DO $adopt$
            DECLARE
                object record;
            BEGIN
                FOR object IN
                    SELECT c.oid::regclass AS name FROM pg_class c
                    JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')
                    AND pg_get_userbyid(c.relowner) = {previous}
                    AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
                LOOP
                    EXECUTE format('ALTER TABLE %s OWNER TO %I', object.name, {owner});
                END LOOP;
                FOR object IN
                    SELECT p.oid::regprocedure AS name FROM pg_proc p
                    JOIN pg_namespace n ON n.oid = p.pronamespace
                    WHERE n.nspname = 'public' AND pg_get_userbyid(p.proowner) = {previous}
                    AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
                LOOP
                    EXECUTE format('ALTER FUNCTION %s OWNER TO %I', object.name, {owner});
                END LOOP;
            END
            $adopt$"""
        ).format(previous=sql.Literal(previous), owner=sql.Literal(owner))
    )
    return True


async def _row(conn: AsyncConnection[Any], query: Any, params: Any = None) -> Any:
    # Tuples whatever the connection's row factory (the pool's gives dicts).
    async with conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchone()


async def _rows(conn: AsyncConnection[Any], query: Any, params: Any = None) -> list[Any]:
    async with conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchall()


async def _value(conn: AsyncConnection[Any], query: Any, params: Any = None) -> Any:
    row = await _row(conn, query, params)
    return None if row is None else row[0]


def _denied(exc: psycopg.Error, context: str) -> Exception:
    error = to_agency_error(exc, context)
    if isinstance(error, PermissionDenied):
        return PermissionDenied(
            f"{error}; run it as a superuser, or as a role with CREATEROLE that owns the "
            "database (postgresql.admin_dsn)",
            sqlstate=error.sqlstate,
        )
    return error
