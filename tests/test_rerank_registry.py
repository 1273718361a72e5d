"""Issue 11: every re-ranker behind one interface in one registry, fusion rules in one mapping."""
import json
import subprocess
import sys
import typing

import numpy as np
import pytest

from tests.fake_vlm_servers import write_tiny_run
from vici_utils.params import Params, validate
from vici_utils.paths import REPO_ROOT
from vici_utils.rerank import fusion, load_features, report, rerankers, run_rerank
from vici_utils.rerank.rerankers import RERANKERS, Reranked, outcomes_from_orders, reranker_class


def test_params_take_their_choices_from_the_registries():
    assert typing.get_args(Params.model_fields["rerank_backend"].annotation) == tuple(RERANKERS)
    assert typing.get_args(Params.model_fields["fusion"].annotation) == (*fusion.FUSIONS, fusion.VALIDATION)


def test_no_import_circle_and_params_import_no_reranker():
    code = ("import sys, vici_utils.params; "
            "assert not [m for m in sys.modules if m.startswith(('google', 'httpx', 'vici_utils.rerank.backends', "
            "'vici_utils.rerank.kreciprocal'))], sorted(sys.modules); "
            "import vici_utils.rerank.backends, vici_utils.rerank.kreciprocal")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
    code = ("import sys, vici_utils.rerank.rerankers, vici_utils.rerank.fusion; "
            "assert 'vici_utils.params' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


@pytest.mark.parametrize("name", list(RERANKERS))
def test_every_registered_reranker_has_the_interface(name):
    cls = reranker_class(name)
    assert cls.name == name
    for method in ("describe", "check", "rerank"):
        assert callable(getattr(cls, method, None)), f"{cls.__name__} lacks {method}"
    assert cls.describe(validate({"rerank_backend": name}))


class ReverseReranker:
    """An offline re-ranker from outside the package, as a learned verifier would be: it reads the run's
    features and image paths and returns an order per query (here: the retrieval order reversed)."""
    name = "reverse"

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


def test_a_new_reranker_and_fusion_rule_are_one_entry_each(outputs, monkeypatch):
    monkeypatch.setitem(RERANKERS, "reverse", "tests.test_rerank_registry:ReverseReranker")

    def halfway(vlm_rank, retrieval_rank):
        return vlm_rank + 2 * retrieval_rank

    halfway.label = "fused: retrieval counted twice"
    monkeypatch.setitem(fusion.FUSIONS, "halfway", halfway)
    write_tiny_run(outputs, "t", buildings=6, queries_per_building=1)
    cfg = validate({"run_name": "t", "fusion": "weighted",
                    "rerank_top_k": 4}).model_copy(update={"rerank_backend": "reverse"})
    result = run_rerank(cfg, show_progress=False)
    assert (result.fused["vlm"][:, :4] == result.ranking[:, 3::-1]).all()
    assert result.metrics["backend"] == "reverse" and result.metrics["model"] == "reverse-v1"
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
    assert list(fusion.FUSIONS) == ["weighted", "vlm", "rrf"]
    assert all(fn.label for fn in fusion.FUSIONS.values())
    assert fusion.RULES == tuple(fusion.FUSIONS)
