"""Sweeps: expansion and validation, resume by skipping finished runs, results collection, paper tables."""
import datetime as dt
import json
import os
import re

import numpy as np
import pandas as pd
import pytest

from vici_utils import model_stats, paper, results, sweep
from vici_utils.params import Params, ParamsError, read_yaml
from vici_utils.params import load as params_load
from vici_utils.paths import PARAMS_DIR, REPO_ROOT
from vici_utils.registry import TABLE_KINDS
from vici_utils.results import cli as results_cli, render
from vici_utils.results.paper_tables import PARAMS_M

SWEEPS = sorted(p for p in (PARAMS_DIR / "tables").glob("*.yaml") if "sweep" in read_yaml(p))


def write_run(outputs, run_name, params: Params, r1=10.0, rerank=True, status="ok",
              notebooks=("02_finetune.ipynb", "03_retrieval.ipynb", "04_rerank.ipynb")):
    """A run folder as the runner and notebooks 03/04 write it: run.json, retrieval and rerank metrics."""
    folder = outputs / run_name
    (folder / "retrieval").mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    manifest = {
        "run_name": run_name, "status": status, "started": started.isoformat(timespec="seconds"),
        "ended": (started + dt.timedelta(minutes=3)).isoformat(timespec="seconds"), "duration_s": 180.0,
        "params": params.model_copy(update={"run_name": run_name}).model_dump(),
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "environment": {"python": "3.12", "torch": "2.14.1", "device": "cpu (2 cores)"}, "command": "test",
        "notebooks": [{"name": n, "status": "ok" if status == "ok" else "failed", "duration_s": 60.0,
                       **({} if status == "ok" else {"error": {"ename": "ValueError", "evalue": "boom"}})}
                      for n in notebooks],
    }
    (folder / "run.json").write_text(json.dumps(manifest))
    metrics = {"R@1": r1, "R@5": r1 + 10, "R@10": r1 + 20, "AP": r1 + 2, "R@top1%": r1 + 21,
               "protocol": "official", "n_query": 300, "n_gallery": 200, "n_query_no_match": 0}
    (folder / "retrieval" / "metrics.json").write_text(json.dumps(metrics))
    if rerank:
        (folder / "rerank").mkdir(exist_ok=True)
        part = {k: metrics[k] for k in ("R@1", "R@5", "R@10", "AP")} | {"n_query": 300}
        fused = {"weighted": 3.0, "reranker": 1.0, "rrf": 2.0}
        reported = "weighted" if params.fusion == "validation" else params.fusion  # as if validation chose it
        (folder / "rerank" / "metrics.json").write_text(json.dumps({
            "retrieval": part,
            **{f: part | {"R@1": r1 + d, "R@5": r1 + 10 + d / 2} for f, d in fused.items()},
            "headline": reported, "reranked_by": params.reranker, "model": None, "top_k": 10,
            "queries_reranked": 300, "queries_total": 300, "counts": {"ok": 300, "fallback": 0, "requests": 0},
            "tokens": {}, "cost_usd": 0.0}))
    written = (started + dt.timedelta(minutes=1)).timestamp()  # as if the run wrote them, during the run
    for f in folder.glob("*/metrics.json"):
        os.utime(f, (written, written))
    return folder


def write_sweep(path, body: str):
    path.write_text(body)
    return path


@pytest.fixture
def base(tmp_path):
    return write_sweep(tmp_path / "base.yaml", "epochs: 3\nworld_train_locations: 40\n")


# --- the shipped sweep files ----------------------------------------------------------------------------------

def _runs(name):
    return {r.name: r for r in sweep.load(PARAMS_DIR / "tables" / f"{name}.yaml").runs}


def _same_work(a, b):
    return {k: v for k, v in a.params.model_dump().items() if k != "run_name"} == \
        {k: v for k, v in b.params.model_dump().items() if k != "run_name"}


