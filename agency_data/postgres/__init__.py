"""PostgreSQL plumbing: the connection pool and error translation."""

from agency_data.postgres.errors import translate_errors
from agency_data.postgres.pool import Pool, open_pool

__all__ = ["Pool", "open_pool", "translate_errors"]
