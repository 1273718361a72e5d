"""Every recipe the README tells a researcher to run, in miniature: params/paper.yaml through all five notebooks,
the torchrun recipe, and a paper_* sweep. Only the keys that size a run down are overridden; the dataset is a
small tree in the University-1652 layout (the tiny embedded world's folder, challenge layout included), the
backbone a DINOv2-architecture ViT with a local weights file, the VLM a loopback Gemini-style server."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from tests.conftest import TINY_MODEL, TINY_WORLD
from tests.fake_vlm_servers import FakeVLMServer
from tests.notebooks import execute
from vici_utils.params import load, read_yaml, validate
from vici_utils.paths import REPO_ROOT
from vici_utils.world import WorldSpec, ensure_world

KEY = "planted-gemini-key-7f3a9c2e51"
PROXY_TOKEN = "planted-proxy-token-90c1d4"  # reaches vlm_base_url only as ${VLM_PROXY_TOKEN}
DINO = "vit_small_patch14_dinov2.lvd142m"


@pytest.fixture(scope="module")
def u1652_root(tiny_world_outputs):
    """The tiny world's folder: train/ and test/ in the University-1652 layout, plus the challenge files."""
    os.environ["VICI_OUTPUTS"] = str(tiny_world_outputs)
    try:
        root = ensure_world(WorldSpec.from_params(validate(TINY_WORLD)), progress=False)
    finally:
        del os.environ["VICI_OUTPUTS"]
    assert (root / "train" / "satellite").is_dir() and (root / "test" / "query_street_name.txt").is_file()
    return root


