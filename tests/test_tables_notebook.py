"""Notebook 05 executed headlessly: on a tiny sweep's results beside the paper's, and with no results at all."""
from vici_utils import sweep
from vici_utils.params import validate
from tests.notebooks import execute
from tests.test_sweep import write_run, write_sweep


def _execute(out_path, run_name="default"):
    return execute("05_tables.ipynb", out_path, run_name=run_name)


def test_notebook_05_sets_a_sweep_beside_the_paper(outputs, tmp_path):
    (tmp_path / "base.yaml").write_text("epochs: 3\n")
    f = write_sweep(tmp_path / "d.yaml", "sweep: tiny_drone\ntable: drone_rate\nbase: base.yaml\nseeds: [0, 1]\n"
                                         "only: ['03', '04']\nvariants:\n- {name: p0, set: {drone_rate: 0.0}}\n"
                                         "- {name: p0.3, set: {drone_rate: 0.3}, label: with drones}\n")
    s = sweep.load(f)
    for r, r1 in zip(s.runs, (10.0, 11.0, 14.0, 16.0)):
        write_run(outputs, r.run_name, r.params, r1=r1, notebooks=("03_retrieval.ipynb", "04_rerank.ipynb"))
    sweep.collect(s)
    write_run(outputs, "mine", validate({"drone_rate": 0.3}), r1=12.5)

    text, images = _execute(tmp_path / "out.ipynb", "mine")
    assert "sweeps found: tiny_drone (drone_rate)" in text
    assert "15.00 ± 1.41" in text and "with drones" in text, "our mean ± std over the two seeds"
    assert "Drone mixing, P = 0.3 minus P = 0: +4.50 points of R@1 (15.00 against 10.50, 2 and 2 seeds" in text, \
        "the sentence from the runs"
    assert "paper&#x27;s R@1" in text or "paper's R@1" in text
    assert "27.49" in text and "24.47" in text, "the paper's drone-rate rows stand beside ours"
    assert "cpu (2 cores)" in text and "embedded world" in text, "which data and hardware the rows ran on"
    assert "mine + kreciprocal re-rank (weighted, reported)" in text and "15.50" in text, \
        "this run's own re-ranked rows, the reported rule marked"
    assert "mine + kreciprocal re-rank (reranker)" in text, "every rule of this run, not only the reported one"
    assert "Feature extractors: `backbones` (recorded in docs/results/backbones.csv; 48 epochs (the default " \
           "recipe), 3 seeds (0-2))" in text, "no backbones sweep here: the committed record, with its recipe"
    assert "tiny_drone" in text and "recorded in docs/results/drone_rate.csv" not in text, \
        "a sweep of this outputs folder replaces the record of its kind"
    assert "All sweeps together: 4 distinct runs, 12 min of run time" in text
    assert images == 3, "backbone cost, re-ranking and drone-rate figures"


def test_notebook_05_runs_with_no_results_at_all(outputs, tmp_path):
    text, images = _execute(tmp_path / "out.ipynb")
    assert "sweeps found: none yet" in text and "no metrics under outputs/default/" in text
    assert "no finished sweep run yet" in text
    assert "paper's R@1" in text and "63.13" in text, "the paper's numbers beside the recorded rows"
    for name in ("backbones", "vlms", "drone_rate", "ablation", "drone_views"):
        assert f"`{name}` (recorded in docs/results/{name}.csv;" in text, f"{name}: recorded, with its recipe"
    assert "48 epochs (the default recipe)" in text
    assert "the default recipe trains 48" not in text, "every committed record trained at the default budget"
    assert images == 3
