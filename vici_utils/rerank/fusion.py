"""Turning model answers into rankings, and fusing them with the retrieval order.

Everything here works on retrieval positions 0..K-1 of a query's top-K. An answer ranks the candidates
as presented (1-based slots); `to_positions` maps it back through the presented order. Several
presented orders (permutations against position bias) are aggregated by mean rank, a Borda count.

Fusion rules, all ties broken by the retrieval order:
  weighted  VICI's rule: sort by vlm_rank + retrieval_rank (an unweighted Borda count of the two lists)
  vlm       the model's order alone
  rrf       reciprocal rank fusion, score 1/(60 + vlm_rank) + 1/(60 + retrieval_rank)
Only the top K are reordered; positions K+1.. keep the retrieval order, so R@k for k >= K cannot move.
"""
from __future__ import annotations

import numpy as np

RULES = ("weighted", "vlm", "rrf")
RRF_K = 60


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


def fuse(vlm_rank: np.ndarray, rule: str) -> np.ndarray:
    """vlm_rank[q, pos] (1-based) -> fused order[q, :] of retrieval positions, best first."""
    if rule not in RULES:
        raise ValueError(f"fusion rule '{rule}' is not one of {RULES}")
    nq, k = vlm_rank.shape
    retrieval_rank = np.broadcast_to(np.arange(1, k + 1), (nq, k))
    if rule == "weighted":
        score = vlm_rank + retrieval_rank
    elif rule == "vlm":
        score = vlm_rank
    else:
        score = -(1.0 / (RRF_K + vlm_rank) + 1.0 / (RRF_K + retrieval_rank))
    return np.lexsort((retrieval_rank, score), axis=1)


def apply(ranking: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Full gallery ranking with the top K replaced by `order` (retrieval positions, best first)."""
    k = order.shape[1]
    out = ranking.copy()
    out[:, :k] = np.take_along_axis(ranking[:, :k], order, axis=1)
    return out
