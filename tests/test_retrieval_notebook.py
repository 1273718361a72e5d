"""Retrieval evaluation of a run on the tiny embedded world: files, metrics, cache, challenge, and notebook 03."""
import csv
import json
import zipfile

import pytest
import torch

from tests.conftest import TINY_MODEL, TINY_WORLD
from tests.notebooks import execute
from vici_utils import answers, baselines, embed, metrics, params, retrieval
from vici_utils.models import TwoTower
from vici_utils.run_folder import run_dir
from vici_utils.rerank import load_features
from vici_utils.u1652 import open_dataset


def tiny_cfg(**kw):
    return params.validate({**TINY_WORLD, **TINY_MODEL, "epochs": 1, **kw})


def write_best_checkpoint(cfg, seed=3):
    """A checkpoint where notebook 02 would leave one (train/best.pt, the training format)."""
    torch.manual_seed(seed)
    model = TwoTower(cfg.backbone, False, cfg.image_size, cfg.shared_towers, cfg.embed_dim)
    path = run_dir(cfg.run_name) / "train" / "best.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "vici-train/1", "model_config": model.config, "model": model.state_dict(),
                "config": cfg.model_dump(), "epoch": 1}, path)
    return path


@pytest.fixture
def counted_extraction(monkeypatch):
    """Count the images actually embedded (cache misses)."""
    calls = {"images": 0}
    real = embed.extract_features

    def counting(fn, items, *a, **kw):
        calls["images"] += len(items)
        return real(fn, items, *a, **kw)

    monkeypatch.setattr(embed, "extract_features", counting)
    return calls


