"""The sentences notebooks print about a run are chosen by its numbers."""
import numpy as np
import pytest
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


def test_variant_difference_compares_the_difference_with_its_noise():
    runs = pd.DataFrame({"variant": ["p0"] * 5 + ["p0.3"] * 5, "seed": list(range(5)) * 2, "status": "ok",
                         "R@1": [10, 11, 9, 10, 10, 14, 15, 13, 14, 14]})
    text = narrative.variant_difference(runs.drop(columns="seed"), "p0", "p0.3", "Drone mixing",
                                        "The paper reports +3.0.")
    # without seeds to pair, Welch: se = sqrt(0.5/5 + 0.5/5), 8 degrees of freedom, t(0.975, 8) = 2.306
    assert text.startswith("Drone mixing: +4.00 points of R@1 (14.00 against 10.00, 5 and 5 seeds; "
                           "95 % confidence interval +2.97 to +5.03")
    assert "excludes zero: a measured effect" in text and text.endswith("The paper reports +3.0.")
    # issue 19: with the same seeds on both sides, paired by seed (seed 4 of p0.3 listed first: matched by seed)
    shifted = runs.assign(**{"R@1": [10, 11, 9, 10, 10, 13, 15, 14, 14, 15]}).iloc[[0, 1, 2, 3, 4, 9, 5, 6, 7, 8]]
    paired = narrative.variant_difference(shifted, "p0", "p0.3", "Drone mixing")
    assert paired == narrative.paired_difference([10, 11, 9, 10, 10], [13, 15, 14, 14, 15], "Drone mixing")
    assert "paired t-test over seeds" in paired
    noisy = runs.assign(**{"R@1": [10, 14, 6, 12, 8, 11, 7, 13, 9, 10]})
    assert "includes zero: no effect distinguishable" in narrative.variant_difference(noisy, "p0", "p0.3", "x")
    assert "one seed cannot tell" in narrative.variant_difference(runs.iloc[[0, 5]], "p0", "p0.3", "x")
    failed = runs.assign(status=["ok"] * 5 + ["failed"] * 5)
    assert "no finished runs of both 'p0' and 'p0.3'" in narrative.variant_difference(failed, "p0", "p0.3", "x")
    assert "no finished runs" in narrative.variant_difference(pd.DataFrame(), "p0", "p0.3", "x")


def _rerank_results(changes: dict[str, list[float]], before=(10.0, 12.0, 8.0)):
    rows = []
    for label, deltas in changes.items():
        for seed, (b, d) in enumerate(zip(before, deltas)):
            rows.append({"variant": label, "label": label, "seed": seed, "status": "ok", "rerank.retrieval.R@1": b,
                         "rerank.weighted.R@1": b + d, "rerank.reranker.R@1": b - 2, "rerank.rrf.R@1": b + d / 2})
    rows.append({"variant": "trained", "label": "retrieval", "seed": 0, "status": "ok", "R@1": 10.0})
    return pd.DataFrame(rows)


def test_rerank_gains_are_paired_by_seed_and_judged_against_their_noise():
    from vici_utils.results import rerank_gains

    gains = rerank_gains(_rerank_results({"steady": [3.0, 3.2, 2.8], "noisy": [3.0, -3.0, 0.6]}))
    assert list(gains["re-ranker"].unique()) == ["steady", "noisy"]  # the retrieval-only variant has no row
    steady = gains[(gains["re-ranker"] == "steady") & (gains["rule"] == "weighted")].iloc[0]
    assert steady["change"] == pytest.approx(3.0) and steady["change std"] == pytest.approx(0.2)
    assert steady["retrieval R@1"] == pytest.approx(10.0) and steady["seeds"] == 3
    text = narrative.rerank_gains(gains).splitlines()
    # paired: sd 0.2 over 3 seeds, 2 degrees of freedom, t(0.975, 2) = 4.303
    assert text[0].startswith("steady: its best rule (weighted, the best of 3 after the fact")
    assert "+3.00 points (mean of 3 seeds' paired differences; 95 % confidence interval +2.50 to +3.50" in text[0]
    assert text[0].endswith("excludes zero: a measured gain.")
    assert "noisy: its best rule (weighted" in text[1] and "includes zero: no effect distinguishable" in text[1]
    one = narrative.rerank_gains(rerank_gains(_rerank_results({"once": [-1.0]}, before=(10.0,))))
    assert "its best rule (rrf) changed R@1 by -0.50 points on one seed, which cannot tell" in one
    assert narrative.rerank_gains(rerank_gains(pd.DataFrame({"variant": [], "status": []}))).startswith("No ")


