"""A LangChain LLM cache (``BaseCache``) on agency-data's cache: L1 in the process, L2 in Redis.

Usage::

    from langchain_core.globals import set_llm_cache
    set_llm_cache(AgencyLLMCache(dl.tenant("acme").cache, ttl=3600))

A model's answer to a prompt is kept under a digest of the prompt and the model's settings (the
``llm_string`` LangChain passes), in a namespace of the tenant's cache (``langchain`` unless
told otherwise), for ``ttl`` seconds (the cache's ``default_ttl`` without one). Entries are
LangChain's own JSON form of the generations, read back only as LangChain's core classes
(``langchain_core.load`` with ``allowed_objects="core"``): nothing is unpickled. Redis being
down makes the cache miss, as agency-data's cache does, so the model is asked again.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import orjson
from langchain_core._api import LangChainBetaWarning
from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.load import dumpd, load

from agency_data.cache.store import Cache
from agency_data.errors import ValidationError
from agency_data.inputs import brief, check_seconds
from agency_data.integrations.bridge import reach
from agency_data.sync.portal import Portal

__all__ = ["AgencyLLMCache"]


class AgencyLLMCache(BaseCache):
    """LangChain's LLM cache on an agency-data :class:`~agency_data.Cache` (see the module's
    docstring); ``cache`` is the async layer's (``dl.cache``, a tenant's) or the sync front
    end's."""

    def __init__(
        self,
        cache: Any,
        *,
        ttl: float | None = None,
        namespace: str = "langchain",
        portal: Portal | None = None,
    ) -> None:
        inner, self._portal = reach(cache, Cache, "cache", portal)
        self._cache: Cache = inner.with_namespace(namespace)
        self._ttl = None if ttl is None else check_seconds(ttl, "ttl", low=0.001)

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """The generations cached for ``prompt`` by the model of ``llm_string``, or None."""
        return self._portal.call(self._lookup(prompt, llm_string))

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """The generations cached for ``prompt`` by the model of ``llm_string``, or None."""
        return await self._portal.acall(self._lookup(prompt, llm_string))

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Cache the model's generations for ``prompt``."""
        self._portal.call(self._update(prompt, llm_string, return_val))

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Cache the model's generations for ``prompt``."""
        await self._portal.acall(self._update(prompt, llm_string, return_val))

    def clear(self, **kwargs: Any) -> None:
        """Remove every cached generation of this cache's namespace."""
        self._portal.call(self._clear())

    async def aclear(self, **kwargs: Any) -> None:
        """Remove every cached generation of this cache's namespace."""
        await self._portal.acall(self._clear())

    async def _lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        stored = await self._cache.get(_key(prompt, llm_string))
        if stored is None:
            return None
        with warnings.catch_warnings():
            # load is marked beta in langchain-core; its "core" allow-list is what we rely on.
            warnings.simplefilter("ignore", LangChainBetaWarning)
            generations: RETURN_VAL_TYPE = [load(g, allowed_objects="core") for g in stored]
        return generations

    async def _update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        key = _key(prompt, llm_string)
        # LangChain's JSON form, as plain JSON values (what the cache's codec stores).
        value = orjson.loads(orjson.dumps([dumpd(g) for g in return_val]))
        await self._cache.set(key, value, ttl=self._ttl)

    async def _clear(self) -> None:
        await self._cache.clear()


def _key(prompt: str, llm_string: str) -> str:
    for value, field in ((prompt, "prompt"), (llm_string, "llm_string")):
        if not isinstance(value, str):
            raise ValidationError(f"{field} must be a string, not {brief(value)}", field=field)
    digest = hashlib.sha256(orjson.dumps([prompt, llm_string])).hexdigest()
    return f"llm:{digest}"
