"""The sentences notebooks print about a run are chosen by its numbers."""
import numpy as np
import pandas as pd

from vici_utils import narrative


def _log(r1, eval_set="val"):
    n = len(r1)
    return pd.DataFrame({"epoch": [5 * (i + 1) for i in range(n)], "loss": np.linspace(4.0, 1.0, n),
                         "R@1": r1, "eval_set": eval_set})


def test_training_story_follows_the_curve():
    rising = narrative.training_story(_log([10.0, 20.0, 30.0]))
    assert "best 30.0 % at epoch 15" in rising and "the best epoch was the last" in rising
    peaked = narrative.training_story(_log([10.0, 30.0, 20.0]))
    assert "fell 10.0 points after its peak" in peaked and "memorise" in peaked
    assert "memorise" not in rising
    assert "TEST set" in narrative.training_story(_log([1.0, 2.0], eval_set="test"))
    assert "No training" in narrative.training_story(pd.DataFrame())


def test_val_and_test_name_their_galleries_and_chance():
    text = narrative.val_and_test(40.0, 40, 20.0, 200)
    assert "chance 2.5 %" in text and "chance 0.5 %" in text and "5x larger" in text
    assert "16.0x on validation, 40.0x on test" in text


def test_modality_gap_verdict_depends_on_the_embeddings():
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(100, 8))
    assert "no real modality gap" in narrative.modality_gap(cloud, cloud + 0.01)
    assert "clear modality gap" in narrative.modality_gap(cloud, cloud + 10.0)


def test_rerank_change_states_the_sign():
    before = {"R@1": 13.31, "R@5": 41.22}
    assert "lowered R@1 from 13.3 % to 13.1 % (-0.2 points)" in narrative.rerank_change(
        before, {"R@1": 13.12, "R@5": 40.85}, "weighted", "the re-ranker")
    assert "raised R@1" in narrative.rerank_change(before, {"R@1": 16.0, "R@5": 41.22}, "rrf", "x")
    assert "left R@5 unchanged" in narrative.rerank_change(before, {"R@1": 16.0, "R@5": 41.22}, "rrf", "x")


def test_drone_effect_compares_the_difference_with_its_noise():
    runs = pd.DataFrame({"drone_rate": [0.0] * 5 + [0.3] * 5, "seed": list(range(5)) * 2,
                         "R@1": [10, 11, 9, 10, 10, 14, 15, 13, 14, 14]})
    assert "+4.00" in narrative.drone_effect(runs) and "a measured effect" in narrative.drone_effect(runs)
    noisy = runs.assign(**{"R@1": [10, 14, 6, 12, 8, 11, 7, 13, 9, 10]})
    assert "no effect distinguishable" in narrative.drone_effect(noisy)
    assert "one seed each" in narrative.drone_effect(runs.iloc[[0, 5]])