def test_evaluate_writes_consistent_files_and_caches(tiny_world_outputs, monkeypatch, counted_extraction):
    monkeypatch.setenv("VICI_OUTPUTS", str(tiny_world_outputs))
    cfg = tiny_cfg(run_name="retrieval-files", device="cpu")
    write_best_checkpoint(cfg)
    result = retrieval.evaluate(cfg, progress=False)
    out = run_dir(cfg.run_name) / "retrieval"
    test = result.test
    nq, ng = len(test.queries), len(test.gallery)
    ds = open_dataset(cfg, progress=False)
    val = ds.val_set(ds.split_buildings(cfg.val_fraction, cfg.seed)[1])
    n_val = len(val.queries) + len(val.gallery)
    assert counted_extraction["images"] == 2 * (nq + ng) + n_val  # test + challenge + validation

    # the held-out buildings (never the test set) are where stage 2 chooses its fusion rule (issue 19)
    held_out = load_features(out / "val_features.npz")
    assert held_out["query_ids"] == val.query_ids and held_out["gallery_ids"] == val.gallery_ids
    assert not set(held_out["gallery_ids"]) & set(test.gallery_ids)

    summary = json.loads((out / "metrics.json").read_text())
    assert summary["protocol"] == "official" and summary["n_query"] == nq and summary["n_gallery"] == ng
    assert summary["validation"]["queries"] == len(val.queries) and 0 <= summary["validation"]["R@1"] <= 100
    assert summary["weights"].startswith("trained checkpoint") and "best.pt" in summary["weights"]
    assert summary["distractors_dropped"]["protocol"] == "distractors_dropped"
    assert summary["distractors_dropped"]["n_gallery"] == ng - len(test.distractors)
    assert summary["data"].startswith("embedded world")

    feats = load_features(out / "features.npz")  # the validating reader notebook 04 uses
    assert set(feats) == {"query_features", "query_ids", "query_names", "query_paths", "gallery_features",
                          "gallery_ids", "gallery_names", "gallery_paths"}
    assert feats["query_features"].shape[0] == nq and feats["gallery_features"].shape[0] == ng
    assert feats["gallery_ids"] == test.gallery_ids  # distractors keep their own ids
    assert set(test.distractors) <= set(feats["gallery_ids"]) and not set(test.distractors) & set(feats["query_ids"])
    again = metrics.evaluate(feats["query_features"], feats["gallery_features"], feats["query_ids"],
                             feats["gallery_ids"])
    for key in ("R@1", "R@5", "R@10", "AP"):
        assert again[key] == pytest.approx(summary[key])

    k = min(10, ng)
    lines = answers.read_answer_txt(out / "answer.txt", k=k)
    assert len(lines) == nq
    with open(out / "topk.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == nq * k
    assert [r["gallery"] for r in rows if r["rank"] == "1"] == [names[0] for names in lines]
    ranking = metrics.full_ranking(feats["query_features"], feats["gallery_features"])
    assert lines == [[test.gallery[i].name for i in row[:k]] for row in ranking]

    chal = summary["challenge"]
    with zipfile.ZipFile(out / "challenge" / "answer.zip") as z:
        assert z.namelist() == ["answer.txt"]
    chal_lines = answers.read_answer_txt(out / "challenge" / "answer.txt", k=k)
    assert len(chal_lines) == len(result.test.queries) and all(len(n) == 16 for n in chal_lines[0])
    assert chal["scored"]  # the masked copy of the test set, so the same model scores the same
    for key in ("R@1", "R@5", "R@10", "AP"):
        assert chal[key] == pytest.approx(summary[key])

    before = counted_extraction["images"]
    retrieval.evaluate(cfg, progress=False)
    assert counted_extraction["images"] == before, "a rerun with the same inputs reads the feature cache"
    retrieval.evaluate(cfg.model_copy(update={"flip_tta": True}), progress=False, challenge=False)
    assert counted_extraction["images"] == before + nq + ng + n_val, "flip_tta recomputes"
    write_best_checkpoint(cfg, seed=4)
    retrieval.evaluate(cfg, progress=False, challenge=False)
    assert counted_extraction["images"] == before + 2 * (nq + ng + n_val), "new weights recompute"
    retrieval.evaluate(cfg.model_copy(update={"val_fraction": 0.0, "fusion": "weighted"}), progress=False,
                            challenge=False)
    assert not (out / "val_features.npz").exists(), "no split: no validation features left from an earlier run"


def test_zero_shot_and_init_checkpoint_say_which_weights(tiny_world_outputs, monkeypatch, tmp_path):
    monkeypatch.setenv("VICI_OUTPUTS", str(tiny_world_outputs))
    cfg = tiny_cfg(run_name="retrieval-zero-shot", device="cpu")
    assert "untrained" in retrieval.weights_source(cfg)
    ckpt = write_best_checkpoint(cfg.model_copy(update={"run_name": "elsewhere"}))
    cfg = cfg.model_copy(update={"init_checkpoint": str(ckpt)})
    assert retrieval.weights_source(cfg).startswith("init_checkpoint best.pt")
    base = baselines.colour_histogram_baseline(cfg, retrieval.open_dataset(cfg, progress=False).test, progress=False)
    assert base["protocol"] == "official" and 0 <= base["R@1"] <= 100


def test_notebook_03_runs_standalone_on_the_tiny_world(tiny_world_outputs, monkeypatch, tmp_path):
    monkeypatch.setenv("VICI_OUTPUTS", str(tiny_world_outputs))
    monkeypatch.setenv("VICI_HEADLESS", "1")
    text, images = execute("03_retrieval.ipynb", tmp_path / "03.ipynb", **TINY_WORLD, **TINY_MODEL, run_name="nb03", epochs=1)
    assert images >= 5
    assert "IProgress not found" not in text, "a library's warning about widgets we do not use"
    assert "different data" in text and "scored against the embedded ground truth" in text
    folder = run_dir("nb03") / "retrieval"
    assert {"metrics.json", "answer.txt", "topk.csv", "features.npz"} <= {p.name for p in folder.iterdir()}
    assert (folder / "challenge" / "answer.zip").is_file()
    assert json.loads((folder / "metrics.json").read_text())["weights"].startswith("random initialisation")
