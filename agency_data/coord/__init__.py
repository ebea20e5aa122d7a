"""Coordination on Redis: sessions, pub/sub and streams, distributed locks, Lua scripts."""

from agency_data.coord.locks import Lock
from agency_data.coord.pubsub import PubSub, Streams
from agency_data.coord.sessions import SessionStore
from agency_data.redis.scripts import ScriptRegistry

__all__ = ["Lock", "PubSub", "ScriptRegistry", "SessionStore", "Streams"]
