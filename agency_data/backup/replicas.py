"""Streaming standbys of the embedded server: make one, promote it, re-attach an old primary.

``agency-data replica create`` copies the running primary with ``pg_basebackup`` and leaves
a standby that follows it over the primary's socket through a physical replication slot;
a DataLayer with ``embedded.replicas`` naming its folder starts it and sends lag-tolerant
reads there (:mod:`agency_data.postgres.replicas`). ``promote`` makes a standby the primary
(failover); ``rejoin`` rewinds a former primary with ``pg_rewind`` and makes it a standby of
the new one, so the pair is whole again without copying the whole database.

These calls start and stop servers and wait for them; they block, and the CLI runs them as
they are. A server somebody else uses is left running: each call takes a lease, as a
DataLayer does, and only the last user out stops a server.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path

import psycopg
import psycopg.conninfo
from psycopg import sql
from pydantic import BaseModel

from agency_data.embedded import EmbeddedPostgres
from agency_data.embedded.postgres import (
    REWIND_ROLE,
    cluster_dir,
    holds_cluster,
    holds_standby,
    unquote_setting,
)
from agency_data.errors import BackupError, EmbeddedServerError

__all__ = [
    "ReplicaStatus",
    "create_replica",
    "drop_replica",
    "promote_replica",
    "rejoin_primary",
    "slot_name",
]

_SLOT_PREFIX = "agency_replica_"
# name = 'value' (quotes doubled inside), as PostgreSQL writes postgresql.auto.conf.
_SETTING = re.compile(r"^\s*(?P<name>[a-z_]+)\s*=\s*'(?P<value>(?:[^'\\]|''|\\.)*)'\s*$")


class ReplicaStatus(BaseModel):
    """Where a standby stands against its primary, as the primary sees it."""

    data_dir: Path
    slot: str
    streaming: bool
    lag_bytes: int | None


def slot_name(data_dir: Path) -> str:
    """The replication slot the primary keeps for the standby in ``data_dir``."""
    digest = hashlib.sha256(str(data_dir.expanduser().resolve()).encode()).hexdigest()[:16]
    return _SLOT_PREFIX + digest


def create_replica(
    primary_dir: Path,
    data_dir: Path,
    *,
    settings: Mapping[str, str] | None = None,
    start_timeout: float = 60.0,
) -> ReplicaStatus:
    """Make a streaming standby of the embedded primary in ``primary_dir`` in ``data_dir``.

    The primary is started if it is not running. The standby is started once to see that it
    streams, then left as a DataLayer (with ``embedded.replicas``) or ``agency-data up``
    will start it. ``settings`` are both servers' postgresql.conf settings (the config's).
    """
    if not holds_cluster(primary_dir):
        raise BackupError(f"{primary_dir} holds no embedded PostgreSQL cluster to copy")
    primary = _server(primary_dir, settings, start_timeout)
    replica = _server(data_dir, settings, start_timeout)
    if primary.pgdata.resolve() == replica.pgdata.resolve():
        raise BackupError("the standby needs a data directory of its own, not the primary's")
    if holds_cluster(data_dir):
        # Before any slot is touched: this folder's standby may still need its own.
        raise BackupError(
            f"{data_dir} holds a PostgreSQL cluster already; a standby is made in a new or "
            "empty data directory"
        )
    slot = slot_name(data_dir)
    primary.acquire()
    try:
        if _in_recovery(primary):
            raise BackupError(
                f"the server in {primary_dir} is itself a standby; make the new standby from "
                "the primary"
            )
        _drop_idle_slot(primary, slot)  # a failed earlier attempt's
        return _made_standby(
            primary, replica, slot, lambda: replica.clone_from(primary, slot), start_timeout
        )
    finally:
        primary.release()


def promote_replica(
    data_dir: Path,
    *,
    settings: Mapping[str, str] | None = None,
    start_timeout: float = 60.0,
    force: bool = False,
) -> None:
    """Make the standby in ``data_dir`` a primary that takes writes (failover).

    Started first if it is not running. Clients with a multi-host DSN
    (``host=a,b target_session_attrs=read-write``) find it at their next connection. Refused
    while the primary it follows still answers, unless ``force``: two primaries would both
    take writes, and one's would be lost.
    """
    if not holds_cluster(data_dir):
        raise BackupError(f"{data_dir} holds no standby to promote")
    if not holds_standby(data_dir):
        raise BackupError(
            f"{data_dir} holds a primary already (promoted before, or never a standby)"
        )
    server = _server(data_dir, settings, start_timeout)
    server.acquire()
    try:
        if not force and (followed := _answering_primary(data_dir)) is not None:
            raise BackupError(
                f"the primary this standby follows ({followed}) still answers: stop it first "
                "(a failover replaces a primary that is gone), or promote with --force and "
                "keep it from taking writes"
            )
        server.promote()
    finally:
        server.release()


def drop_replica(data_dir: Path, *, start_timeout: float = 60.0) -> str:
    """Remove the standby in ``data_dir``: its replication slot on the primary it follows,
    then its copy of the data; returns where that primary is.

    The standby must be stopped (no DataLayer using it: take it out of ``embedded.replicas``
    first), and the primary it follows must answer, so that its slot goes too (a slot left
    behind holds WAL for nobody). A promoted standby is a primary now and is refused.
    """
    if not holds_cluster(data_dir):
        raise BackupError(f"{data_dir} holds no PostgreSQL cluster")
    if not holds_standby(data_dir):
        raise BackupError(f"{data_dir} holds a primary, not a standby; it is not dropped")
    replica = _server(data_dir, None, start_timeout)
    if replica.is_running():
        raise BackupError(
            f"the standby in {data_dir} is running: stop every process that uses it (remove "
            "it from embedded.replicas), then drop it"
        )
    conninfo, slot = _followed(data_dir)
    where = "the primary it follows"
    if slot:
        try:
            where = str(psycopg.conninfo.conninfo_to_dict(conninfo).get("host") or where)
            with psycopg.connect(
                conninfo, dbname="postgres", autocommit=True, connect_timeout=10
            ) as conn:
                conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name = %s",
                    [slot],
                )
        except psycopg.Error as exc:
            raise BackupError(
                f"the primary this standby follows ({where}) did not answer ({exc}); start "
                f"it and drop again, so that its slot {slot} goes too (or drop the slot there "
                f"yourself: SELECT pg_drop_replication_slot('{slot}'))"
            ) from exc
    shutil.rmtree(cluster_dir(data_dir))
    return where


def rejoin_primary(
    old_dir: Path,
    primary_dir: Path,
    *,
    settings: Mapping[str, str] | None = None,
    start_timeout: float = 60.0,
) -> ReplicaStatus:
    """Make the former primary in ``old_dir`` a standby of the one in ``primary_dir``.

    ``pg_rewind`` copies back only the blocks the old primary changed after the histories
    parted (writes nobody acknowledged through a synchronous standby, or that the failover
    gave up); the old server must be stopped (or dead: it is recovered first).
    """
    if not holds_cluster(old_dir):
        raise BackupError(f"{old_dir} holds no embedded PostgreSQL cluster to rejoin")
    if not holds_cluster(primary_dir):
        raise BackupError(f"{primary_dir} holds no embedded PostgreSQL cluster to follow")
    old = _server(old_dir, settings, start_timeout)
    primary = _server(primary_dir, settings, start_timeout)
    if old.is_running():
        raise BackupError(
            f"the server in {old_dir} is running: stop every process that uses it (a "
            "former primary must not take writes), then rejoin it"
        )
    slot = slot_name(old_dir)
    primary.acquire()
    try:
        if _in_recovery(primary):
            raise BackupError(f"the server in {primary_dir} is a standby, not a primary")
        with _connect(primary) as conn:
            conn.execute(
                "SELECT pg_create_physical_replication_slot(%s, true) WHERE NOT EXISTS "
                "(SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
                [slot, slot],
            )
            _grant_rewind(conn)
        return _made_standby(
            primary, old, slot, lambda: old.rewind_from(primary, slot), start_timeout
        )
    finally:
        primary.release()


def _made_standby(
    primary: EmbeddedPostgres,
    standby: EmbeddedPostgres,
    slot: str,
    make: Callable[[], None],
    timeout: float,
) -> ReplicaStatus:
    """``make`` the standby (its slot on ``primary`` made already), start it, see it stream."""
    try:
        make()
    except BaseException:
        with suppress(EmbeddedServerError, psycopg.Error):
            # Else the slot would hold WAL for a standby that never came.
            _drop_idle_slot(primary, slot)
        raise
    standby.acquire()
    try:
        return _wait_streaming(primary, standby.data_dir, slot, timeout)
    finally:
        standby.release()


def _server(
    data_dir: Path, settings: Mapping[str, str] | None, start_timeout: float
) -> EmbeddedPostgres:
    return EmbeddedPostgres(data_dir, start_timeout=start_timeout, settings=settings)


def _connect(server: EmbeddedPostgres) -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(server.dsn("postgres"), autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise EmbeddedServerError(
            f"cannot reach the embedded server in {server.data_dir}: {exc}", server="postgres"
        ) from exc


def _in_recovery(server: EmbeddedPostgres) -> bool:
    with _connect(server) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def _grant_rewind(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    # pg_rewind reads the new primary's files through these functions, and needs no more.
    role = sql.Identifier(REWIND_ROLE)
    conn.execute(
        sql.SQL(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {name}) THEN "
            "CREATE ROLE {role} LOGIN; END IF; END $$"
        ).format(name=sql.Literal(REWIND_ROLE), role=role)
    )
    for function in (
        "pg_ls_dir(text, boolean, boolean)",
        "pg_stat_file(text, boolean)",
        "pg_read_binary_file(text)",
        "pg_read_binary_file(text, bigint, bigint, boolean)",
    ):
        conn.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION pg_catalog." + function + " TO {}").format(role)
        )


def _followed(data_dir: Path) -> tuple[str, str]:
    """The conninfo and slot of the primary the standby in ``data_dir`` follows, as its
    ``postgresql.auto.conf`` names them (the last of each wins, as for the server)."""
    found: dict[str, str] = {}
    try:
        lines = (cluster_dir(data_dir) / "postgresql.auto.conf").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        match = _SETTING.match(line)
        if match:
            found[match["name"]] = unquote_setting(match["value"])
    return found.get("primary_conninfo", ""), found.get("primary_slot_name", "")


def _answering_primary(data_dir: Path) -> str | None:
    """Where the primary that the standby in ``data_dir`` follows is, if it still answers."""
    conninfo, _ = _followed(data_dir)
    if not conninfo:
        return None
    try:
        with psycopg.connect(conninfo, connect_timeout=3, dbname="postgres") as conn:
            conn.execute("SELECT 1")
        host = psycopg.conninfo.conninfo_to_dict(conninfo).get("host")
    except psycopg.Error:
        return None
    return str(host or "the configured primary")


def _drop_idle_slot(primary: EmbeddedPostgres, slot: str) -> None:
    with _connect(primary) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s AND NOT active",
            [slot],
        )


def _wait_streaming(
    primary: EmbeddedPostgres, data_dir: Path, slot: str, timeout: float
) -> ReplicaStatus:
    deadline = time.monotonic() + timeout
    with _connect(primary) as conn:
        while True:
            row = conn.execute(
                "SELECT s.active, pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint "
                "FROM pg_replication_slots s "
                "LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid "
                "WHERE s.slot_name = %s",
                [slot],
            ).fetchone()
            if row is not None and row[0] and row[1] is not None:
                return ReplicaStatus(data_dir=data_dir, slot=slot, streaming=True, lag_bytes=row[1])
            if time.monotonic() > deadline:
                raise BackupError(
                    f"the standby in {data_dir} did not start streaming from the primary "
                    f"within {timeout:.0f} s; see {data_dir / 'postgres.log'}"
                )
            time.sleep(0.1)
