"""Coordination on Redis: sessions, pub/sub and streams, distributed locks, Lua scripts."""

from agency_data.coord.locks import Lock
from agency_data.coord.pubsub import PubSub, Streams
from agency_data.coord.scripts import ScriptRegistry
from agency_data.coord.sessions import SessionStore

__all__ = ["Lock", "PubSub", "ScriptRegistry", "SessionStore", "Streams"]
