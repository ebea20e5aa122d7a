"""The transactional outbox and the change feed: messages published inside a transaction
(``tx.publish``) reach Redis if and only if it commits (:mod:`agency_data.outbox.relay`), and
row changes of tracked tables are read in commit order by cursor
(:mod:`agency_data.outbox.changes`)."""

from agency_data.outbox.changes import Change, ChangeConsumer, ChangeFeed, Changes, FeedStatus
from agency_data.outbox.relay import Relay, Send, redis_sender

__all__ = [
    "Change",
    "ChangeConsumer",
    "ChangeFeed",
    "Changes",
    "FeedStatus",
    "Relay",
    "Send",
    "redis_sender",
]
