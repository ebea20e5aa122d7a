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
from langchain_core.outputs import Generation

from agency_data.cache.store import Cache
from agency_data.errors import ValidationError
from agency_data.inputs import as_items, brief, check_seconds, utf8_size
from agency_data.integrations.bridge import reach
from agency_data.sync.portal import Portal

__all__ = ["AgencyLLMCache"]

# What langchain_core.load.dumpd writes for a value it cannot serialize.
_NOT_SERIALIZABLE = b'"type":"not_implemented"'


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
        key = _key(prompt, llm_string)
        stored = await self._cache.get(key)
        if stored is None:
            return None
        try:
            with warnings.catch_warnings():
                # load is beta in langchain-core; its "core" allow-list is what we rely on.
                warnings.simplefilter("ignore", LangChainBetaWarning)
                generations = [load(g, allowed_objects="core") for g in stored]
            if all(isinstance(g, Generation) for g in generations):
                return generations
        except Exception:  # noqa: BLE001 - an entry LangChain cannot read back is a miss
            pass
        # Written by another version, or by hand: the model is asked again, and it replaces it.
        await self._cache.delete(key)
        return None

    async def _update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        key = _key(prompt, llm_string)
        items = as_items(return_val, "return_val")
        for n, generation in enumerate(items):
            if not isinstance(generation, Generation):
                raise ValidationError(
                    f"return_val[{n}] must be a LangChain Generation, not {brief(generation)}",
                    field=f"return_val[{n}]",
                )
        dumped = [dumpd(g) for g in items]
        if _NOT_SERIALIZABLE in orjson.dumps(dumped):
            raise ValidationError(
                "return_val holds values LangChain cannot serialize (it would write a "
                "placeholder that cannot be read back): keep generation_info to JSON values",
                field="return_val",
            )
        # LangChain's JSON form, as plain JSON values (what the cache's codec stores).
        await self._cache.set(key, orjson.loads(orjson.dumps(dumped)), ttl=self._ttl)

    async def _clear(self) -> None:
        await self._cache.clear()


def _key(prompt: str, llm_string: str) -> str:
    for value, field in ((prompt, "prompt"), (llm_string, "llm_string")):
        if not isinstance(value, str):
            raise ValidationError(f"{field} must be a string, not {brief(value)}", field=field)
        utf8_size(value, field)  # unpaired surrogates: no digest can be taken
    digest = hashlib.sha256(orjson.dumps([prompt, llm_string])).hexdigest()
    return f"llm:{digest}"
