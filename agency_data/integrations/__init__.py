"""Integrations with agent frameworks, each an optional extra of its own.

- :mod:`agency_data.integrations.langgraph` (``pip install agency-data[langgraph]``):
  LangGraph's long-term memory store on agency-data.

Nothing here is imported by the core package: import the integration you use.
"""
