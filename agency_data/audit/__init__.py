"""The audit trail: hash-chained records of changes, admin actions and chosen reads (migration
0010); see :mod:`.trail` (reading and checking), :mod:`.notes` (what the layer records itself)
and :mod:`.anchors` (chain heads logged and exported)."""

from agency_data.audit.notes import SYSTEM_TRAIL
from agency_data.audit.trail import (
    Anchor,
    AuditRecord,
    AuditTrail,
    ChainReport,
    anchors,
    chains,
)

__all__ = [
    "SYSTEM_TRAIL",
    "Anchor",
    "AuditRecord",
    "AuditTrail",
    "ChainReport",
    "anchors",
    "chains",
]
