"""``python -m agency_data``: the same as the ``agency-data`` command."""

from agency_data.cli import app

app()
