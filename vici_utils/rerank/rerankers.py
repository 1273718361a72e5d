"""Every re-ranker behind one interface.

A re-ranker takes the run's retrieval (each query's top K, the features and image paths of
features.npz) and returns, per query, an order of those K candidates. `stage.rerank` does the rest
(fusion, metrics, files), whatever the re-ranker is. The re-rankers, and the ones that can ask through a batch
API (vlm_mode: batch), are registered by name in vici_utils.registry (RERANKERS, BATCH_RERANKERS); the
`reranker` parameter takes those names.

Adding one: a class that satisfies `Reranker` (in vici_utils/rerank/, say), one line in the registry, and its
test. Built with the run's parameters, it must check what it can before anything is written (keys, URLs,
inputs): a failed set-up leaves the previous results alone. An offline re-ranker that scores
each query's candidates itself (the learned verifier, say) only needs `rerank`: read `job.features`
(paths, features) and `job.ranking`, then return `outcomes_from_orders(job, orders, notes, label)`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..registry import BATCH_RERANKERS, RERANKERS, UnknownName


class RerankError(RuntimeError):
    """The run cannot go on (bad key, unknown model, unreachable server...); the message says what to do."""


@dataclass
class QueryOutcome:
    index: int
    name: str
    candidates: list[str]             # the top K gallery names, retrieval order
    order: list[int]                  # the re-ranker's order: retrieval positions, best first
    status: str                       # "ok" or "fallback"
    note: str                         # the re-ranker's reason (ok) or why the retrieval order was kept
    answers: list[dict] = field(default_factory=list)  # one per presented order


@dataclass
class RerankJob:
    """What a re-ranker gets: the retrieval of the queries to re-rank, and where the run's files go."""
    cfg: Any                          # Params
    features: dict                    # the arrays of features.npz (see run.FEATURE_KEYS); names/paths as str
    ranking: np.ndarray               # retrieval ranking [n_queries, n_gallery], best first
    k: int                            # re-rank the top k of each row
    out_dir: Path                     # outputs/<run>/rerank (a re-ranker may keep a store here, e.g. cache.jsonl)
    retry: Any = None                 # limits.RetryPolicy for network re-rankers
    show_progress: bool = True

    def candidates(self, q: int) -> list[str]:
        return [self.features["gallery_names"][g] for g in self.ranking[q, :self.k]]


@dataclass
class AskStats:
    """The requests a re-ranker sent to a model in this run. An offline re-ranker sends none: it keeps the empty
    default (mode "offline", one order per query, every count zero)."""
    mode: str = "offline"             # the vlm_mode the requests went out in; "offline": none went out
    permutations: int = 1             # presented orders per query
    requests: int = 0                 # (query, order) pairs asked: answered from the store, sent, or given up
    sent: int = 0
    cached: int = 0
    invalid: int = 0
    gave_up: int = 0
    retries: int = 0
    tokens: Counter = field(default_factory=Counter)  # this run's requests only
    model_versions: Counter = field(default_factory=Counter)

    @classmethod
    def asking(cls, cfg, requests: int) -> "AskStats":
        """Empty counts for a run about to ask `requests` (query, order) pairs in cfg.vlm_mode."""
        return cls(mode=cfg.vlm_mode, permutations=cfg.vlm_permutations, requests=requests)


@dataclass
class Reranked:
    outcomes: list[QueryOutcome]      # one per row of job.ranking, in order
    model: str                        # what produced the orders (model id, or the re-ranker and its settings)
    stats: AskStats = field(default_factory=AskStats)  # the requests to a model (network re-rankers)
    details: dict = field(default_factory=dict)  # more for metrics.json, under the re-ranker's own keys (batch: jobs)


class Reranker(Protocol):
    """The interface. `__init__(cfg)` validates the settings (raise RerankError); `check(job)` validates
    the inputs (images present...) before any output is touched; `rerank(job)` does the work. `label` says in a
    few words what it is (docs/parameters.md); the run's `reranker` is the name it was registered under."""
    label: str

    @staticmethod
    def describe(cfg) -> str:
        """One line for figures and tables: the re-ranker and its settings."""

    def check(self, job: RerankJob) -> None: ...

    def rerank(self, job: RerankJob) -> Reranked: ...


def reranker_class(name: str) -> type:
    try:
        return RERANKERS.load(name)
    except UnknownName as e:
        raise RerankError(str(e)) from None


def make_reranker(cfg) -> Reranker:
    """The re-ranker `cfg.reranker`, built (and so validated) from the run's parameters."""
    if cfg.vlm_mode == "batch":
        if cfg.reranker not in BATCH_RERANKERS:
            raise RerankError(f"vlm_mode: batch needs a re-ranker that can ask in batches (reranker: "
                              f"{' or '.join(BATCH_RERANKERS)}), not '{cfg.reranker}'; use vlm_mode: "
                              "interactive for it")
        return BATCH_RERANKERS.load(cfg.reranker)(cfg)
    return reranker_class(cfg.reranker)(cfg)


def describe(cfg) -> str:
    return reranker_class(cfg.reranker).describe(cfg)


def sees_order(backend: str) -> bool:
    """Whether the re-ranker is shown the candidates in an order (a VLM: position bias applies; its model id
    names the result), or scores each candidate on its own (k-reciprocal, the verifier)."""
    return bool(getattr(reranker_class(backend), "sees_order", False)) if backend in RERANKERS else False


def outcomes_from_orders(job: RerankJob, orders: list[list[int]], notes: list[str],
                         label: str) -> list[QueryOutcome]:
    """Outcomes of an offline re-ranker: `orders[q]` = retrieval positions 0..k-1 of query q, best first."""
    outcomes = []
    for q, (order, note) in enumerate(zip(orders, notes)):
        order = [int(o) for o in order]
        if sorted(order) != list(range(job.k)):
            raise RerankError(f"{label}: the order for query {q} is not a permutation of 0..{job.k - 1}: {order}")
        candidates = job.candidates(q)
        answer = {"permutation": 0, "presented": candidates, "ranking": [o + 1 for o in order], "ok": True,
                  "cached": False, "model_version": label, "usage": {}, "latency_s": 0.0}
        outcomes.append(QueryOutcome(q, job.features["query_names"][q], candidates, order, "ok", note, [answer]))
    return outcomes


class NoReranker:
    """The retrieval order, unchanged (the baseline every re-ranker is compared with)."""
    label = "the retrieval order, unchanged (no re-ranking)"

    def __init__(self, cfg):
        pass

    @staticmethod
    def describe(cfg) -> str:
        return "none"

    def check(self, job: RerankJob) -> None:
        pass

    def rerank(self, job: RerankJob) -> Reranked:
        # no answers: nothing looked at the candidates (so no position bias to report either)
        return Reranked([QueryOutcome(q, job.features["query_names"][q], job.candidates(q), list(range(job.k)), "ok",
                                      "retrieval order (reranker: none)") for q in range(len(job.ranking))],
                        "none")
