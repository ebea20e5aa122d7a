"""Standbys under folders whose paths need quoting (a quote in the name): rejoin and drop."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from agency_data.backup.replicas import create_replica, promote_replica, rejoin_primary
from agency_data.embedded import EmbeddedPostgres
from tests.conftest import FAST_POSTGRES as _FAST
from tests.conftest import reachable_dir

FAST_POSTGRES = {**_FAST, "full_page_writes": "on"}

pytestmark = pytest.mark.timeout(240)


def _in_recovery(folder: Path) -> bool:
    with psycopg.connect(EmbeddedPostgres(folder).dsn("postgres"), autocommit=True) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    assert row is not None
    return bool(row[0])


def test_rejoin_under_a_folder_with_a_quote(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = reachable_dir(tmp_path_factory) / "it's"
    folder.mkdir()
    folder.chmod(0o711)
    old, new = folder / "a", folder / "b"
    try:
        first = EmbeddedPostgres(old, settings=FAST_POSTGRES)
        first.acquire()
        first.release(stop_if_last=False)
        create_replica(old, new, settings=FAST_POSTGRES, start_timeout=60)
        for server in (EmbeddedPostgres(old), EmbeddedPostgres(new)):
            if server.is_running():
                server.stop()
        promote_replica(new, settings=FAST_POSTGRES, start_timeout=60)
        status = rejoin_primary(old, new, settings=FAST_POSTGRES, start_timeout=30)
        print(status)
        server = EmbeddedPostgres(old)
        server.acquire()
        try:
            assert _in_recovery(old)
        finally:
            server.release(stop_if_last=False)
    finally:
        for path in (old, new):
            server = EmbeddedPostgres(path)
            if server.is_running():
                server.stop()


def test_drop_under_a_folder_with_a_quote(tmp_path_factory: pytest.TempPathFactory) -> None:
    from agency_data.backup.replicas import drop_replica, slot_name

    folder = reachable_dir(tmp_path_factory) / "it's"
    folder.mkdir()
    folder.chmod(0o711)
    primary, standby = folder / "a", folder / "b"
    first = EmbeddedPostgres(primary, settings=FAST_POSTGRES)
    first.acquire()
    try:
        create_replica(primary, standby, settings=FAST_POSTGRES, start_timeout=60)
        replica = EmbeddedPostgres(standby)
        if replica.is_running():
            replica.stop()
        drop_replica(standby, start_timeout=30)
        with psycopg.connect(first.dsn("postgres"), autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                [slot_name(standby)],
            ).fetchone()
        assert row is not None
        assert row[0] == 0
    finally:
        first.release(stop_if_last=False)
        for path in (primary, standby):
            server = EmbeddedPostgres(path)
            if server.is_running():
                server.stop()
