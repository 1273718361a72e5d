"""Notebook 02's in-chapter claim: P = 0 against P = 0.3 on the quick preset, paired by seed."""
import pandas as pd

from tests.conftest import TINY_MODEL, TINY_WORLD
from vici_utils import quick_claim
from vici_utils.params import load


def test_quick_preset_is_the_default_model_on_a_smaller_world_and_budget():
    quick, default = load(quick_claim.QUICK), load("params/default.yaml")
    for key in ("backbone", "pretrained", "drone_rate", "data_root"):
        assert getattr(quick, key) == getattr(default, key), key
    assert quick.world_train_locations < default.world_train_locations and quick.epochs < default.epochs
    assert quick.run_name != default.run_name, "a quick run never overwrites the default run"


def test_drone_claim_trains_both_rates_per_seed_and_reuses_finished_runs(outputs):
    tiny = {**TINY_WORLD, **TINY_MODEL, "epochs": 1, "batch_size": 4, "device": "cpu"}
    runs = quick_claim.drone_claim(2, tiny)
    assert list(zip(runs["seed"], runs["P"])) == [(0, 0.0), (0, 0.3), (1, 0.0), (1, 0.3)]
    assert set(runs["run"]) == {"quick-claim/p0_s0", "quick-claim/p0.3_s0", "quick-claim/p0_s1", "quick-claim/p0.3_s1"}
    for run in runs["run"]:
        assert (outputs / run / "train" / "best.pt").is_file() and (outputs / run / "retrieval" / "metrics.json").is_file()
    again = quick_claim.drone_claim(2, tiny)
    pd.testing.assert_frame_equal(runs, again)   # read back, not retrained (a retrain would fail on nothing: same seeds)
    text = quick_claim.claim_sentence(runs)
    d = runs[runs["P"] == 0.3]["R@1"].to_numpy() - runs[runs["P"] == 0.0]["R@1"].to_numpy()
    assert text.startswith(f"Drone mixing on the quick preset, P = 0.3 minus P = 0: {d.mean():+.2f} points of R@1")
    assert text.endswith(quick_claim.PAPER_NOTE)
