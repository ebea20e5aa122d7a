"""The transactional outbox: messages published inside a transaction (``tx.publish``) reach
Redis if and only if it commits (see :mod:`agency_data.outbox.relay`)."""

from agency_data.outbox.relay import Relay, Send, redis_sender

__all__ = ["Relay", "Send", "redis_sender"]