def test_shipped_sweeps_expand_and_share_runs(outputs, monkeypatch, tmp_path):
    monkeypatch.setenv("U1652_ROOT", str(tmp_path))
    assert {p.stem for p in SWEEPS} >= {"backbones", "vlms", "drone_rate", "ablation", "paper_backbones",
                                        "paper_vlms", "paper_drone_rate", "paper_ablation"}
    loaded = {p.stem: sweep.load(p) for p in SWEEPS}
    published = {name for name, kind in TABLE_KINDS.load_all().items() if kind.paper is not None}
    assert {s.spec.table for s in loaded.values()} - {None} == published  # every table the paper has
    drone = _runs("drone_rate")
    assert sorted(drone) == sorted(f"{v}_s{s}" for v in ("p0", "p0.3") for s in range(5))
    assert drone["p0.3_s4"].params.drone_rate == 0.3 and drone["p0.3_s4"].params.seed == 4
    assert drone["p0.3_s4"].run_name == "drone_rate/p0.3_s4" and drone["p0_s0"].params.epochs == 48
    # the embedded sweeps share runs through identical parameters: ablation, vlms' model and backbones' pretrained
    # row cost nothing new; vlms' re-rankers evaluate the trained model (no training of their own)
    ablation, vlms, backbones = _runs("ablation"), _runs("vlms"), _runs("backbones")
    for s in range(5):
        assert _same_work(ablation[f"no_drone_s{s}"], drone[f"p0_s{s}"])
        assert _same_work(ablation[f"drone_s{s}"], drone[f"p0.3_s{s}"])
        assert _same_work(vlms[f"trained_s{s}"], drone[f"p0.3_s{s}"])
        for reranker in ("verifier", "kreciprocal"):
            run = vlms[f"{reranker}_s{s}"]
            assert run.model_from.name == f"trained_s{s}" and run.params.epochs == 0 and run.only == ["03", "04"]
            assert run.params.init_checkpoint.endswith(f"vlms/trained_s{s}/train/best.pt")
            assert run.params.reranker == reranker
    assert _same_work(backbones["effnet_pretrained_s0"], drone["p0.3_s0"])
    # every embedded sweep is the default's recipe, nothing shortened: only the swept keys differ (issue 19)
    default = params_load(PARAMS_DIR / "default.yaml").model_dump()
    swept = {"run_name", "seed", "drone_rate", "pretrained", "world_drone_views", "reranker", "epochs",
             "init_checkpoint"}
    for name in ("drone_rate", "ablation", "vlms", "backbones", "drone_views"):
        for variant, run in _runs(name).items():
            changed = {k for k, v in run.params.model_dump().items() if v != default[k]}
            assert changed <= swept, (name, variant, changed - swept)
            assert run.params.epochs == (0 if run.model_from else default["epochs"]), (name, variant)
    # drone_views reuses drone_rate's runs and changes one statistic of the world for its own
    views = _runs("drone_views")
    for s in range(3):
        assert _same_work(views[f"p0_s{s}"], drone[f"p0_s{s}"]) and _same_work(views[f"p0.3_s{s}"], drone[f"p0.3_s{s}"])
        changed = {k for k, v in views[f"p0.3_54_s{s}"].params.model_dump().items()
                   if v != drone[f"p0.3_s{s}"].params.model_dump()[k]}
        assert changed == {"run_name", "world_drone_views"}
    assert backbones["effnet_scratch_s0"].params.pretrained is False
    # and so do the paper's
    pb, pd_, pv, pa = (_runs(n) for n in ("paper_backbones", "paper_drone_rate", "paper_vlms", "paper_ablation"))
    assert _same_work(pb["dinov2_l"], pd_["p0.3"]) and pb["dinov2_l"].params.data_root == str(tmp_path)
    assert _same_work(pa["drone"], pv["flash"]) and pa["drone"].only == ["02", "03", "04"]
    assert {k: v for k, v in pa["no_drone"].params.model_dump().items() if k != "run_name"} == \
        {k: v for k, v in pd_["p0"].params.model_dump().items() if k != "run_name"}
    assert pv["flash_lite"].params.vlm_model == "gemini-2.5-flash-lite" and pv["flash_lite"].params.epochs == 0


def test_paper_sweeps_say_how_to_set_the_data_root(monkeypatch):
    monkeypatch.delenv("U1652_ROOT", raising=False)
    with pytest.raises(ParamsError, match=r"paper.yaml.*\$U1652_ROOT.*--set data_root"):
        sweep.load(PARAMS_DIR / "tables" / "paper_drone_rate.yaml")
    runs = sweep.load(PARAMS_DIR / "tables" / "paper_drone_rate.yaml", {"data_root": "/data/u1652"}).runs
    assert {r.params.data_root for r in runs} == {"/data/u1652"}


