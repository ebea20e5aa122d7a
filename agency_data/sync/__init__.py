"""The synchronous front end of agency-data (see :mod:`agency_data.sync.portal`)."""

from agency_data.sync.portal import Portal

__all__ = ["Portal"]
