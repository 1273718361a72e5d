"""The committed record of the sweeps (docs/results/<sweep>.csv): a sweep's rows go there unchanged, the README
section and notebooks 04-05 read them through the same loader as a live sweep, recorded rows say their recipe,
and the README section cannot go stale (issue 20 item 2, issue 19 "the student sees it")."""
import math

import numpy as np
import pandas as pd
import pytest

from tests.test_sweep import write_run, write_sweep
from vici_utils import narrative, results, sweep
from vici_utils.paths import REPO_ROOT
from vici_utils.results import cli as results_cli, render

# docs/results/vlms.csv as recorded on 2026-11-30 (16 epochs, summary rows, the names before issue 20)
OLD_RECORD = REPO_ROOT / "tests/data/record_2026-11-30"


def _sweep(outputs, tmp_path, r1s, name="drone", rerank=False):
    (tmp_path / "base.yaml").write_text("epochs: 3\nworld_train_locations: 40\n")
    f = write_sweep(tmp_path / f"{name}.yaml", f"sweep: {name}\ntable: drone_rate\nbase: base.yaml\nseeds: [0, 1, 2]\n"
                                               "only: ['02', '03']\nvariants:\n- {name: p0, set: {drone_rate: 0.0}}\n"
                                               "- {name: p0.3, set: {drone_rate: 0.3}}\n")
    s = sweep.load(f)
    for r, r1 in zip(s.runs, r1s):
        if r1 is not None:
            write_run(outputs, r.run_name, r.params, r1=r1, rerank=rerank)
    sweep.collect(s)
    return s


def test_a_sweep_goes_to_the_record_and_back_through_one_loader(outputs, tmp_path):
    s = _sweep(outputs, tmp_path, [10.0, 12.0, 14.0, 20.0, 21.0, 25.0])
    record = tmp_path / "record"
    written, skipped = results.record_sweeps(folder=record)
    assert written == [record / "drone.csv"] and skipped == []
    rows = pd.read_csv(record / "drone.csv")
    pd.testing.assert_frame_equal(rows, pd.read_csv(s.folder / "results.csv"))  # the record is the sweep's rows
    assert {"seed", "param.epochs", "git_commit", "device", "started", "AP"} <= set(rows.columns), "its provenance"

    [live], [kept] = results.load_sweep_tables(), results.recorded_tables(record)
    assert not live.recorded and kept.recorded and kept.source.endswith("record/drone.csv")
    pd.testing.assert_frame_equal(results.display_frame(live), results.display_frame(kept))
    assert kept.findings == live.findings and kept.recipe == live.recipe == \
        "3 epochs (the default recipe trains 48), 3 seeds (0-2)"
    assert any(line.startswith(f"recorded in {kept.source}") for line in kept.provenance)
    assert results.heading(kept) == (f"Drone augmentation: `drone` (recorded in {kept.source}; 3 epochs (the default "
                                     "recipe trains 48), 3 seeds (0-2))")
    shown = results.display_frame(kept)
    ours = shown[shown["ours"] != ""]
    assert list(ours["epochs"]) == ["3", "3"] and list(ours["seeds"]) == ["3", "3"], "each row's recipe"
    assert shown.loc[0, "AP"] == "14.00 ± 2.00", "AP beside the recalls"

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{render.README_START}\n{render.README_END}\n")
    assert results_cli.main(["--readme", str(readme), "--record", str(record)]) == 0
    section = results.readme_section([kept], cost=results.total_run_time(paths=[record / "drone.csv"]))
    assert section in readme.read_text(), "the README section is generated from the record"
    assert "All sweeps together: 6 distinct runs, 18 min of run time" in section


def test_a_sweep_with_unfinished_runs_does_not_replace_its_record(outputs, tmp_path):
    _sweep(outputs, tmp_path, [10.0, 12.0, 14.0, 20.0, 21.0, None])
    record = tmp_path / "record"
    written, skipped = results.record_sweeps(folder=record)
    assert written == [] and skipped == ["drone: 5 of 6 runs finished, not recorded"]
    assert not (record / "drone.csv").exists()


def test_the_readme_results_section_is_generated_from_the_committed_record():
    """Fails when docs/results/ changed and `python -m vici_utils results` was not run (or the README was edited)."""
    text = (REPO_ROOT / "README.md").read_text()
    between = text[text.index(render.README_START) + len(render.README_START):text.index(render.README_END)]
    expected = results.readme_section(results.recorded_tables(),
                                      cost=results.total_run_time(paths=results.find_recorded()))
    assert between.strip() == expected.strip(), "README results section is stale: run `python -m vici_utils results`"


