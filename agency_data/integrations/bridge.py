"""How an integration reaches the layer: the async object it wraps, and a portal to its loop.

Frameworks call their stores both ways, ``store.get(...)`` and ``await store.aget(...)``. The
layer is async and lives on one event loop, so an integration holds an object of the async
layer (a collection, a cache, a DataLayer or a tenant's view) and a :class:`Portal` into the
loop it lives on: built in async code, the loop running then; built on an object of the sync
front end (``agency_data.sync``), that front end's own portal.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agency_data.errors import UsageError, ValidationError
from agency_data.sync.portal import Portal

__all__ = ["reach"]


def reach(
    obj: Any, kind: type[Any], field: str, portal: Portal | None = None, *, what: str = ""
) -> tuple[Any, Portal]:
    """``obj`` (of ``kind``, or the sync front end's wrapper of one) and the portal into its
    loop; ``portal`` given wins. The error names ``field``, and ``what`` ``obj`` should be
    (default: the class's name), when ``obj`` is neither."""
    found: Any = None
    inner: Any = obj
    if not isinstance(obj, kind):
        # The sync front end's objects carry the async object they wrap and their portal.
        inner, found = getattr(obj, "aio", None), getattr(obj, "portal", None)
        if not isinstance(inner, kind) or not isinstance(found, Portal):
            raise ValidationError(
                f"{field} must be an agency-data {what or kind.__name__} (of the async layer or "
                f"of agency_data.sync), not {type(obj).__name__}",
                field=field,
            )
    if portal is not None:
        if not isinstance(portal, Portal):
            raise ValidationError(
                f"portal must be an agency_data.sync.Portal, not {type(portal).__name__}",
                field="portal",
            )
        return inner, portal
    if found is not None:
        return inner, found
    try:
        return inner, Portal.of(asyncio.get_running_loop())
    except RuntimeError:
        raise UsageError(
            f"an integration over an async {what or kind.__name__} is made inside the event loop "
            "that "
            "runs its DataLayer (or given portal=); from sync code, use the sync front end: "
            "agency_data.sync.DataLayer"
        ) from None
