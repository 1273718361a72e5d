"""The learned verifier (reranker: verifier): what it trains on, that its checkpoint is reused, and that its
ranking goes through the same fusion, files and metrics as a VLM's."""
import json

import numpy as np
import pytest
import torch

from tests.conftest import TINY_MODEL, TINY_WORLD
from vici_utils import retrieval
from vici_utils.params import validate
from vici_utils.rerank import rerank, verifier
from vici_utils.run_folder import RERANK, stage_dir
from vici_utils.train import train


def test_shortlists_keep_the_true_tile_for_training():
    q = torch.eye(4)[[0, 1, 2]]
    g = torch.eye(4)
    cands, target = verifier.with_truth(verifier.shortlists(q, g, 2), torch.tensor([0, 3, 2]))
    assert cands.tolist()[0][0] == 0 and 3 in cands.tolist()[1] and target.tolist() == [0, 1, 0]


def test_ranking_and_reason_describe_the_verifier_order():
    scores = np.array([[0.1, 2.0, -1.0]])
    assert verifier.orders_from_scores(scores) == [[1, 0, 2]]  # retrieval positions, best score first
    assert verifier.orders_from_scores(np.array([[1.0, 1.0, 2.0]])) == [[2, 0, 1]]  # a tie keeps the retrieval order
    assert "moves retrieval #2 to the top" in verifier.reason(scores[0], [1, 0, 2])
    assert "keeps retrieval's #1 first" in verifier.reason(np.array([3.0, 1.0, 0.0]), [0, 1, 2])


@pytest.fixture
def trained_run(tiny_world_outputs, monkeypatch):
    monkeypatch.setenv("VICI_OUTPUTS", str(tiny_world_outputs))
    cfg = validate({**TINY_WORLD, **TINY_MODEL, "run_name": "verified", "epochs": 1, "batch_size": 8, "device": "cpu",
                    "reranker": "verifier", "verifier_epochs": 2, "rerank_top_k": 5, "val_fraction": 0.2})
    train(cfg, progress=False)
    retrieval.evaluate(cfg, progress=False)
    return cfg


def test_verifier_trains_on_training_buildings_only_reuses_its_checkpoint_and_fuses(trained_run, monkeypatch):
    cfg = trained_run
    seen, calls = [], []
    real_tokens, real_train = verifier.tower_tokens, verifier.train_verifier

    def recording_tokens(model, view, items, *a, **kw):
        seen.append([getattr(it, "building", None) or str(it) for it in items])
        return real_tokens(model, view, items, *a, **kw)

    def counting_train(*a, **kw):
        calls.append(kw)
        return real_train(*a, **kw)

    monkeypatch.setattr(verifier, "tower_tokens", recording_tokens)
    monkeypatch.setattr(verifier, "train_verifier", counting_train)
    result = rerank(cfg, show_progress=False)

    from vici_utils.u1652 import open_dataset

    ds = open_dataset(cfg, progress=False)
    train_ids, val_ids = ds.split_buildings(cfg.val_fraction, cfg.seed)
    test_ids = {q.building for q in ds.test.queries} | {g.building for g in ds.test.gallery}
    fit_sets = seen[:4]  # training queries and tiles, then validation queries and tiles
    assert set(fit_sets[0]) | set(fit_sets[1]) <= set(train_ids) and not (set(fit_sets[0]) & test_ids)
    assert set(fit_sets[2]) | set(fit_sets[3]) <= set(val_ids)
    assert len(calls) == 1

    # the fusion path: the same files, metrics and invariants as a VLM's answers
    out = stage_dir(cfg.run_name, RERANK)
    m = json.loads((out / "metrics.json").read_text())
    assert m["reranked_by"] == "verifier" and m["counts"]["ok"] == m["queries_reranked"]
    assert {"weighted", "reranker", "rrf"} <= set(m) and m["weighted"]["R@10"] == m["retrieval"]["R@10"]
    assert (out / "answer_fused.txt").is_file() and (out / verifier.CHECKPOINT).is_file()
    assert all(o.note.startswith(("moves retrieval", "keeps retrieval")) for o in result.outcomes)

    # resume: the stored verifier is reused; another setting trains again
    rerank(cfg, show_progress=False)
    assert len(calls) == 1
    rerank(cfg.model_copy(update={"verifier_epochs": 1}), show_progress=False)
    assert len(calls) == 2
