"""The synchronous front end of agency-data: the same API, without ``await``.

Usage::

    from agency_data.sync import DataLayer

    with DataLayer() as dl:                       # embedded servers when nothing is configured
        agent = dl.agents.create(name="planner", type="llm")
        with dl.transaction():
            dl.tasks.create(type="plan", data={"agent": str(agent.id)})
        for message in dl.streams.consume("events", "workers", "w1"):
            ...

Every class is the generated twin (:mod:`agency_data.sync._api`) of the async class of the same
name: one implementation of the logic, reached through a :class:`Portal` into a private event
loop in a daemon thread, usable from several threads at once. ``dl.aio`` is the async
DataLayer itself and ``dl.portal`` the portal, for code that mixes the two.

What differs from the async API is only the waiting. Inside a ``with`` block (a transaction, a
lock, ``working()``) the thread's calls join the block, as calls inside ``async with`` do;
blocks are per thread. Functions handed to the layer (``run_in_transaction``'s body, a cache
loader, an on-commit hook, a worker's handler) run in the calling thread and may call the sync
API. Ctrl-C cancels the call it interrupts, and goes on up once the call has finished
cancelling. A sync call made on the layer's own loop raises UsageError, as does any call after
``close()`` or in a process forked after the layer was made (make one per process). For a
faster loop, run the layer on uvloop::

    portal = Portal.start(loop_factory=uvloop.new_event_loop)
    dl = DataLayer.wrap(agency_data.DataLayer(config), portal)
    dl.connect()
    ...
    dl.close()
    portal.close()          # wrap() leaves the portal to its maker
"""

from typing import TYPE_CHECKING, Any

from agency_data.sync.portal import Portal

if TYPE_CHECKING:
    from agency_data.sync._api import (
        Admin,
        AgentStore,
        Alerts,
        ApiKeys,
        AuditTrail,
        Backups,
        Cache,
        ChangeFeed,
        Changes,
        Collection,
        CollectionAdmin,
        DataLayer,
        EmbeddingStore,
        Events,
        Job,
        KeyAdmin,
        KnowledgeGraph,
        Lock,
        ManagedCollection,
        ManagedEmbeddingStore,
        ManagedMemory,
        Memory,
        MetricsEndpoint,
        MigrationRunner,
        MonitoringMethods,
        PolicyOps,
        PubSub,
        QueryMethods,
        QueueOps,
        Relay,
        Retention,
        ScheduleOps,
        ScriptRegistry,
        SessionStore,
        Streams,
        SubjectRights,
        TaskStore,
        TenantScope,
        Transaction,
        Worker,
    )
    from agency_data.sync._wrapper import Wrapper


def __getattr__(name: str) -> Any:
    # The twins load on first use: the portal alone (which the integrations use) stays light,
    # and the generator can run while _api.py is stale.
    if name in __all__ and name != "Portal":
        from agency_data.sync import _api, _wrapper

        return getattr(_api, name, None) or getattr(_wrapper, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Admin",
    "AgentStore",
    "Alerts",
    "ApiKeys",
    "AuditTrail",
    "Backups",
    "Cache",
    "ChangeFeed",
    "Changes",
    "Collection",
    "CollectionAdmin",
    "DataLayer",
    "EmbeddingStore",
    "Events",
    "Job",
    "KeyAdmin",
    "KnowledgeGraph",
    "Lock",
    "ManagedCollection",
    "ManagedEmbeddingStore",
    "ManagedMemory",
    "Memory",
    "MetricsEndpoint",
    "MigrationRunner",
    "MonitoringMethods",
    "PolicyOps",
    "Portal",
    "PubSub",
    "QueryMethods",
    "QueueOps",
    "Relay",
    "Retention",
    "ScheduleOps",
    "ScriptRegistry",
    "SessionStore",
    "Streams",
    "SubjectRights",
    "TaskStore",
    "TenantScope",
    "Transaction",
    "Worker",
    "Wrapper",
]