@pytest.fixture(scope="module")
def dino_weights(tmp_path_factory):
    """A weights file as a user downloads one: DINOv2 ViT-S layout on a 4 x 4 patch grid (the run resamples the
    position embeddings to its own image size), with a classifier-free state dict."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "dinov2_vits14.pth"
    torch.save(timm.create_model(DINO, pretrained=False, num_classes=0, img_size=56).state_dict(), path)
    return path


@pytest.fixture
def gemini_server():
    with FakeVLMServer() as server:
        yield server


def shrink(weights, server) -> list[str]:
    """--set overrides that make params/paper.yaml run on 2 CPU cores in seconds, and nothing else."""
    keys = {"backbone": DINO, "pretrained": str(weights), "image_size": 28, "epochs": 1, "batch_size": 4,
            "device": "cpu", "num_workers": 0,
            "vlm_base_url": server.url.replace("://", "://vici:${VLM_PROXY_TOKEN}@")}
    return [f"{k}={v}" for k, v in keys.items()]


def cli(args, outputs, u1652_root, timeout=600):
    env = {**os.environ, "VICI_OUTPUTS": str(outputs), "U1652_ROOT": str(u1652_root), "GEMINI_API_KEY": KEY,
           "VLM_PROXY_TOKEN": PROXY_TOKEN}
    done = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args[:6]))} ... failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def sets(items):
    return [a for item in items for a in ("--set", item)]


def assert_no_key_in(folder: Path):
    for secret in (KEY, PROXY_TOKEN):
        leaks = [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert not leaks, f"a secret was written to {leaks}"


def manifest(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text())


def test_paper_recipe_runs_all_five_notebooks(tmp_path, u1652_root, dino_weights, gemini_server):
    outputs = tmp_path / "outputs"
    cli([sys.executable, "-m", "vici_utils", "run", "params/paper.yaml", *sets(shrink(dino_weights, gemini_server))],
        outputs, u1652_root)
    run = outputs / "paper"
    m = manifest(run)
    assert m["status"] == "ok" and [n["status"] for n in m["notebooks"]] == ["ok"] * 5
    # paper.yaml's recipe reached the run unchanged: NT-Xent, timm augmentation, selection on test
    stored = read_yaml(run / "train" / "config.yaml")
    assert (stored["loss"], stored["augment"], stored["select_on"], stored["val_fraction"], stored["lr"]) == \
        ("ntxent", "timm", "test", 0.0, 1e-5)
    assert stored["data_root"] == str(u1652_root)
    metrics = json.loads((run / "retrieval" / "metrics.json").read_text())
    assert metrics["n_query"] > 0 and (run / "retrieval" / "challenge" / "answer.zip").is_file()
    assert (run / "rerank" / "answer_fused.txt").is_file()
    # the real google-genai client asked the loopback server, with the key from the environment only
    assert gemini_server.seen and all(s.api_key == KEY for s in gemini_server.seen)
    assert_no_key_in(run)


def test_torchrun_recipe_then_evaluation(tmp_path, u1652_root, dino_weights, gemini_server):
    """README: torchrun trains, then the runner evaluates the same run_name with notebooks 03 and 04."""
    outputs = tmp_path / "outputs"
    shrunk = [*shrink(dino_weights, gemini_server), "run_name=ddp"]
    torchrun = Path(sys.executable).with_name("torchrun")
    out = cli([str(torchrun), "--nproc_per_node", "2", "-m", "vici_utils.train", "params/paper.yaml", "--set", *shrunk],
              outputs, u1652_root)
    assert "kept epoch 1 (best) on test" in out
    cli([sys.executable, "-m", "vici_utils", "run", "params/paper.yaml", *sets(shrunk), "--only", "03,04"],
        outputs, u1652_root)
    m = manifest(outputs / "ddp")
    assert m["status"] == "ok" and [n["name"][:2] for n in m["notebooks"]] == ["03", "04"]
    assert "trained checkpoint ddp/train/best.pt" in json.loads(
        (outputs / "ddp" / "retrieval" / "metrics.json").read_text())["weights"]
    assert_no_key_in(outputs / "ddp")


def test_a_paper_sweep_runs_its_first_variant(tmp_path, u1652_root, dino_weights, gemini_server):
    outputs = tmp_path / "outputs"
    cli([sys.executable, "-m", "vici_utils", "sweep", "params/tables/paper_drone_rate.yaml", "--variants", "p0",
         *sets(shrink(dino_weights, gemini_server))], outputs, u1652_root)
    results = (outputs / "paper_drone_rate" / "results.csv").read_text().splitlines()
    assert len(results) == 5  # header + every variant listed, though only p0 ran
    assert manifest(outputs / "paper_drone_rate" / "p0")["status"] == "ok"
    assert not (outputs / "paper_drone_rate" / "p0.1").exists()


def test_training_keys_changed_on_the_command_line_do_not_block_evaluation(tiny_world_outputs, monkeypatch, tmp_path):
    """Regression: notebook 02 with a non-default lr, then notebook 03 on the same run (runner and papermill)."""
    monkeypatch.setenv("VICI_OUTPUTS", str(tiny_world_outputs))
    from vici_utils.runner import run

    cfg = load(REPO_ROOT / "params/default.yaml",
               {**TINY_WORLD, **TINY_MODEL, "run_name": "lrcheck", "epochs": 2, "lr": 0.001, "batch_size": 8, "device": "cpu"})
    m = run(cfg, only=["02", "03"], log=lambda line: None)
    assert [n["status"] for n in m["notebooks"]] == ["ok", "ok"]
    # papermill used directly, with the run name alone: the notebook reads the run's own parameters
    text, _ = execute("03_retrieval.ipynb", tmp_path / "03.ipynb", run_name="lrcheck")
    assert "trained checkpoint lrcheck/train/best.pt" in text


def test_evaluation_refuses_a_checkpoint_of_other_data(tiny_world_outputs, monkeypatch):
    monkeypatch.setenv("VICI_OUTPUTS", str(tiny_world_outputs))
    from vici_utils.checkpoints import WeightsError
    from vici_utils.models import load_model_for_eval
    from vici_utils.train import train

    cfg = validate({**TINY_WORLD, **TINY_MODEL, "run_name": "otherdata", "epochs": 1, "batch_size": 8, "device": "cpu",
                    "val_fraction": 0.0, "fusion": "weighted"})
    train(cfg, progress=False)
    load_model_for_eval(cfg.model_copy(update={"lr": 0.5, "epochs": 9}))  # training keys: fine
    with pytest.raises(WeightsError, match="world_seed"):
        load_model_for_eval(cfg.model_copy(update={"world_seed": 7}))
