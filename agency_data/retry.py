"""Exponential backoff with jitter: the one retry rhythm behind every loop that tries again.

Reconnecting listeners, lock waits and transaction retries all wait a little, then longer, up
to a ceiling, with random spread so that many processes retrying together do not move in
step::

    backoff = Backoff(first=0.1, most=2.0)
    while True:
        try:
            return await attempt()
        except ConnectionError:
            await backoff.sleep()
"""

from __future__ import annotations

import asyncio
import random
import time

__all__ = ["Backoff"]


class Backoff:
    """The growing delays of one retry loop.

    Each delay is the current step spread uniformly by ``jitter`` (0.5: from half to one and
    a half times the step); the step starts at ``first`` and doubles up to ``most``.
    """

    def __init__(self, first: float, most: float, *, jitter: float = 0.5) -> None:
        if not 0 < first <= most:
            raise ValueError("backoff needs 0 < first <= most")
        if not 0 <= jitter <= 1:
            raise ValueError("jitter is a fraction from 0 to 1")
        self.first = first
        self.most = most
        self.jitter = jitter
        self.attempts = 0
        self._step = first

    def next_delay(self) -> float:
        """The delay before the next attempt (and one step up for the attempt after)."""
        step = self._step
        self._step = min(self._step * 2, self.most)
        self.attempts += 1
        return step * random.uniform(1 - self.jitter, 1 + self.jitter)

    def reset(self) -> None:
        """Start again from ``first`` (after an attempt that worked)."""
        self._step = self.first
        self.attempts = 0

    async def sleep(self, deadline: float | None = None) -> None:
        """Wait the next delay, but not past ``deadline`` (a ``time.monotonic()`` value)."""
        delay = self.next_delay()
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - time.monotonic()))
        await asyncio.sleep(delay)
