"""Turning model answers into rankings, and fusing them with the retrieval order.

Everything here works on retrieval positions 0..K-1 of a query's top-K. An answer ranks the candidates
as presented (1-based slots); `to_positions` maps it back through the presented order. Several
presented orders (permutations against position bias) are aggregated by mean rank, a Borda count.

Fusion rules (FUSIONS, name -> score function; the `fusion` parameter takes these names), all ties broken
by the retrieval order:
  weighted  VICI's rule: sort by vlm_rank + retrieval_rank (an unweighted Borda count of the two lists)
  vlm       the model's order alone
  rrf       reciprocal rank fusion, score 1/(60 + vlm_rank) + 1/(60 + retrieval_rank)
A new rule is one function here, decorated with @rule(label): lower scores rank first. The `fusion` parameter also
takes VALIDATION: the run then reports the rule that does best on the held-out validation buildings (rerank.run).
Only the top K are reordered; positions K+1.. keep the retrieval order, so R@k for k >= K cannot move.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

FUSIONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {}
RRF_K = 60
VALIDATION = "validation"  # the `fusion` value that chooses the rule on the validation buildings


def rule(label: str):
    """Register a fusion rule under its function name; `label` says in words what it does (tables, figures)."""
    def register(fn):
        fn.label = label
        FUSIONS[fn.__name__] = fn
        return fn
    return register


@rule("fused: vlm rank + retrieval rank (VICI)")
def weighted(vlm_rank: np.ndarray, retrieval_rank: np.ndarray) -> np.ndarray:
    return vlm_rank + retrieval_rank


@rule("re-ranker order only")
def vlm(vlm_rank: np.ndarray, retrieval_rank: np.ndarray) -> np.ndarray:
    return vlm_rank


@rule("fused: reciprocal rank fusion")
def rrf(vlm_rank: np.ndarray, retrieval_rank: np.ndarray) -> np.ndarray:
    return -(1.0 / (RRF_K + vlm_rank) + 1.0 / (RRF_K + retrieval_rank))


RULES = tuple(FUSIONS)  # the names, in registry order


def to_positions(ranking: list[int], order: list[int]) -> list[int]:
    """A 1-based ranking of presented slots -> retrieval positions, best first."""
    return [order[slot - 1] for slot in ranking]


def mean_rank(orders: list[list[int]], k: int) -> np.ndarray:
    """Mean 1-based rank of each retrieval position over several rankings (positions best first),
    then re-ranked 1..k with ties going to the better retrieval position. Returns rank[pos]."""
    ranks = np.zeros(k)
    for order in orders:
        ranks[np.asarray(order)] += np.arange(1, k + 1)
    best_first = np.lexsort((np.arange(k), ranks))
    out = np.empty(k, dtype=np.int64)
    out[best_first] = np.arange(1, k + 1)
    return out


def fuse(vlm_rank: np.ndarray, name: str) -> np.ndarray:
    """vlm_rank[q, pos] (1-based) -> fused order[q, :] of retrieval positions, best first."""
    if name not in FUSIONS:
        raise ValueError(f"fusion rule '{name}' is not one of {tuple(FUSIONS)}")
    nq, k = vlm_rank.shape
    retrieval_rank = np.broadcast_to(np.arange(1, k + 1), (nq, k))
    return np.lexsort((retrieval_rank, FUSIONS[name](vlm_rank, retrieval_rank)), axis=1)


def apply(ranking: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Full gallery ranking with the top K replaced by `order` (retrieval positions, best first)."""
    k = order.shape[1]
    out = ranking.copy()
    out[:, :k] = np.take_along_axis(ranking[:, :k], order, axis=1)
    return out
