"""The ``agency-data`` command line: a thin layer over the public API.

Output habits: results go to stdout, errors (``error: ...``), warnings and questions to stderr.
When stdout is not a terminal, output is plain text that is never wrapped nor cut, so that
``agency-data migrate up --dry-run > plan.sql`` saves valid SQL and scripts can read tables.
Exit codes: 0 done, 1 declined (or ``health``: degraded), 2 error (or ``health``: down).
"""

from agency_data.cli.main import app

__all__ = ["app"]
