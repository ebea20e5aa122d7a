"""LangGraph on agency-data (``pip install agency-data[langgraph]``).

:class:`AgencyStore` is LangGraph's ``BaseStore`` (long-term memory shared across threads):
items in PostgreSQL under row-level security, semantic search through an agency-data
collection's vector index, TTLs with refresh on read and a sweeper; async and sync.
"""

from agency_data.integrations.langgraph.store import AgencyStore, InvalidNamespace

__all__ = ["AgencyStore", "InvalidNamespace"]