# --- validation -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variants, error", [
    ("- {name: p1, set: {drone_rat: 0.1}}", r"variant 'p1'.*unknown parameter 'drone_rat'.*Did you mean 'drone_rate'"),
    ("- {name: p1, set: {drone_rate: 2}}", r"variant 'p1'.*drone_rate = 2.*less than or equal to 1"),
    ("- {name: p1, set: {run_name: x}}", r"variant 'p1'.*'run_name' cannot be set"),
    ("- {name: p1, set: {seed: 3}}", r"variant 'p1'.*'seed' cannot be set.*seeds"),
    ("- {name: p1, sett: {drone_rate: 0.1}}", r"variant 'p1'\.sett: Extra inputs are not permitted"),
    ("- {name: p1}\n- {name: p1}", r"repeated: p1"),
    ("- {name: 'a/b'}", r"variant 'a/b'\.name: String should match pattern"),
    ("- {name: p1, paper_row: DINOv3}", r"variant 'p1': paper_row 'DINOv3' is not a row of the paper's 'ablation'"),
    ("- {name: p1, model_from: p2}\n- {name: p2}", r"variant 'p1': model_from 'p2' must name an earlier variant"),
    ("- {name: p1}\n- {name: p2, set: {drone_rate: 0.0}, model_from: p1}",
     r"variant 'p2' takes its model from 'p1' but sets the training parameter drone_rate"),
    ("- {name: p1, only: ['07']}", r"--only 07: no such notebook"),
])
def test_bad_variants_are_named(tmp_path, base, variants, error):
    f = write_sweep(tmp_path / "s.yaml", f"sweep: s\ntable: ablation\nbase: base.yaml\nvariants:\n{variants}\n")
    with pytest.raises(ParamsError, match="(?s)" + error):
        sweep.load(f)


def test_bad_sweep_files_are_named(tmp_path, base):
    f = write_sweep(tmp_path / "s.yaml", "sweep: s\nbase: missing.yaml\nvariants: [{name: a}]\n")
    with pytest.raises(ParamsError, match=r"s.yaml: base parameters file 'missing.yaml' not found"):
        sweep.load(f)
    f = write_sweep(tmp_path / "s.yaml", "sweep: s\nbase: base.yaml\nvarients: [{name: a}]\n")
    with pytest.raises(ParamsError, match=r"variants: Field required[\s\S]*varients: Extra inputs"):
        sweep.load(f)
    f = write_sweep(tmp_path / "s.yaml", "sweep: s\nbase: base.yaml\nset: {lr: -1}\nvariants: [{name: a}]\n")
    with pytest.raises(ParamsError, match=r"s.yaml: set: invalid parameters\n  lr = -1"):
        sweep.load(f)
    with pytest.raises(ParamsError, match="not a sweep file"):
        sweep.load(base)
    f = write_sweep(tmp_path / "s.yaml", "sweep: s\nbase: base.yaml\nvariants: [{name: a}]\n")
    with pytest.raises(ParamsError, match=r"--set: 'seed' cannot be set"):
        sweep.load(f, {"seed": 1})
    assert sweep.main([str(f), "--set", "drone_rat=1", "--dry-run"]) == 2


def test_expansion_order_of_precedence(tmp_path, base):
    f = write_sweep(tmp_path / "s.yaml", "sweep: s\nbase: base.yaml\nset: {epochs: 5, lr: 0.01}\nseeds: [4, 7]\n"
                                         "only: [5]\nvariants:\n- {name: a, set: {epochs: 6}}\n- {name: b}\n")
    s = sweep.load(f, {"lr": 0.02})
    assert [r.run_name for r in s.runs] == ["s/a_s4", "s/a_s7", "s/b_s4", "s/b_s7"]
    a, b = s.runs[0].params, s.runs[2].params
    assert (a.epochs, b.epochs, a.lr, a.world_train_locations, a.seed) == (6, 5, 0.02, 40, 4)
    assert s.runs[0].only == ["05"] and s.swept_keys == ["epochs", "seed"]


# --- resume, reuse, failure: real runs of notebook 05 ----------------------------------------------------------

