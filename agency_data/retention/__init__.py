"""Retention: policies that remove old rows in bounded batches, archiving them first if asked."""

from agency_data.retention.runner import PolicyResult, Retention, RetentionReport

__all__ = ["PolicyResult", "Retention", "RetentionReport"]
