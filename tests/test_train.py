"""The schedule and training runs: files, resume, stored results (the losses: test_losses.py)."""
import math

import pandas as pd
import pytest
import torch
import yaml

from vici_utils.checkpoints import WeightsError
from vici_utils.params import validate
from vici_utils.train import TrainConfigError, lr_factor, train

from .conftest import TINY_MODEL, TINY_WORLD


def test_schedules():
    cfg = validate({"epochs": 10, "warmup_epochs": 2})
    f = [lr_factor(s, 5, cfg) for s in range(50)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] < 0.01
    exp = validate({"epochs": 10, "warmup_epochs": 0, "schedule": "exponential", "lr_gamma": 0.5})
    assert [lr_factor(s, 5, exp) for s in (0, 4, 5, 12)] == [1.0, 1.0, 0.5, 0.25]


# --- training runs on a tiny generated world -------------------------------------------------------------
@pytest.fixture
def tiny_cfg(tiny_world_outputs, tmp_path, monkeypatch):
    from vici_utils.world import WorldSpec

    root = tiny_world_outputs / "worlds" / WorldSpec.from_params(validate(TINY_WORLD)).key()
    monkeypatch.setenv("VICI_OUTPUTS", str(tmp_path / "outputs"))
    return validate({**TINY_MODEL, "data_root": str(root), "image_size": 32, "batch_size": 4, "epochs": 3, "val_every": 2,
                     "warmup_epochs": 1, "num_workers": 0, "eval_batch_size": 16})


def test_training_writes_its_files_and_a_rerun_returns_the_stored_result(tiny_cfg, tmp_path):
    r = train(tiny_cfg.model_copy(update={"run_name": "files"}), progress=False)
    d = tmp_path / "outputs/files/train"
    assert {p.name for p in d.iterdir()} >= {"last.pt", "best.pt", "train_log.csv", "config.yaml", "result.json"}
    log = pd.read_csv(d / "train_log.csv")
    assert list(log.columns) == ["epoch", "step", "loss", "lr", "temperature", "drone_rate", "eval_set", "R@1",
                                 "R@5", "R@10", "AP", "seconds"]
    assert log["epoch"].tolist() == [1, 2, 3] and log["step"].tolist() == [2, 4, 6]  # 10 buildings, batch 4
    assert log["R@1"].isna().tolist() == [True, False, False]  # every 2 epochs and the last
    assert (log["eval_set"] == "val").all() and log["loss"].notna().all()
    assert yaml.safe_load((d / "config.yaml").read_text())["run_name"] == "files"
    assert r.best_epoch in (2, 3) and set(r.best) == {"R@1", "R@5", "R@10", "AP"} and r.epochs_now == 3
    best = torch.load(d / "best.pt")
    assert best["epoch"] == r.best_epoch and best["model_config"]["image_size"] == 32

    again = train(tiny_cfg.model_copy(update={"run_name": "files"}), progress=False)
    assert again.epochs_now == 0 and again.best == r.best and again.log["step"].tolist() == [2, 4, 6]
    with pytest.raises(TrainConfigError, match=r"trained with other parameters: lr \([0-9.e-]+ -> 0\.01\)"):
        train(tiny_cfg.model_copy(update={"run_name": "files", "lr": 0.01}), progress=False)


def test_interrupted_run_resumes_to_the_same_weights(tiny_cfg):
    full = tiny_cfg.model_copy(update={"run_name": "full", "drone_rate": 0.5})
    train(full, progress=False)
    cut = full.model_copy(update={"run_name": "cut"})
    part = train(cut, progress=False, stop_after_epoch=1)
    assert part.epochs_now == 1 and len(part.log) == 1
    with pytest.raises(TrainConfigError, match=r"batch_size \(4 -> 2\)"):
        train(cut.model_copy(update={"batch_size": 2}), progress=False)
    # resume with DataLoader workers this time: the sampled pairs and augmentations do not depend on them
    rest = train(cut.model_copy(update={"num_workers": 1}), progress=False)
    assert rest.epochs_now == 2 and rest.log["epoch"].tolist() == [1, 2, 3]

    from vici_utils.run_folder import run_dir

    a = torch.load(run_dir("full") / "train/last.pt")
    b = torch.load(run_dir("cut") / "train/last.pt")
    for part_name in ("model", "loss"):
        assert a[part_name].keys() == b[part_name].keys()
        for k in a[part_name]:
            assert torch.equal(a[part_name][k], b[part_name][k]), k
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"]
    cols = ["loss", "drone_rate", "R@1"]
    pd.testing.assert_frame_equal(pd.DataFrame(a["log"])[cols], pd.DataFrame(b["log"])[cols])


def test_select_on_test_is_recorded(tiny_cfg):
    r = train(tiny_cfg.model_copy(update={"run_name": "sel", "select_on": "test", "epochs": 1}), progress=False)
    assert r.eval_set == "test" and (r.log["eval_set"] == "test").all() and not math.isnan(r.log["R@1"].iloc[0])


