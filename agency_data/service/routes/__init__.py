"""The service's resources, one module each; :data:`ROUTERS` lists them for the app."""

from __future__ import annotations

from typing import Any

from agency_data.service.routes import health
from agency_data.service.routes.agents import AgentsController
from agency_data.service.routes.collections import CollectionsController
from agency_data.service.routes.embeddings import EmbeddingsController
from agency_data.service.routes.events import EventsController
from agency_data.service.routes.memory import MemoryController

__all__ = ["PUBLIC_PATHS", "ROUTERS"]

ROUTERS: list[Any] = [
    *health.ROUTES,
    AgentsController,
    CollectionsController,
    EmbeddingsController,
    MemoryController,
    EventsController,
]
"""Every route handler and controller of the API."""

PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"})
"""Paths served without a key."""
