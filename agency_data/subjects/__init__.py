"""Data subject rights: export and erase what a tenant holds about one person."""

from agency_data.subjects.rights import ErasureReport, SubjectRights

__all__ = ["ErasureReport", "SubjectRights"]
