"""Turning model answers into rankings, and fusing them with the retrieval order.

Everything here works on retrieval positions 0..K-1 of a query's top-K. An answer ranks the candidates
as presented (1-based slots); `to_positions` maps it back through the presented order. Several
presented orders (permutations against position bias) are aggregated by mean rank, a Borda count.

Fusion rules: each a function (reranker_rank, retrieval_rank) -> score (lower first, ties broken by the retrieval
order), @labelled with what it does, and registered by name in vici_utils.registry.FUSIONS, whose names the
`fusion` parameter takes. That parameter also takes VALIDATION: the run then reports the rule that does best on
the held-out validation buildings (rerank.stage).
Only the top K are reordered; positions K+1.. keep the retrieval order, so R@k for k >= K cannot move.
"""
from __future__ import annotations

import numpy as np

from ..registry import FUSIONS, RERANKER_ONLY, VALIDATION, labelled  # noqa: F401 (rerank.stage reads them here)

RRF_K = 60


@labelled("fused: re-ranker rank + retrieval rank (VICI)")
def weighted(reranker_rank: np.ndarray, retrieval_rank: np.ndarray) -> np.ndarray:
    return reranker_rank + retrieval_rank


@labelled("re-ranker order only")
def reranker(reranker_rank: np.ndarray, retrieval_rank: np.ndarray) -> np.ndarray:
    return reranker_rank


@labelled("fused: reciprocal rank fusion")
def rrf(reranker_rank: np.ndarray, retrieval_rank: np.ndarray) -> np.ndarray:
    return -(1.0 / (RRF_K + reranker_rank) + 1.0 / (RRF_K + retrieval_rank))


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


def fuse(reranker_rank: np.ndarray, name: str) -> np.ndarray:
    """reranker_rank[q, pos] (1-based) -> fused order[q, :] of retrieval positions, best first."""
    score = FUSIONS.load(name)
    nq, k = reranker_rank.shape
    retrieval_rank = np.broadcast_to(np.arange(1, k + 1), (nq, k))
    return np.lexsort((retrieval_rank, score(reranker_rank, retrieval_rank)), axis=1)


def apply(ranking: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Full gallery ranking with the top K replaced by `order` (retrieval positions, best first)."""
    k = order.shape[1]
    out = ranking.copy()
    out[:, :k] = np.take_along_axis(ranking[:, :k], order, axis=1)
    return out