def test_sweep_skips_finished_runs_reuses_identical_ones_and_reruns_changed(outputs, tmp_path, base):
    f = write_sweep(tmp_path / "s.yaml", "sweep: sw\ntable: drone_rate\nbase: base.yaml\nonly: ['05']\nvariants:\n"
                                         "- {name: a, set: {drone_rate: 0.1}}\n- {name: b, set: {drone_rate: 0.2}}\n"
                                         "- {name: c, set: {drone_rate: 0.4}}\n")
    a, b, c = sweep.load(f).runs
    nb05 = ("05_tables.ipynb",)
    done_a = write_run(outputs, "sw/a", a.params, r1=11.0, notebooks=nb05)
    write_run(outputs, "sw/b", b.params.model_copy(update={"epochs": 4}), notebooks=nb05)  # other params: stale
    write_run(outputs, "elsewhere", c.params, r1=13.0, notebooks=nb05)                     # same work, other name
    before = (done_a / "run.json").read_text()

    planned = dict((r.name, src) for r, src in sweep.plan(sweep.load(f)))
    assert planned == {"a": outputs / "sw/a", "b": None, "c": outputs / "elsewhere"}
    lines = []
    df = sweep.run_sweep(sweep.load(f), log=lines.append)

    assert (done_a / "run.json").read_text() == before, "a finished run with the same parameters is not rerun"
    assert not (outputs / "sw/c").exists(), "an identical finished run elsewhere is reused, not recomputed"
    manifest_b = json.loads((outputs / "sw/b/run.json").read_text())
    assert manifest_b["status"] == "ok" and manifest_b["params"]["epochs"] == 3
    assert [n["name"] for n in manifest_b["notebooks"]] == ["05_tables.ipynb"]
    assert (outputs / "sw/b/05_tables.ipynb").is_file()
    assert sum("> 05_tables.ipynb" in line for line in lines) == 1

    on_disk = pd.read_csv(outputs / "sw/results.csv")
    assert list(on_disk["run"]) == ["sw/a", "sw/b", "sw/c"] == list(df["run"])
    assert list(on_disk["source_run"]) == ["sw/a", "sw/b", "elsewhere"]
    assert list(on_disk["status"]) == ["ok"] * 3
    assert list(on_disk["param.drone_rate"]) == [0.1, 0.2, 0.4]
    assert on_disk.loc[0, "R@1"] == 11.0 and on_disk.loc[2, "R@1"] == 13.0
    assert np.isnan(on_disk.loc[1, "R@1"]), "b's metrics are from its earlier run (another epochs): not this run's"

    # a second pass runs nothing; --force would
    lines.clear()
    sweep.run_sweep(sweep.load(f), log=lines.append)
    assert not any("> 05_tables.ipynb" in line for line in lines)
    assert [r.name for r, src in sweep.plan(sweep.load(f), force=True) if src is None] == ["a", "b", "c"]


def test_a_run_made_before_a_parameter_existed_counts_at_its_default():
    params = Params(drone_rate=0.3)
    older = {"status": "ok", "params": {k: v for k, v in params.model_dump().items() if k != "world_drone_views"},
             "notebooks": [{"name": "02_finetune.ipynb", "status": "ok"}]}
    assert sweep.finished(older, params, ["02_finetune.ipynb"])
    assert not sweep.finished(older, params.model_copy(update={"world_drone_views": 54}), ["02_finetune.ipynb"])


def test_a_run_of_notebooks_02_03_is_the_same_work_whatever_the_re_ranking_keys():
    nb = ["02_finetune.ipynb", "03_retrieval.ipynb"]
    done = Params(drone_rate=0.3)
    manifest = {"status": "ok", "params": done.model_dump(), "notebooks": [{"name": n, "status": "ok"} for n in nb]}
    reranked_otherwise = done.model_copy(update={"verifier_epochs": 5, "reranker": "verifier"})
    assert sweep.finished(manifest, reranked_otherwise, nb)
    assert not sweep.finished(manifest, done.model_copy(update={"lr": 0.01}), nb)
    manifest["notebooks"].append({"name": "04_rerank.ipynb", "status": "ok"})
    assert not sweep.finished(manifest, reranked_otherwise, nb + ["04_rerank.ipynb"]), "04 reads them"
    assert sweep.finished(manifest, done, nb + ["04_rerank.ipynb"])


def test_rerank_keys_are_the_re_ranking_section_of_the_parameters():
    from vici_utils.params import RERANK_KEYS
    from vici_utils.params_doc import _sections

    assert set(RERANK_KEYS) == set(dict(_sections())["re-ranking"])


