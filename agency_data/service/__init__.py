"""The service: the data layer over HTTP (``agency-data serve``) and MCP (``agency-data mcp``).

Needs the ``service`` extra: ``pip install 'agency-data[service]'``.
"""

from agency_data.service.app import create_app, openapi_document

__all__ = ["create_app", "openapi_document"]
