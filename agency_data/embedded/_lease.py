"""Who is using an embedded server: a lease file, read and written under a file lock.

Each user (one per DataLayer, not one per process) adds a lease when it starts or attaches to a
server and removes it when it closes. The last user to leave stops the server. Leases of
processes that died without closing are pruned, so a crashed run never keeps a server alive
forever nor stops one that others still use.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

from agency_data.files import write_private

__all__ = ["Lease", "LeaseFile"]


@dataclass(frozen=True)
class Lease:
    """One user of a server: its process (pid and start time, to survive pid reuse) and a token."""

    pid: int
    started: float
    token: str

    @classmethod
    def for_this_process(cls) -> Lease:
        """A new lease owned by the calling process."""
        pid = os.getpid()
        return cls(pid=pid, started=psutil.Process(pid).create_time(), token=uuid.uuid4().hex)

    def is_alive(self) -> bool:
        """True while the owning process still runs."""
        try:
            return psutil.Process(self.pid).create_time() == self.started
        except psutil.Error:
            return False


class LeaseFile:
    """The leases on one server, stored as JSON. Callers hold the server's file lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def live(self) -> list[Lease]:
        """The leases whose processes still run (dead ones are dropped from the file)."""
        leases = self._read()
        alive = [lease for lease in leases if lease.is_alive()]
        if len(alive) != len(leases):
            self._write(alive)
        return alive

    def add(self, lease: Lease) -> None:
        """Record ``lease``."""
        self._write([*self.live(), lease])

    def remove(self, lease: Lease) -> list[Lease]:
        """Drop ``lease`` and return the live leases left."""
        remaining = [other for other in self.live() if other != lease]
        self._write(remaining)
        return remaining

    def _read(self) -> list[Lease]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except ValueError:
            # A torn write from a killed process: nobody can be trusted to hold a lease.
            return []
        return [
            Lease(pid=int(i["pid"]), started=float(i["started"]), token=str(i["token"]))
            for i in raw
        ]

    def _write(self, leases: list[Lease]) -> None:
        write_private(self.path, json.dumps([lease.__dict__ for lease in leases]))
