"""LangGraph on agency-data (``pip install 'agency-data[langgraph]'``).

:class:`AgencyCheckpointSaver`: LangGraph's checkpointer (short-term memory: a thread's
checkpoints and pending writes), stored in agency-data's schema, per tenant.
:class:`AgencyStore`: LangGraph's ``BaseStore`` (long-term memory shared across threads): items
in PostgreSQL under row-level security, semantic search through an agency-data collection's
vector index, TTLs with refresh on read and a sweeper; async and sync.
"""

try:
    import langgraph.checkpoint.base  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "agency_data.integrations.langgraph needs LangGraph: pip install 'agency-data[langgraph]'"
    ) from exc

from agency_data.integrations.langgraph.checkpoint import AgencyCheckpointSaver
from agency_data.integrations.langgraph.store import AgencyStore, InvalidNamespace

__all__ = ["AgencyCheckpointSaver", "AgencyStore", "InvalidNamespace"]
