"""The audit trail: a hash-chained record of the changes to audited tables (migration 0010)."""

from agency_data.audit.trail import AuditRecord, AuditTrail, ChainReport

__all__ = ["AuditRecord", "AuditTrail", "ChainReport"]
