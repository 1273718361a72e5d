"""Issue 11: every re-ranker behind one interface (rerank/rerankers.py), a new one (and a new fusion rule) one
registry entry each; offline orders checked."""
import json

import numpy as np
import pytest

from tests.fake_vlm_servers import write_tiny_run
from vici_utils.params import validate
from vici_utils.registry import FUSIONS, RERANKERS, labelled
from vici_utils.rerank import load_features, report, rerankers, rerank
from vici_utils.rerank.rerankers import Reranked, outcomes_from_orders, reranker_class


@pytest.mark.parametrize("name", list(RERANKERS))
def test_every_registered_reranker_has_the_interface(name):
    cls = reranker_class(name)
    assert isinstance(cls.label, str) and cls.label, f"{cls.__name__} says in no label what it is"
    for method in ("describe", "check", "rerank"):
        assert callable(getattr(cls, method, None)), f"{cls.__name__} lacks {method}"
    assert cls.describe(validate({"reranker": name}))


class ReverseReranker:
    """An offline re-ranker from outside the package, as a learned verifier would be: it reads the run's
    features and image paths and returns an order per query (here: the retrieval order reversed)."""
    label = "the retrieval order reversed (a test re-ranker)"

    def __init__(self, cfg):
        self.cfg = cfg

    @staticmethod
    def describe(cfg) -> str:
        return "reverse (a test re-ranker)"

    def check(self, job):
        assert all(p for p in job.features["gallery_paths"])

    def rerank(self, job):
        orders = [list(range(job.k))[::-1] for _ in range(len(job.ranking))]
        notes = [f"{len(job.features['query_paths'][q])} characters of path" for q in range(len(job.ranking))]
        return Reranked(outcomes_from_orders(job, orders, notes, "reverse-v1"), "reverse-v1")


@labelled("fused: retrieval counted twice")
def halfway(reranker_rank, retrieval_rank):
    return reranker_rank + 2 * retrieval_rank


def test_a_new_reranker_and_fusion_rule_are_one_entry_each(outputs, monkeypatch):
    monkeypatch.setitem(RERANKERS, "reverse", "tests.test_rerank_rerankers:ReverseReranker")
    monkeypatch.setitem(FUSIONS, "halfway", "tests.test_rerank_rerankers:halfway")
    write_tiny_run(outputs, "t", buildings=6, queries_per_building=1)
    cfg = validate({"run_name": "t", "fusion": "weighted", "rerank_top_k": 4, "reranker": "reverse"})
    result = rerank(cfg, show_progress=False)
    assert (result.fused["reranker"][:, :4] == result.ranking[:, 3::-1]).all()
    assert result.metrics["reranked_by"] == "reverse" and result.metrics["model"] == "reverse-v1"
    assert "halfway" in json.loads((outputs / "t" / "rerank" / "metrics.json").read_text())
    table = report.before_after(result, cfg)
    assert "fused: retrieval counted twice" in table["ranking"].tolist()
    assert report.describe_reranker(cfg) == "reverse (a test re-ranker)"


def test_an_offline_order_that_is_not_a_permutation_is_refused(outputs):
    npz = write_tiny_run(outputs, "t", buildings=3, queries_per_building=1)
    job = rerankers.RerankJob(validate({}), load_features(npz), np.tile(np.arange(5), (3, 1)), 3, outputs)
    with pytest.raises(rerankers.RerankError, match="not a permutation"):
        outcomes_from_orders(job, [[0, 1, 1]] * 3, ["x"] * 3, "bad")
