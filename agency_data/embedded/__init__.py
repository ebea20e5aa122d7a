"""Embedded servers: PostgreSQL and Valkey started by the library when none is configured.

Both keep their data under one data directory and are shared by every process pointed at it;
the last process to close stops them.
"""

from agency_data.embedded._server import system_user
from agency_data.embedded.postgres import EmbeddedPostgres, postgres_bin_dir
from agency_data.embedded.valkey import EmbeddedValkey, valkey_cli

__all__ = ["EmbeddedPostgres", "EmbeddedValkey", "postgres_bin_dir", "system_user", "valkey_cli"]
