"""What every scenario gets: the DataLayer under test, the baselines' pool, sizes, the seed, and
progress reporting."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rich.progress import Progress, TaskID

from agency_data import DataLayer
from bench.databases import RawPool


@dataclass
class Bench:
    """A benchmark run's shared state."""

    dl: DataLayer
    raw: RawPool  # the raw baselines': the owner role's, unfiltered by row-level security
    quick: bool
    vectors: int
    runs: int
    progress: Progress
    seed: int = 20261129
    task: TaskID | None = field(default=None)

    def size(self, quick: int, full: int) -> int:
        """``quick`` under --quick, else ``full``."""
        return quick if self.quick else full

    def rng(self, offset: int = 0) -> np.random.Generator:
        """A generator seeded for reproducible data."""
        return np.random.default_rng(self.seed + offset)

    def step(self, description: str) -> None:
        """Say what is being measured now."""
        if self.task is not None:
            self.progress.update(self.task, description=description)


def clustered(rng: np.random.Generator, n: int, dim: int, clusters: int = 100) -> np.ndarray:
    """Clustered points of low intrinsic dimension, like real embeddings."""
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    basis = (rng.normal(size=(clusters, 16, dim)) / 4.0).astype(np.float32)
    labels = rng.integers(0, clusters, size=n)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 10_000):  # in slices: 1M x 768 at once would need ~12 GB
        stop = min(n, start + 10_000)
        local = np.einsum(
            "nk,nkd->nd",
            rng.normal(size=(stop - start, 16)).astype(np.float32),
            basis[labels[start:stop]],
        )
        out[start:stop] = (
            centers[labels[start:stop]] + 0.6 * local + 0.05 * rng.normal(size=(stop - start, dim))
        )
    return out