def test_a_variant_that_cannot_run_is_recorded_and_the_sweep_goes_on(outputs, tmp_path, base, capsys):
    f = write_sweep(tmp_path / "s.yaml", "sweep: sw\nbase: base.yaml\nonly: ['02', '03']\nseeds: [0, 1]\nvariants:\n"
                                         "- {name: trained}\n"
                                         "- {name: reranked, set: {kr_k1: 5}, model_from: trained}\n")
    trained = sweep.load(f).runs[:2]
    for r in trained:  # the training runs finished, but only seed 0 left a checkpoint
        write_run(outputs, r.run_name, r.params, rerank=False, notebooks=("02_finetune.ipynb", "03_retrieval.ipynb"))
    (outputs / "sw/trained_s0/train").mkdir()
    (outputs / "sw/trained_s0/train/best.pt").write_bytes(b"")
    write_run(outputs, "sw/reranked_s0", sweep.load(f).runs[2].params, rerank=False, notebooks=("03_retrieval.ipynb",))
    assert sweep.main([str(f)]) == 1, "a sweep with a failed variant exits non-zero"
    out = capsys.readouterr().out
    assert "VARIANT SKIPPED sw/reranked_s1: no trained model to evaluate" in out
    df = pd.read_csv(outputs / "sw/results.csv", keep_default_na=False)
    assert list(df["status"]) == ["ok", "ok", "ok", "missing"]
    assert "sw/trained_s1/train/best.pt is missing" in df.loc[3, "error"]
    assert df.loc[2, "model_from"] == "sw/trained_s0"


