"""Integrations with agent frameworks, each an optional extra of its own.

``agency_data.integrations.langchain`` (``pip install 'agency-data[langchain]'``): a LangChain
VectorStore over a collection, a ByteStore and an LLM cache. ``agency_data.integrations.langgraph``
(``pip install 'agency-data[langgraph]'``): LangGraph's checkpointer and long-term memory store on
agency-data. The core package never imports these modules; each imports its framework, and says
which extra to install when the framework is missing.
"""