def test_every_recorded_row_says_the_recipe_that_made_it():
    tables = results.recorded_tables()
    assert {t.name for t in tables} >= {"backbones", "vlms", "drone_rate", "ablation", "drone_views"}
    for t in tables:
        ours = t.rows[t.rows["row"].fillna("") != ""]
        assert t.recorded and "epochs" in t.recipe and "seed" in t.recipe, t.name
        assert ours["epochs"].notna().all() and ours["n"].notna().all(), f"{t.name}: a row without its recipe"
    recipes = {t.name: t.recipe for t in tables}
    assert recipes["drone_rate"] == "48 epochs (the default recipe), 5 seeds (0-4)"
    assert recipes["backbones"] == recipes["drone_views"] == "48 epochs (the default recipe), 3 seeds (0-2)"
    assert recipes["vlms"].startswith("48 epochs"), "model_from rows (epochs 0) do not count as a recipe"


def test_summary_rows_give_the_same_welch_interval_as_the_runs():
    runs = pd.DataFrame({"variant": ["a"] * 3 + ["b"] * 4, "status": "ok",
                         "R@1": [8.0, 9.5, 11.0, 12.0, 13.5, 11.0, 15.0]})
    summary = pd.DataFrame([{"variant": v, "status": "ok", "R@1": g["R@1"].mean(), "R@1_std": g["R@1"].std(ddof=1),
                             "n": len(g)} for v, g in runs.groupby("variant")])
    assert narrative.variant_difference(summary, "a", "b", "x") == narrative.variant_difference(runs, "a", "b", "x")
    assert "95 % confidence interval" in narrative.variant_difference(summary, "a", "b", "x")


def test_rerank_gains_report_the_chosen_rule_and_summaries_keep_no_pairs(outputs, tmp_path):
    s = _sweep(outputs, tmp_path, [10.0, 12.0, 14.0, 20.0, 21.0, 25.0], rerank=True)
    gains = results.rerank_gains(pd.read_csv(s.folder / "results.csv"))
    reported = gains[gains["reported"]]
    assert set(reported["rule"]) == {"weighted"} and set(reported["chosen on"]) == {"parameter"}
    text = narrative.rerank_gains(gains)
    assert "its reported rule (weighted, chosen by the fusion parameter)" in text and "after the fact" not in text

    summary = results.recorded_results("vlms", OLD_RECORD)
    g = results.rerank_gains(summary)
    kr = g[(g["reranker"] == "kreciprocal") & g["reported"]].iloc[0]
    assert kr["change"] == pytest.approx(8.56 - 8.69) and math.isnan(kr["change std"]) and kr["seeds"] == 3
    assert "no paired interval" in narrative.rerank_gains(g[g["reported"]])


def test_a_run_is_set_beside_the_sweep_and_a_shorter_recipe_is_named():
    recorded = results.live_or_recorded([], results.recorded_tables(OLD_RECORD), "vlms")
    said = results.beside_sweep("weighted", "kreciprocal", 48, recorded)
    assert said.startswith("Over seeds, the `vlms` sweep (recorded in ") and "vlms.csv; 16 epochs" in said
    assert "Caution: that sweep trained 16 epochs and this run 48" in said
    assert "Same training budget" in results.beside_sweep("weighted", "kreciprocal", 16, recorded)
    assert "differently trained models" in results.beside_sweep("weighted", "kreciprocal", 1, recorded)
    assert "weaker models" in said
    assert "epochs 0: it evaluated a checkpoint" in results.beside_sweep("weighted", "kreciprocal", 0, recorded)
    assert results.beside_sweep("weighted", "gemini", 48, recorded).startswith("No re-ranking sweep with 'gemini'")
    note = results.recipe_note(recorded)
    assert note.startswith("Recipes: vlms (recorded): 16 epochs") and "Same training budget" in note
    today = results.live_or_recorded([], results.recorded_tables(), "vlms")   # the committed record: the default's
    assert "Same training budget as this run" in results.beside_sweep("reranker", "kreciprocal", 48, today)


def test_a_record_written_before_the_renames_reads_in_todays_names():
    """Issue 20 (5): docs/results/vlms.csv keeps the names it was written with (param.rerank_backend, rerank.backend,
    rerank.vlm.*, the rule 'vlm'); the one loader reads it in today's (param.reranker, rerank.reranked_by,
    rerank.reranker.*). The record of 2026-11-30 is kept in tests/data for this."""
    raw = pd.read_csv(OLD_RECORD / "vlms.csv")
    assert {"param.rerank_backend", "rerank.backend", "rerank.vlm.R@1"} <= set(raw.columns)
    rows = results.recorded_results("vlms", OLD_RECORD)
    assert not {"param.rerank_backend", "rerank.backend"} & set(rows.columns)
    assert not [c for c in rows.columns if c.startswith("rerank.vlm.")]
    assert rows["param.reranker"].tolist() == raw["param.rerank_backend"].tolist()
    assert rows["rerank.reranked_by"].tolist() == raw["rerank.backend"].tolist()
    assert rows["rerank.reranker.R@1"].equals(raw["rerank.vlm.R@1"].rename("rerank.reranker.R@1"))
    assert "vlm" not in set(rows["param.fusion"]) | set(rows["rerank.headline"])
    assert set(results.rerank_gains(rows)["rule"]) == {"weighted", "reranker", "rrf"}
