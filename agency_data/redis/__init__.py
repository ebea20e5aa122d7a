"""Redis / Valkey plumbing: the client factory and error translation."""

from agency_data.redis.client import RedisClient, make_client
from agency_data.redis.errors import translate_errors

__all__ = ["RedisClient", "make_client", "translate_errors"]