def test_the_last_epoch_is_kept_by_default_and_select_epoch_best_keeps_the_best_check(tiny_cfg):
    """Issue 19: the epoch chosen on a few dozen held-out buildings was partly noise, so the default keeps the last
    epoch; which epoch is kept changes no step of training."""
    from vici_utils.run_folder import run_dir

    last = train(tiny_cfg.model_copy(update={"run_name": "keep_last", "epochs": 4, "val_every": 1}), progress=False)
    best = train(tiny_cfg.model_copy(update={"run_name": "keep_best", "epochs": 4, "val_every": 1,
                                              "select_epoch": "best"}), progress=False)
    pd.testing.assert_frame_equal(last.log.drop(columns="seconds"), best.log.drop(columns="seconds"))
    d = run_dir("keep_last") / "train"
    kept, final = torch.load(d / "best.pt"), torch.load(d / "last.pt")
    assert last.best_epoch == kept["epoch"] == 4 and all(torch.equal(kept["model"][k], v)
                                                           for k, v in final["model"].items())
    assert last.best == {k: last.log[k].iloc[-1] for k in last.best}
    checked = best.log.dropna(subset=["R@1"])
    assert best.best_epoch == int(checked.loc[checked["R@1"].idxmax(), "epoch"])
    assert torch.load(run_dir("keep_best") / "train/best.pt")["epoch"] == best.best_epoch


def test_a_finished_run_that_kept_its_best_epoch_keeps_its_last_without_training(tiny_cfg):
    """Issue 19: runs stored before select_epoch existed kept their best epoch; asked for the last epoch, they are
    re-selected from last.pt (saved at the final epoch), not trained again. The other way is refused: the best
    epoch's weights are gone once best.pt holds the last."""
    from vici_utils.run_folder import run_dir

    old = tiny_cfg.model_copy(update={"run_name": "legacy", "epochs": 4, "val_every": 1, "select_epoch": "best"})
    first = train(old, progress=False)
    d = run_dir("legacy") / "train"
    stored = yaml.safe_load((d / "config.yaml").read_text())
    del stored["select_epoch"]                      # as written before the key existed
    (d / "config.yaml").write_text(yaml.safe_dump(stored))
    again = train(old.model_copy(update={"select_epoch": "last"}), progress=False)
    assert again.epochs_now == 0 and again.best_epoch == 4 and again.log.equals(first.log)
    kept, final = torch.load(d / "best.pt"), torch.load(d / "last.pt")
    assert kept["epoch"] == 4 and all(torch.equal(kept["model"][k], v) for k, v in final["model"].items())
    assert yaml.safe_load((d / "config.yaml").read_text())["select_epoch"] == "last"
    with pytest.raises(TrainConfigError, match=r"select_epoch \('last' -> 'best'\)"):
        train(old, progress=False)


def test_a_stop_between_the_two_saves_keeps_the_resume_point(tiny_cfg, monkeypatch):
    """Issue 22.13: best.pt was saved before last.pt, so a Ctrl-C between them lost the resume point. last.pt is
    saved first now, and resuming redoes the best.pt save the stop cut."""
    import vici_utils.train as train_module
    from vici_utils.run_folder import run_dir

    cfg = tiny_cfg.model_copy(update={"run_name": "cut_save", "select_epoch": "best"})  # best.pt saved mid-run
    save = train_module._save_atomic

    def stop_at_best(obj, path):
        if path.name == "best.pt":
            raise KeyboardInterrupt
        save(obj, path)

    monkeypatch.setattr(train_module, "_save_atomic", stop_at_best)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    d = run_dir("cut_save") / "train"
    assert torch.load(d / "last.pt")["epoch"] == 2 and not (d / "best.pt").exists()
    monkeypatch.setattr(train_module, "_save_atomic", save)
    r = train(cfg, progress=False)
    assert r.epochs_now == 1 and torch.load(d / "best.pt")["epoch"] == r.best_epoch


def test_evaluating_an_unfinished_training_says_so(tiny_cfg):
    """Issue 22.5: `--only 03` after training stopped at epoch 1 of 3 reported that checkpoint as the model."""
    import json

    from vici_utils.run_folder import run_dir
    from vici_utils import retrieval
    from vici_utils.retrieval import UnfinishedTraining

    cfg = tiny_cfg.model_copy(update={"run_name": "half"})
    train(cfg, progress=False, stop_after_epoch=1)
    with pytest.warns(UnfinishedTraining, match="UNFINISHED training: epoch 1 of 3"):
        result = retrieval.evaluate(cfg, progress=False, challenge=False)
    finish = "python -m vici_utils run <its params file> --set run_name=half --only 02"
    assert f"UNFINISHED training: epoch 1 of 3; finish it with {finish}" in result.model_description
    metrics = json.loads((run_dir("half") / "retrieval/metrics.json").read_text())
    assert metrics["training"] == {"finished": False, "epoch": 1, "epochs": 3, "finish": finish}
    assert "UNFINISHED" in metrics["weights"]
    train(cfg, progress=False)
    assert "UNFINISHED" not in retrieval.evaluate(cfg, progress=False, challenge=False).model_description


def test_a_corrupt_resume_checkpoint_is_named_with_the_fix(tiny_world_outputs, monkeypatch, tmp_path):
    """Issue 12 (8): a torn last.pt."""
    monkeypatch.setenv("VICI_OUTPUTS", str(tmp_path / "outputs"))
    cfg = validate({**TINY_WORLD, **TINY_MODEL, "run_name": "torn", "epochs": 2, "batch_size": 4})
    last = tmp_path / "outputs" / "torn" / "train" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    with pytest.raises(WeightsError, match=r"last.pt.*Delete .*last.pt to start this run again, or set resume: false"):
        train(cfg, progress=False)
