"""Past 951 tiles (issue 24): extra distractor galleries, rendered extra tiles, sharded embedding under torchrun."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_MODEL, TINY_WORLD
from vici_utils import embed, metrics
from vici_utils.gallery import EXTRA, extra_items, with_extra_tiles
from vici_utils.params import validate
from vici_utils.paths import REPO_ROOT
from vici_utils.u1652 import DatasetError, ImageItem, RetrievalSet


def tiles(folder: Path, names, size=8):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.new("RGB", (size, size), (len(n) * 20 % 255, 0, 0)).save(folder / n)
    return folder


# --- extra distractor galleries -----------------------------------------------------------------------------------

def test_extra_folders_join_the_gallery_as_distractors_that_compete(tmp_path):
    a = tiles(tmp_path / "a", ["t1.jpg", "t2.png"])
    tiles(tmp_path / "b" / "sub", ["t3.jpeg"])
    tiles(tmp_path / "b", [".hidden.jpg"])
    (tmp_path / "b" / "notes.txt").write_text("not a tile")
    items = extra_items([a, tmp_path / "b"], taken=["0001"])
    assert [i.name for i in items] == ["t1", "t2", "t3"] and {i.building for i in items} == {EXTRA}
    # an extra tile that scores above the true match pushes it down under the official protocol only
    q = np.array([[1.0, 0.0]], np.float32)
    g = np.array([[0.8, 0.6], [1.0, 0.0]], np.float32)
    official = metrics.evaluate(q, g, ["0001"], ["0001", EXTRA])
    dropped = metrics.evaluate(q, g, ["0001"], ["0001", EXTRA], protocol="distractors_dropped")
    assert official["first_match_rank"].tolist() == [2] and dropped["first_match_rank"].tolist() == [1]


def test_bad_extra_folders_are_refused_naming_the_key_and_path(tmp_path):
    with pytest.raises(DatasetError, match="extra_gallery: .*missing is not a folder"):
        extra_items([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="extra_gallery: .*empty holds no"):
        extra_items([tmp_path / "empty"])
    a = tiles(tmp_path / "a", ["0001.jpg"])
    with pytest.raises(DatasetError, match="named '0001' like another gallery tile"):
        extra_items([a], taken=["0001"])


def test_the_run_test_set_adds_folders_and_rendered_world_tiles(tiny_world_outputs, monkeypatch, tmp_path):
    monkeypatch.setenv("VICI_OUTPUTS", str(tiny_world_outputs))
    from vici_utils.provenance import describe_data
    from vici_utils.u1652 import open_dataset
    from vici_utils.world import WorldSpec
    from vici_utils.world.extra import extra_dir

    folder = tiles(tmp_path / "gallery_satellite_160k", ["z1.jpg", "z2.jpg"])
    cfg = validate({**TINY_WORLD, "world_extra_distractors": 3, "extra_gallery": [str(folder)]})
    base = open_dataset(cfg, progress=False).test
    test = with_extra_tiles(cfg, base, progress=False)
    assert len(test.gallery) == len(base.gallery) + 5 and test.queries == base.queries
    assert [g.name for g in test.gallery[-5:]] == ["x000000", "x000001", "x000002", "z1", "z2"]
    assert "3 rendered tiles, gallery_satellite_160k" in describe_data(cfg)
    first = (extra_dir(WorldSpec.from_params(cfg)) / "x000000.jpg")
    stamp, data = first.stat().st_mtime_ns, first.read_bytes()
    more = with_extra_tiles(cfg.model_copy(update={"world_extra_distractors": 5}), base, progress=False)
    assert len(more.gallery) == len(base.gallery) + 7
    assert first.stat().st_mtime_ns == stamp  # cached: only the two new tiles were rendered
    with Image.open(first) as im:
        assert im.size == (WorldSpec.from_params(cfg).sat_size,) * 2
    assert with_extra_tiles(validate(TINY_WORLD), base) is base  # nothing extra: today's test set, nothing rendered


# --- sharded embedding --------------------------------------------------------------------------------------------

def test_merge_keeps_each_image_once_from_padded_shards(tmp_path):
    from torch.utils.data.distributed import DistributedSampler

    n, world = 7, 3  # DistributedSampler pads 7 to 9 by repeating images 0 and 1
    items = [f"img{i}" for i in range(n)]
    fake = lambda x: x  # noqa: E731
    for rank in range(world):
        idx = np.fromiter(iter(DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False)), np.int64)
        rows_path, idx_path = embed._shard_paths(tmp_path, "gallery", rank)
        np.save(rows_path, np.stack([np.full(4, float(i), np.float32) for i in idx]))
        np.save(idx_path, idx)
    assert sum(len(np.load(embed._shard_paths(tmp_path, "gallery", r)[1])) for r in range(world)) == 9
    out = embed.merge_shards(tmp_path, "gallery", n, world, "float16", key="k")
    merged = np.load(out)
    assert merged.dtype == np.float16 and merged[:, 0].tolist() == list(range(n))
    assert embed.read_merged(tmp_path, "gallery", "k") is not None and embed.read_merged(tmp_path, "gallery", "x") is None
    assert not list(tmp_path.glob("*.rank*"))  # shards removed once merged
    del items, fake
    np.save(embed._shard_paths(tmp_path, "query", 0)[0], np.zeros((2, 4), np.float32))
    np.save(embed._shard_paths(tmp_path, "query", 0)[1], np.array([0, 2]))
    with pytest.raises(RuntimeError, match="cover 2 of 3 images.*first missing: 1"):
        embed.merge_shards(tmp_path, "query", 3, 1, "float32", key="k")


def _cli(args, outputs):
    env = {**os.environ, "VICI_OUTPUTS": str(outputs), "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def test_torchrun_two_gloo_processes_give_one_process_features(tiny_world_outputs, tmp_path, monkeypatch):
    """2 gloo processes on the CPU, then one process without torchrun: the same merged features; then notebook
    03's stage reads them (memory-mapped) instead of embedding again."""
    outputs = tmp_path / "outputs"
    shutil.copytree(tiny_world_outputs, outputs)
    sets = [f"{k}={v}" for k, v in {**TINY_WORLD, **TINY_MODEL, "epochs": 0, "device": "cpu", "num_workers": 0,
                                    "world_extra_distractors": 4, "eval_batch_size": 4}.items()]
    torchrun = Path(sys.executable).with_name("torchrun")
    out = _cli([str(torchrun), "--nproc_per_node", "2", "-m", "vici_utils.embed", "--set", *sets, "run_name=two"],
               outputs)
    assert "gallery features of dim" in out
    _cli([sys.executable, "-m", "vici_utils.embed", "--set", *sets, "run_name=one"], outputs)
    for part in ("query", "gallery"):
        two = np.load(outputs / "two" / "retrieval" / f"features_{part}.f32.npy")
        one = np.load(outputs / "one" / "retrieval" / f"features_{part}.f32.npy")
        assert two.shape == one.shape and np.isfinite(two).all()
        np.testing.assert_allclose(two, one, atol=1e-5)
        assert json.loads((outputs / "two" / "retrieval" / f"features_{part}.f32.json").read_text())["processes"] == 2
    assert not list((outputs / "two" / "retrieval").glob("*.rank*"))

    monkeypatch.setenv("VICI_OUTPUTS", str(outputs))
    from vici_utils import retrieval

    cfg = validate(dict(s.split("=", 1) for s in sets) | {"run_name": "two"})
    result = retrieval.evaluate(cfg, progress=False, challenge=False)
    assert isinstance(result.gallery_features, np.memmap)  # read, not embedded again
    np.testing.assert_array_equal(result.gallery_features, np.load(outputs / "two/retrieval/features_gallery.f32.npy"))
    summary = json.loads((outputs / "two" / "retrieval" / "metrics.json").read_text())
    assert summary["n_extra_distractors"] == 4 and summary["n_gallery"] == len(result.test.gallery)
    assert "4 rendered tiles" in summary["data"]


