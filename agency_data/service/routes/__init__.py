"""The service's resources, one module each; :data:`ROUTERS` lists them for the app."""

from __future__ import annotations

from typing import Any

from agency_data.service.routes import health
from agency_data.service.routes.agents import AgentsController
from agency_data.service.routes.cache import CacheController
from agency_data.service.routes.collections import CollectionsController
from agency_data.service.routes.embeddings import EmbeddingsController
from agency_data.service.routes.events import EventsController
from agency_data.service.routes.locks import LocksController
from agency_data.service.routes.memory import MemoryController
from agency_data.service.routes.sessions import SessionsController
from agency_data.service.routes.tasks import TasksController

__all__ = ["PUBLIC_PATHS", "ROUTERS"]

ROUTERS: list[Any] = [
    *health.ROUTES,
    AgentsController,
    TasksController,
    CollectionsController,
    EmbeddingsController,
    MemoryController,
    SessionsController,
    LocksController,
    CacheController,
    EventsController,
]
"""Every route handler and controller of the API."""

PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"})
"""Paths served without a key."""