def test_dry_run_validates_everything_first_and_runs_nothing(outputs, tmp_path, base, capsys):
    good = write_sweep(tmp_path / "good.yaml", "sweep: g\nbase: base.yaml\nvariants: [{name: a}]\n")
    bad = write_sweep(tmp_path / "bad.yaml", "sweep: b\nbase: base.yaml\nvariants: [{name: a, set: {lrr: 1}}]\n")
    assert sweep.main([str(good), str(bad)]) == 2
    assert "variant 'a': unknown parameter 'lrr'" in capsys.readouterr().err
    assert not (outputs / "g").exists(), "nothing runs when any sweep file is invalid"
    twin = write_sweep(tmp_path / "twin.yaml", "sweep: t\nbase: base.yaml\nvariants: [{name: a}, {name: b, set: {lr: 1}}]\n")
    assert sweep.main([str(good), str(twin), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "t/a" in out and "reuse g/a (once it has run)" in out and "2 runs, 1 to run" in out
    assert not (outputs / "g").exists() and not (outputs / "t").exists()


# --- results: collection, seeds, the paper's tables -------------------------------------------------------------

def _drone_sweep(outputs, tmp_path, base, r1s):
    f = write_sweep(tmp_path / "d.yaml", "sweep: drone\ntable: drone_rate\nbase: base.yaml\nseeds: [0, 1, 2]\n"
                                         "only: ['02', '03', '04']\nvariants:\n"
                                         "- {name: p0, set: {drone_rate: 0.0}}\n"
                                         "- {name: p0.3, set: {drone_rate: 0.3}}\n"
                                         "- {name: p0.7, set: {drone_rate: 0.7}}\n")
    s = sweep.load(f)
    for r, r1 in zip(s.runs, r1s):
        if r1 is not None:
            write_run(outputs, r.run_name, r.params, r1=r1)
    return s


def test_results_collect_metrics_and_average_seeds(outputs, tmp_path, base):
    r1s = [10.0, 12.0, 14.0, 20.0, 21.0, None, 5.0, 6.0, 7.0]  # p0.3 seed 2 never ran
    s = _drone_sweep(outputs, tmp_path, base, r1s)
    write_run(outputs, s.runs[8].run_name, s.runs[8].params, status="failed")
    df = sweep.collect(s)
    assert list(df["status"]) == ["ok"] * 5 + ["missing", "ok", "ok", "failed"]
    assert "ValueError: boom" in df.loc[8, "error"]
    row = df.iloc[0]
    assert (row["R@1"], row["R@10"], row["AP"], row["n_gallery"]) == (10.0, 30.0, 12.0, 200)
    assert row["protocol"] == "official"
    assert (row["rerank.weighted.R@1"], row["rerank.reranker.R@1"], row["rerank.rrf.R@5"]) == (13.0, 11.0, 21.0)
    assert row["rerank.reranked_by"] == "kreciprocal" and row["rerank.counts.fallback"] == 0
    assert row["device"] == "cpu (2 cores)" and "embedded world" in row["data"] and row["train_s"] == 60.0

    t = results.build_table(pd.read_csv(s.folder / "results.csv"))
    ours = t.rows[t.rows["row"] != ""].set_index("P")
    assert ours.loc[0.0, "R@1"] == pytest.approx(12.0) and ours.loc[0.0, "R@1_std"] == pytest.approx(2.0)
    assert ours.loc[0.3, "n"] == 2 and ours.loc[0.3, "R@1_std"] == pytest.approx(np.std([20, 21], ddof=1))
    assert ours.loc[0.7, "n"] == 2 and ours.loc[0.7, "R@1"] == pytest.approx(5.5)
    theirs = paper.DRONE_RATE.set_index("drone_rate")
    assert ours.loc[0.3, "paper R@1"] == theirs.loc[0.3, "R@1"] and np.isnan(ours.loc[0.7, "paper R@1"])
    assert sorted(t.rows["P"]) == [0.0, 0.1, 0.3, 0.5, 0.7], "the paper's rates we did not run are shown too"
    shown = results.display_frame(t)
    assert shown.loc[0, "R@1"] == "12.00 ± 2.00" and shown.loc[0, "seeds"] == "3"
    assert list(shown["paper's R@1"])[:2] == ["24.47", "26.98"]
    assert any("cpu (2 cores)" in line for line in t.provenance)
    assert any("not finished: drone/p0.3_s2 (missing), drone/p0.7_s2 (failed)" in line for line in t.provenance)


def test_vlms_ablation_and_backbone_tables_have_the_papers_shape(outputs, tmp_path, base):
    f = write_sweep(tmp_path / "v.yaml", "sweep: v\ntable: vlms\nbase: base.yaml\nonly: ['03', '04']\nvariants:\n"
                                         "- {name: kr, label: KR, rerank_paper_row: Gemini 2.5 Flash}\n")
    v = sweep.load(f)
    write_run(outputs, "v/kr", v.runs[0].params, r1=20.0, notebooks=("03_retrieval.ipynb", "04_rerank.ipynb"))
    t = results.build_table(sweep.collect(v))
    rows = t.rows.set_index("row")
    assert list(t.rows["row"])[:4] == ["Without re-ranking", "KR (weighted)", "KR (reranker)", "KR (rrf)"]
    assert rows.loc["Without re-ranking", "R@1"] == 20.0 and rows.loc["KR (weighted)", "R@1"] == 23.0
    assert rows.loc["KR (weighted)", "paper R@1"] == 30.21 and rows.loc["Without re-ranking", "paper R@1"] == 27.49
    assert "Gemini 2.5 Flash Lite" in set(t.rows["paper_row"]), "paper rows without ours are kept"

    f = write_sweep(tmp_path / "a.yaml", "sweep: a\ntable: ablation\nbase: base.yaml\nonly: ['03', '04']\nvariants:\n"
                    "- {name: nd, set: {drone_rate: 0.0}, paper_row: DINOv2-L}\n"
                    "- {name: d, set: {drone_rate: 0.3}, label: drone, paper_row: + Drone Data,"
                    " rerank_paper_row: + VLM Re-rank (Ours)}\n")
    a = sweep.load(f)
    for r, r1 in zip(a.runs, (8.0, 9.0)):
        write_run(outputs, r.run_name, r.params, r1=r1, notebooks=("03_retrieval.ipynb", "04_rerank.ipynb"))
    t = results.build_table(sweep.collect(a))
    assert list(t.rows["row"])[:3] == ["nd", "drone", "drone + kreciprocal re-rank (weighted)"]
    assert list(t.rows["paper R@1"])[:3] == [24.66, 27.49, 30.21] and list(t.rows["R@1"])[:3] == [8.0, 9.0, 12.0]
    assert len(t.rows) == 6, "the paper's three baselines follow our rows"

    f = write_sweep(tmp_path / "b.yaml", "sweep: b\ntable: backbones\nbase: base.yaml\nonly: ['03']\nvariants:\n"
                                         "- {name: r10, set: {backbone: resnet10t, image_size: 64}}\n")
    b = sweep.load(f)
    write_run(outputs, "b/r10", b.runs[0].params, rerank=False, notebooks=("03_retrieval.ipynb",))
    t = results.build_table(sweep.collect(b))
    mine = t.rows.iloc[0]
    assert (mine[PARAMS_M], mine["dims"], mine["image px"]) == (pytest.approx(4.92, abs=0.01), 512, 64)
    assert len(t.rows) == 7 and set(t.rows["paper_row"]) >= {"DINOv2-L", "ConvNeXt-T"}


def test_readme_section_replaces_only_what_lies_between_the_markers(outputs, tmp_path, base):
    s = _drone_sweep(outputs, tmp_path, base, [10.0, 12.0, 14.0] + [None] * 6)
    sweep.collect(s)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{render.README_START}\nold numbers\n{render.README_END}\nafter\n")
    section = results.readme_section(results.load_sweep_tables(), cost=results.total_run_time())
    results.write_readme(section, readme)
    text = readme.read_text()
    assert "All sweeps together: 3 distinct runs, 9 min of run time in all" in text  # 3 finished runs of 3 min
    assert text.startswith("# Title\n\nbefore\n") and text.endswith(f"{render.README_END}\nafter\n")
    header = section.splitlines()[0]
    assert "old numbers" not in text and "Generated by" in header and not re.search(r"\d{4}-\d\d-\d\d", header), \
        "no date of its own: the section changes only when the data does"
    row = "| p0 | 0 | 12.00 ± 2.00 | 22.00 ± 2.00 | 32.00 ± 2.00 | 14.00 ± 2.00 | 3 | 3 | P = 0 | 24.47 |"
    assert row in text, "AP, then the recipe of every row: epochs and seeds"
    assert "### Drone augmentation: `drone` (3 epochs (the default recipe trains 48), 3 seeds (0-2))" in text
    assert "paper's R@1" in text and "| P = 0.5 | 24.89 |" in text
    assert "\nMeasured: Drone mixing, P = 0.3 minus P = 0: no finished runs of both 'p0' and 'p0.3'" in text
    readme.write_text("# no markers\n")
    with pytest.raises(ParamsError, match="results:start"):
        results.write_readme("x", readme)
    assert results_cli.main(["--readme", str(readme)]) == 2



def test_run_time_counts_a_reused_run_once(tmp_path):
    cols = "sweep,run,source_run,status,device,run_s\n"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.csv").write_text(cols + "a,a/x,a/x,ok,cpu (2 cores),120\na,a/y,a/y,failed,cpu (2 cores),60\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.csv").write_text(cols + "b,b/x,a/x,ok,cpu (2 cores),120\nb,b/z,,ok,cpu (2 cores),240\n")
    assert results.total_run_time(tmp_path).startswith("All sweeps together: 2 distinct runs, 6 min of run time")
    assert results.total_run_time(tmp_path / "none") == ""

# --- model statistics ------------------------------------------------------------------------------------------

def test_model_stats_match_the_papers_columns_and_are_cached(outputs):
    dino = model_stats.stats("vit_large_patch14_dinov2.lvd142m", 518)
    published = paper.BACKBONES.set_index("backbone").loc["DINOv2-L"]
    assert dino["gmacs"] == pytest.approx(published["flops_G"], rel=0.01)
    assert dino["params_M"] == pytest.approx(published["params_M"], rel=0.01) and dino["dims"] == published["dims"]
    small = model_stats.stats("resnet10t", 64)
    assert (small["image_size"], small["dims"]) == (64, 512) and 0.05 < small["gmacs"] < 0.15
    vit = model_stats.stats("vit_tiny_patch16_224", 64)
    assert vit["image_size"] == 64 and vit["dims"] == 192
    cache = json.loads(model_stats.cache_path().read_text())
    assert len(cache) == 3 and any(k.startswith("resnet10t@64|timm ") for k in cache)


def test_repo_readme_has_the_results_markers():
    text = (REPO_ROOT / "README.md").read_text() if (REPO_ROOT / "README.md").is_file() else ""
    assert text.find(render.README_START) < text.find(render.README_END) and render.README_START in text


def test_a_key_left_unset_in_one_variant_still_counts_as_varied(outputs, tmp_path, base):
    f = write_sweep(tmp_path / "v.yaml", "sweep: views\nbase: base.yaml\nonly: ['02', '03']\nvariants:\n"
                                         "- {name: few}\n- {name: many, set: {world_drone_views: 54}}\n")
    s = sweep.load(f)
    for r in s.runs:
        write_run(outputs, r.run_name, r.params, rerank=False, notebooks=("02_finetune.ipynb", "03_retrieval.ipynb"))
    sweep.collect(s)
    [table] = [t for t in results.load_sweep_tables() if t.name == "views"]
    assert any(line.endswith("varied: world_drone_views") for line in table.provenance), table.provenance


def _as_written_before_the_renames(folder):
    """A run folder as an earlier version wrote it: rerank_backend in run.json, the rule `vlm`, metrics' 'backend'."""
    manifest = json.loads((folder / "run.json").read_text())
    manifest["params"] = {("rerank_backend" if k == "reranker" else k): ("vlm" if v == "reranker" else v)
                          for k, v in manifest["params"].items()}
    (folder / "run.json").write_text(json.dumps(manifest))
    path = folder / "rerank" / "metrics.json"
    stat = path.stat()
    m = json.loads(path.read_text())
    m = {{"reranked_by": "backend", "reranker": "vlm"}.get(k, k): v for k, v in m.items()}
    m["headline"] = "vlm" if m["headline"] == "reranker" else m["headline"]
    path.write_text(json.dumps(m))
    os.utime(path, (stat.st_atime, stat.st_mtime))


def test_a_run_folder_written_before_the_renames_is_reused_and_reads_the_same(outputs, tmp_path, base):
    """Issue 20 (5): a run folder of an earlier version (rerank_backend, fusion: vlm, answer_vlm.txt's rule, metrics'
    'backend') still counts as finished for the same parameters, and reads back as the same row; a sweep file
    of an earlier version still expands."""
    f = write_sweep(tmp_path / "s.yaml", "sweep: s\nbase: base.yaml\nvariants:\n"
                                         "- {name: a, set: {rerank_backend: verifier, fusion: vlm}}\n")
    with pytest.warns(FutureWarning) as said:
        s = sweep.load(f)
    assert {str(w.message).split(":")[0] for w in said} >= {"rerank_backend is now reranker", "fusion"}
    run = s.runs[0]
    assert (run.params.reranker, run.params.fusion) == ("verifier", "reranker")
    folder = write_run(outputs, run.run_name, run.params)
    today = results.read_run_folder(folder)
    _as_written_before_the_renames(folder)
    assert "rerank_backend" in json.loads((folder / "run.json").read_text())["params"]
    manifest = json.loads((folder / "run.json").read_text())
    with pytest.warns(FutureWarning):
        assert sweep.finished(manifest, run.params, ["02_finetune.ipynb", "04_rerank.ipynb"])
        assert results.read_run_folder(folder) == today
    assert today["param.reranker"] == "verifier" and today["rerank.headline"] == "reranker"
    assert today["rerank.reranked_by"] == "verifier" and "rerank.reranker.R@1" in today


def test_ctrl_c_during_a_sweep_is_one_line(outputs, tmp_path, monkeypatch, capsys):
    """Issue 12 (8): Ctrl-C during a sweep."""
    from vici_utils import runner, sweep

    def interrupted(*args, **kwargs):
        raise runner.RunInterrupted("Interrupted during 02_finetune.ipynb.")

    monkeypatch.setattr(runner, "run", interrupted)
    (tmp_path / "s.yaml").write_text(f"sweep: s\nbase: {REPO_ROOT / 'params/default.yaml'}\nvariants: [{{name: a}}]\n")
    assert sweep.main([str(tmp_path / "s.yaml")]) == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Sweep 's' interrupted" in err[0] and "results.csv" in err[0]
    assert "run the same command again to resume" in err[0]


def test_a_run_stored_before_select_epoch_counts_as_keeping_its_best_epoch():
    """Issue 19: select_epoch came with a new default (last); a stored run without the key kept its best epoch, so
    it is not today's default run (a sweep retrains or re-selects it) but still the run of select_epoch: best."""
    cfg = Params()
    stored = cfg.model_dump()
    del stored["select_epoch"]
    manifest = {"status": "ok", "params": stored, "notebooks": [{"name": "02_finetune.ipynb", "status": "ok"}]}
    assert not sweep.finished(manifest, cfg, ["02_finetune.ipynb"])
    assert sweep.finished(manifest, cfg.model_copy(update={"select_epoch": "best"}), ["02_finetune.ipynb"])
