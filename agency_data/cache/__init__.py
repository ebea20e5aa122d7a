"""The cache: in-process L1 in front of Redis L2, with tags, patterns and cross-process invalidation."""

from agency_data.cache.codec import Codec
from agency_data.cache.store import Cache
from agency_data.redis.keys import escape_glob

__all__ = ["Cache", "Codec", "escape_glob"]
