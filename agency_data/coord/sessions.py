"""Agent sessions in Redis: JSON documents with a sliding expiry, findable by agent.

A session is one key with a TTL; an agent's session ids are a set beside it (same hash tag),
pruned of expired ids whenever it is listed. Sessions live in Redis only: while Redis is down,
session calls raise :class:`BackendUnavailable` rather than pretend.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson

from agency_data.audit.notes import AuditNotes
from agency_data.errors import NotFound, ValidationError
from agency_data.inputs import check_bool, check_mapping, check_seconds, encode_json
from agency_data.models import Session
from agency_data.observability import Telemetry, observed
from agency_data.redis.errors import translate_errors
from agency_data.redis.keys import Keys, check_key
from agency_data.redis.pipelining import AutoPipeline
from agency_data.security.fields import FieldCipher, sealed_key

__all__ = ["SessionStore"]

_MAX_TTL = 30 * 24 * 3600
_MAX_BYTES = 1 << 20


class SessionStore:
    """The sessions of one tenant."""

    def __init__(
        self,
        pipeline: AutoPipeline,
        keys: Keys,
        default_ttl: int,
        *,
        telemetry: Telemetry | None = None,
        tenant: str | None = None,
        notes: AuditNotes | None = None,
        cipher: FieldCipher | None = None,
    ) -> None:
        self._telemetry = telemetry if telemetry is not None else Telemetry.off()
        # Session writes are recorded in the tenant's audit trail when audit.sessions is on.
        self._tenant = tenant
        self._notes = notes if notes is not None and notes.sessions else None
        # Session data encrypted before it reaches Redis (encryption.fields sessions.data).
        self._cipher = cipher
        # Reads join concurrent callers' round trips; writes are MULTI transactions of their own.
        self._pipeline = pipeline
        self._redis = pipeline.client
        self._keys = keys
        self._default_ttl = default_ttl

    @observed("sessions.create", system="redis")
    async def create(
        self, agent_id: Any, data: dict[str, Any] | None = None, ttl: float | None = None
    ) -> Session:
        """Open a session for ``agent_id`` that expires ``ttl`` seconds after its last touch."""
        seconds = self._ttl(ttl)
        agent = _agent(agent_id)
        now = datetime.now(UTC)
        session = Session(
            id=uuid.uuid4().hex,
            agent_id=agent,
            data=self._data(data),
            created_at=now,
            expires_at=now + timedelta(seconds=seconds),
            ttl=seconds,
        )
        await self._note("session.create", session.id, session.data)
        await self._write(session, new=True)
        return session

    @observed("sessions.get", system="redis")
    async def get(self, session_id: str) -> Session:
        """The live session; :class:`NotFound` once it expired or was deleted."""
        return await self._get(session_id)

    async def _get(self, session_id: str) -> Session:
        with translate_errors("reading a session"):
            raw = await self._pipeline.get(self._keys.session(check_key(session_id, "session_id")))
        if raw is None:
            raise NotFound(
                f"session {session_id} does not exist or has expired",
                entity="session",
                key=session_id,
            )
        return await self._load(raw)

    async def _load(self, raw: bytes | str) -> Session:
        document = orjson.loads(raw)
        if self._cipher is not None and self._tenant is not None:
            key_id = sealed_key(document["data"])
            if self._cipher.keyring is not None and key_id is not None:
                await self._cipher.ensure(self._tenant, [key_id], write=False)
            document["data"] = self._cipher.open(
                self._tenant, "sessions", "data", document["id"], document["data"]
            )
        return Session.model_validate(document)

    async def _dump(self, session: Session) -> bytes:
        cipher = self._cipher
        if cipher is None or self._tenant is None or not cipher.chosen("sessions", "data"):
            return session.model_dump_json().encode()
        await cipher.ensure(self._tenant)
        document = session.model_dump(mode="json")
        document["data"] = cipher.seal(self._tenant, "sessions", "data", session.id, session.data)
        return orjson.dumps(document)

    @observed("sessions.update", system="redis")
    async def update(self, session_id: str, data: dict[str, Any], *, merge: bool = True) -> Session:
        """Change the data (merging top-level keys, or replacing it); also slides the expiry."""
        check_bool(merge, "merge")
        new_data = self._data(data)
        session = await self._get(session_id)
        new_data = {**session.data, **new_data} if merge else new_data
        updated = session.model_copy(update={"data": new_data})
        await self._note("session.update", session.id, new_data)
        return await self._slide(updated)

    @observed("sessions.touch", system="redis")
    async def touch(self, session_id: str, ttl: float | None = None) -> Session:
        """Push the expiry out to ``ttl`` (default: the session's own) seconds from now."""
        seconds = None if ttl is None else self._ttl(ttl)
        session = await self._get(session_id)
        if seconds is not None:
            session = session.model_copy(update={"ttl": seconds})
        return await self._slide(session)

    @observed("sessions.delete", system="redis")
    async def delete(self, session_id: str) -> None:
        """End a session; :class:`NotFound` if there was none."""
        session = await self._get(session_id)
        await self._note("session.delete", session.id, None)
        with translate_errors("deleting a session"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(self._keys.session(session.id))
            pipe.srem(self._keys.agent_sessions(session.agent_id), session.id)
            await pipe.execute()

    @observed("sessions.list_by_agent", system="redis")
    async def list_by_agent(self, agent_id: Any) -> list[Session]:
        """The agent's live sessions, oldest first; expired ids are pruned on the way."""
        index = self._keys.agent_sessions(_agent(agent_id))
        with translate_errors("listing sessions"):
            members = await self._redis.smembers(index)
            ids = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
            if not ids:
                return []
            raws = await self._redis.mget([self._keys.session(i) for i in ids])
            gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
            if gone:
                await self._redis.srem(index, *gone)
        sessions = [await self._load(raw) for raw in raws if raw is not None]
        return sorted(sessions, key=lambda s: s.created_at)

    async def _note(self, operation: str, session_id: str, data: dict[str, Any] | None) -> None:
        # Before the write: a write that then fails leaves a record of the attempt, and no
        # write goes unrecorded.
        if self._notes is not None and self._tenant is not None:
            await self._notes.session_write(self._tenant, operation, session_id, data)

    async def _slide(self, session: Session) -> Session:
        slid = session.model_copy(
            update={"expires_at": datetime.now(UTC) + timedelta(seconds=session.ttl)}
        )
        await self._write(slid, new=False)
        return slid

    async def _write(self, session: Session, *, new: bool) -> None:
        key = self._keys.session(session.id)
        index = self._keys.agent_sessions(session.agent_id)
        millis = int(session.ttl * 1000)
        document = await self._dump(session)
        with translate_errors("writing a session"):
            pipe = self._redis.pipeline(transaction=True)
            # xx: an update never resurrects a session that expired meanwhile.
            pipe.set(key, document, px=millis, nx=new, xx=not new)
            pipe.sadd(index, session.id)
            pipe.pexpire(index, millis, gt=True)
            pipe.pexpire(index, millis, nx=True)
            written, *_ = await pipe.execute()
        if not written:
            raise NotFound(
                f"session {session.id} expired while being updated",
                entity="session",
                key=session.id,
            )

    def _ttl(self, ttl: float | None) -> float:
        value = self._default_ttl if ttl is None else ttl
        return check_seconds(value, "ttl", low=0.001, high=_MAX_TTL)

    @staticmethod
    def _data(data: dict[str, Any] | None) -> dict[str, Any]:
        if data is None:
            return {}
        checked = check_mapping(data, "data")
        encode_json(checked, "data", _MAX_BYTES)
        return checked


def _agent(agent_id: Any) -> str:
    """An agent id as sessions key it: a string, or a UUID or integer written as one."""
    if isinstance(agent_id, UUID) or (isinstance(agent_id, int) and not isinstance(agent_id, bool)):
        return str(agent_id)
    if not isinstance(agent_id, str):
        raise ValidationError(
            f"agent_id must be a string or UUID, not {type(agent_id).__name__}", field="agent_id"
        )
    return check_key(agent_id, "agent_id")