def test_runs_that_chose_different_rules_report_each_its_own():
    """Issue 19: a sweep's runs each report the rule validation chose for them; when seeds chose different rules,
    the reported change is each run's own rule, not the first seed's rule applied to all."""
    from vici_utils.results import rerank_gains

    runs = _rerank_results({"mixed": [3.0, 1.0, 2.0]}).assign(**{"rerank.headline": ["weighted", "rrf", "weighted", None]})
    gains = rerank_gains(runs)
    reported = gains[gains["reported"]]
    assert len(reported) == 1 and reported["rule"].iloc[0] == "each run's own: weighted x2, rrf x1"
    assert reported["change"].iloc[0] == pytest.approx((3.0 + 0.5 + 2.0) / 3)   # rrf adds half of the delta
    assert "its reported rule (each run's own: weighted x2, rrf x1" in narrative.rerank_gains(gains)


def test_loss_against_chance_follows_the_loss():
    close = narrative.loss_against_chance(2.135, 8, 0.1)
    assert close.startswith("At T = 0.1 the loss of these 8 pairs is 2.13, against log 8 = 2.08") and "close to it" in close
    assert "confidently wrong" in narrative.loss_against_chance(6.52, 8, 0.01)
    assert "already tells some" in narrative.loss_against_chance(1.0, 8, 0.1)


def test_drone_batch_compares_the_count_with_the_binomial():
    low = narrative.drone_batch(12, 64, 64, 0.3)   # 19.2 expected, sd 3.67: z = -1.96
    assert "19.2 on average (binomial standard deviation 3.7)" in low and "within the usual spread" in low
    assert "unusually low" in narrative.drone_batch(5, 64, 64, 0.3)
    assert "With P = 0.3 and 10 of them having drone images, a batch holds 3.0" in narrative.drone_batch(3, 64, 10, 0.3)


def test_paired_difference_uses_the_per_seed_differences():
    a, b = np.array([10.0, 12.0, 8.0]), np.array([13.0, 15.2, 10.8])   # differences 3.0, 3.2, 2.8: sd 0.2
    text = narrative.paired_difference(a, b, "Drone mixing")
    # mean 3.0, se 0.2 / sqrt(3), t(0.975, 2) = 4.303: half-width 0.50
    assert text.startswith("Drone mixing: +3.00 points of R@1 (13.00 against 10.00, 3 and 3 seeds; 95 % confidence "
                           "interval +2.50 to +3.50, paired t-test over seeds, p = ")
    assert "excludes zero" in text
    # the same numbers unpaired would be noise: the seeds' spread (2 points) dwarfs the effect
    assert "includes zero" in narrative.variant_difference(
        pd.DataFrame({"variant": ["a"] * 3 + ["b"] * 3, "R@1": [*a, *(a + [3.0, -2.0, 0.0])]}), "a", "b", "x")
    assert "one pair of runs" in narrative.paired_difference([1.0], [2.0], "x")
    with pytest.raises(ValueError, match="same number"):
        narrative.paired_difference([1.0, 2.0], [1.0], "x")


def test_sentences_carry_facts_whose_sources_name_the_run_files():
    story = narrative.training_story(_log([10.0, 30.0, 20.0]).assign(temperature=[0.1, 0.09, 0.08]))
    assert story.facts["loss0"].source == "train/train_log.csv:loss[epoch=5]"
    assert story.facts["r_best"].value == 30.0 and "temperature went from 0.100 to 0.080" in story
    both = narrative.val_and_test(40.0, 40, 20.0, 200, val_source="train/train_log.csv:R@1[epoch=5]")
    assert both.facts["test"].source == "retrieval/metrics.json:R@1" and both.facts["xt"].source.startswith("=")
    assert narrative.test_task(541, 150, 200, 50).endswith("chance R@1 = 0.50 %")
    assert narrative.validation_chance(40).startswith("The validation gallery holds only 40 tiles, so chance R@10 there is 25 %")


def test_training_story_says_which_epoch_best_pt_keeps_after_a_peak():
    peaked = _log([10.0, 30.0, 20.0])
    assert "best.pt keeps the peak" in narrative.training_story(peaked, "best")
    assert "best.pt keeps the last epoch" in narrative.training_story(peaked, "last")
