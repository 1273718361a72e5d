"""Every re-ranker behind one interface, and every re-ranker and fusion rule registered by name in
vici_utils.registry."""
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.fake_vlm_servers import write_tiny_run
from vici_utils.params import ParamsError, validate
from vici_utils.paths import REPO_ROOT
from vici_utils.registry import FUSIONS, RERANKERS, VALIDATION, labelled
from vici_utils.rerank import fusion, load_features, report, rerankers, rerank
from vici_utils.rerank.rerankers import Reranked, outcomes_from_orders, reranker_class


def test_params_take_their_choices_from_the_registries():
    for key, names in (("reranker", [*RERANKERS]), ("fusion", [*FUSIONS, VALIDATION])):
        assert [getattr(validate({key: n, "fusion": "weighted"} if key == "reranker" else {key: n}), key)
                for n in names] == names
        with pytest.raises(ParamsError, match=f"{key} = 'nonesuch'.*" + ".*".join(repr(n) for n in names)):
            validate({key: "nonesuch"})


def test_params_import_no_stage():
    """The parameters stand on the ground floor: they read the registry, never a re-ranker, a loss or torch."""
    code = ("import sys, vici_utils.params; "
            "assert not [m for m in sys.modules if m.startswith(('google', 'httpx', 'torch', 'vici_utils.rerank', "
            "'vici_utils.losses'))], sorted(sys.modules); "
            "import vici_utils.rerank.backends, vici_utils.rerank.kreciprocal")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
    code = ("import sys, vici_utils.rerank.rerankers, vici_utils.rerank.fusion; "
            "assert 'vici_utils.params' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


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
    monkeypatch.setitem(RERANKERS, "reverse", "tests.test_rerank_registry:ReverseReranker")
    monkeypatch.setitem(FUSIONS, "halfway", "tests.test_rerank_registry:halfway")
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


def test_fusion_rules_are_registered_with_labels():
    """Each registered rule is a labelled score function that orders a query's top K (the labels name the rows of
    notebook 04's tables, so two rules may not share one)."""
    rules = FUSIONS.load_all()
    labels = [fn.label for fn in rules.values()]
    assert all(labels) and len(set(labels)) == len(labels), labels
    reranker_rank = np.array([[3, 1, 2], [1, 2, 3]])
    for name in rules:
        order = fusion.fuse(reranker_rank, name)
        assert sorted(order[0]) == [0, 1, 2] and list(order[1]) == [0, 1, 2], name  # agreement keeps the order
    with pytest.raises(ValueError, match=r"fusion 'nonesuch' is not registered.*'weighted'"):
        fusion.fuse(reranker_rank, "nonesuch")
