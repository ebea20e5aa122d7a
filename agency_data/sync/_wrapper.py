"""The base of the synchronous twins (``_api.py``, generated) and the helpers they call."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Self, TypeVar

from agency_data.errors import ValidationError
from agency_data.inputs import brief
from agency_data.sync.portal import Portal

__all__ = ["Wrapper", "each_callback"]

W = TypeVar("W", bound="Wrapper")


class Wrapper:
    """A synchronous twin: the async object it stands for, and the portal its calls take.

    Any twin can be made from an async object of its kind: ``Collection(async_collection,
    portal)``. What the async object's methods do, the twin's do; only the waiting differs.
    """

    __slots__ = ("_aio", "_children", "_portal")
    # The async class a twin stands for (each generated twin names its own).
    _aio_type: ClassVar[type[Any]] = object

    def __init__(self, aio: Any, portal: Portal) -> None:
        self._check(aio, portal)
        self._aio = aio
        self._portal = portal
        # The twins of the stores this one hands out, made once (see _child).
        self._children: dict[str, Wrapper] | None = None

    @classmethod
    def _check(cls, aio: Any, portal: Portal) -> None:
        if not isinstance(portal, Portal):
            raise ValidationError(f"portal must be a Portal, not {brief(portal)}", field="portal")
        if not isinstance(aio, cls._aio_type):
            raise ValidationError(
                f"a sync {cls.__name__} stands for an async {cls._aio_type.__name__}, "
                f"not {brief(aio)}",
                field="aio",
            )

    @classmethod
    def _of(cls, aio: Any, portal: Portal) -> Self:
        # What the layer itself hands out needs no checking.
        made = object.__new__(cls)
        made._aio = aio
        made._portal = portal
        made._children = None
        return made

    @property
    def portal(self) -> Portal:
        """The portal into the event loop the async object lives on."""
        return self._portal

    def _live(self) -> Any:
        """The async object, once the front end is known to be open (else its UsageError)."""
        if self._portal.closed:
            self._portal.refuse()
        return self._aio

    def _child(self, name: str, value: Any, cls: type[W]) -> W:
        """The twin of ``value`` (what property ``name`` gives now), kept while it is the same
        object: ``dl.agents.get(...)`` in a loop makes no new twin per call."""
        children = self._children
        if children is None:
            children = self._children = {}
        kept = children.get(name)
        if kept is not None and kept._aio is value and type(kept) is cls:
            return kept
        made = cls._of(value, self._portal)
        children[name] = made
        return made

    def __repr__(self) -> str:
        return f"<sync {self._aio!r}>"


def each_callback(
    operations: Any, portal: Portal, *wrap: Callable[[Any, Portal], Any] | None
) -> Any:
    """``operations`` with each function in it made a callback (:meth:`Portal.callback`); the
    ``(sql, params)`` pairs, and what is not a list of operations at all, go as they are, for
    the layer to check."""
    if isinstance(operations, str | bytes | bytearray | memoryview | Mapping) or not isinstance(
        operations, Iterable
    ):
        return operations
    mapped = (portal.callback(op, *wrap) if callable(op) else op for op in operations)
    return list(mapped) if isinstance(operations, list | tuple) else mapped
