"""Distance metrics: pgvector's operator and operator classes, and how distance becomes score.

| metric          | operator | score                          | better  | threshold means |
|-----------------|----------|--------------------------------|---------|-----------------|
| cosine          | ``<=>``  | cosine similarity, 1 - distance | higher | minimum score   |
| inner_product   | ``<#>``  | inner product, -distance        | higher | minimum score   |
| euclidean       | ``<->``  | L2 distance                     | lower  | maximum score   |
| manhattan       | ``<+>``  | L1 distance                     | lower  | maximum score   |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, LiteralString

from agency_data.errors import ValidationError

__all__ = ["METRICS", "Metric", "MetricSpec", "metric_spec"]

Metric = Literal["cosine", "euclidean", "manhattan", "inner_product"]


@dataclass(frozen=True)
class MetricSpec:
    """How one metric is spelled in SQL and read back."""

    name: Metric
    operator: LiteralString
    opclass: LiteralString
    higher_is_better: bool
    ivfflat: bool

    def score(self, distance: float) -> float:
        """The documented score for a distance pgvector returned."""
        if self.name == "cosine":
            return 1.0 - distance
        if self.name == "inner_product":
            return -distance
        return distance

    def passes(self, score: float, threshold: float) -> bool:
        """True when ``score`` is at least as good as ``threshold``."""
        return score >= threshold if self.higher_is_better else score <= threshold


METRICS: dict[str, MetricSpec] = {
    "cosine": MetricSpec("cosine", "<=>", "cosine_ops", True, True),
    "euclidean": MetricSpec("euclidean", "<->", "l2_ops", False, True),
    "manhattan": MetricSpec("manhattan", "<+>", "l1_ops", False, False),
    "inner_product": MetricSpec("inner_product", "<#>", "ip_ops", True, True),
}


def metric_spec(name: str) -> MetricSpec:
    """The spec of metric ``name``, or a :class:`ValidationError` listing the known ones."""
    spec = METRICS.get(name)
    if spec is None:
        raise ValidationError(
            f"unknown metric {name!r}; use one of {', '.join(METRICS)}", field="metric"
        )
    return spec
