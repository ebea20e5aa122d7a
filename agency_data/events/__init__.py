"""Store events: task, agent and embedding changes published through the outbox in the
changes' own transactions (``events`` config), and subscriptions to them (``dl.events``)."""

from agency_data.events.names import EVENTS, SETTING
from agency_data.events.subscriber import Events

__all__ = ["EVENTS", "SETTING", "Events"]
