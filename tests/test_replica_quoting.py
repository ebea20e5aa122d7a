"""Standbys under folders whose paths need quoting (a quote in the name): rejoin and drop."""

from __future__ import annotations

import pytest

from agency_data.backup.replicas import (
    create_replica,
    drop_replica,
    promote_replica,
    rejoin_primary,
    slot_name,
)
from agency_data.embedded import EmbeddedPostgres
from tests.conftest import FAST_POSTGRES as _FAST
from tests.conftest import reachable_dir
from tests.test_replicas import Pair, scalar, stop_servers

FAST_POSTGRES = {**_FAST, "full_page_writes": "on"}

pytestmark = pytest.mark.timeout(240)


def quoted_pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    """A primary with a standby under a folder named ``it's``, the standby stopped."""
    folder = reachable_dir(tmp_path_factory) / "it's"
    folder.mkdir()
    folder.chmod(0o711)
    pair = Pair(folder)
    first = EmbeddedPostgres(pair.primary_dir, settings=FAST_POSTGRES)
    first.acquire()
    first.release(stop_if_last=False)
    create_replica(pair.primary_dir, pair.replica_dir, settings=FAST_POSTGRES, start_timeout=60)
    stop_servers(pair.replica_dir)
    return pair


def test_rejoin_under_a_folder_with_a_quote(tmp_path_factory: pytest.TempPathFactory) -> None:
    pair = quoted_pair(tmp_path_factory)
    old, new = pair.primary_dir, pair.replica_dir
    try:
        stop_servers(old)
        promote_replica(new, settings=FAST_POSTGRES, start_timeout=60)
        status = rejoin_primary(old, new, settings=FAST_POSTGRES, start_timeout=30)
        assert status.streaming
        server = EmbeddedPostgres(old)
        server.acquire()
        try:
            assert scalar(pair.superuser(old), "SELECT pg_is_in_recovery()") is True
        finally:
            server.release(stop_if_last=False)
    finally:
        stop_servers(old, new)


def test_drop_under_a_folder_with_a_quote(tmp_path_factory: pytest.TempPathFactory) -> None:
    pair = quoted_pair(tmp_path_factory)
    first = EmbeddedPostgres(pair.primary_dir, settings=FAST_POSTGRES)
    first.acquire()
    try:
        drop_replica(pair.replica_dir, start_timeout=30)
        assert pair.slots(slot_name(pair.replica_dir)) == 0
    finally:
        first.release(stop_if_last=False)
        stop_servers(pair.primary_dir, pair.replica_dir)