# --- accuracy against gallery size --------------------------------------------------------------------------------

def test_top_list_metrics_equal_the_official_metric_when_the_list_holds_the_gallery():
    rng = np.random.default_rng(5)
    q, g = rng.standard_normal((40, 8)).astype(np.float32), rng.standard_normal((9, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    gids = ["a", "b", "a", None, "c", EXTRA, "d", "-1", "b"]
    qids = list(rng.choice(["a", "b", "c", "d", "e"], 40))
    from vici_utils.gallery import top_list_metrics

    full = metrics.evaluate(q, g, qids, gids)
    listed = top_list_metrics(metrics.full_ranking(q, g), qids, gids)
    for k in ("R@1", "R@10", "AP"):
        assert listed[k] == pytest.approx(full[k], abs=1e-6), k
    short = top_list_metrics(metrics.full_ranking(q, g)[:, :2], qids, gids)
    assert short["AP"] <= full["AP"] + 1e-9 and short["R@1"] == pytest.approx(full["R@1"])


def test_size_curve_exact_rows_are_the_official_metric_of_each_prefix():
    from vici_utils.gallery import size_curve

    rng = np.random.default_rng(6)
    g = rng.standard_normal((600, 16)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = g[:30] + 0.3 * rng.standard_normal((30, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    gids = [f"{i:04d}" for i in range(30)] + [EXTRA] * 570
    curve = size_curve(q, g, gids[:30], gids, [30, 600], spec="IVF4,Flat", nprobe=4, rescore_k=20)
    exact = curve[curve.search == "exact"].set_index("size")
    assert exact.loc[600, "AP"] == pytest.approx(metrics.evaluate(q, g, gids[:30], gids)["AP"])
    assert exact.loc[600, "R@1"] <= exact.loc[30, "R@1"]  # distractors can only push true matches down
    comp = curve[curve.search == "compressed"].set_index("size")
    assert comp.loc[600, "R@1"] == pytest.approx(exact.loc[600, "R@1"])  # every list visited: exact top 10


def test_gallery_size_sentence_reads_the_curve():
    import pandas as pd

    from vici_utils.narrative import gallery_size

    def curve(comp_r1):
        rows = [(200, "exact", "flat", 25.69, 80.78, 34.1), (2200, "exact", "flat", 3.9, 28.1, 6.0),
                (200, "compressed", "IVF", 25.69, 80.78, 34.1), (2200, "compressed", "IVF", comp_r1, 28.0, 5.9)]
        return pd.DataFrame(rows, columns=["size", "search", "index", "R@1", "R@10", "AP"])

    same = gallery_size(curve(3.9))
    assert same.startswith("From 200 to 2,200 gallery tiles (11x), exact search's R@1 goes from 25.7 % to 3.9 %")
    assert same.endswith("gives exact search's R@1 at every size."), "no 'within 0.0 points'"
    assert gallery_size(curve(3.5)).endswith("stays within 0.4 points of exact R@1 at every size.")


def test_notebook_03_draws_the_gallery_size_curve_when_extra_tiles_are_present(tiny_world_outputs, monkeypatch,
                                                                              tmp_path):
    from tests.notebooks import execute

    monkeypatch.setenv("VICI_OUTPUTS", str(tiny_world_outputs))
    monkeypatch.setenv("VICI_HEADLESS", "1")
    text, images = execute("03_retrieval.ipynb", tmp_path / "03.ipynb", **TINY_WORLD, **TINY_MODEL, run_name="nb03x",
                           epochs=0, world_extra_distractors=60)
    assert "gallery tiles (" in text and "No extra distractor tiles" not in text
    assert "distractor buildings, and 60 extra distractor tiles)" in text, "the gallery line counts the extra tiles"
    assert "stays within" in text or "gives exact search's R@1 at every size" in text
    summary = json.loads((tiny_world_outputs / "nb03x" / "retrieval" / "metrics.json").read_text())
    assert summary["n_extra_distractors"] == 60 and "60 rendered tiles" in summary["data"]


def test_lazy_scores_index_like_the_score_matrix():
    from vici_utils.retrieval import LazyScores, _scores

    rng = np.random.default_rng(8)
    q, g = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((7, 4)).astype(np.float32)
    full, lazy = q @ g.T, LazyScores(q, g)
    assert lazy.shape == full.shape and lazy[2, 3] == pytest.approx(full[2, 3], abs=1e-6)
    rows, cols = np.array([4, 0]), np.array([6, 1, 2])
    np.testing.assert_allclose(lazy[np.ix_(rows, cols)], full[np.ix_(rows, cols)], atol=1e-6)
    assert isinstance(_scores(q, g), np.ndarray)  # small galleries keep today's matrix
