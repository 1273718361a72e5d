"""The papermill runner: executes notebooks, writes the manifest, and fails loudly and usefully."""
import json
import os

import nbformat
import pytest

from vici_utils.params import ParamsError, load, read_yaml, validate
from vici_utils.runner import RunFailed, discover_notebooks, run
from tests.conftest import TINY_WORLD


def test_runner_executes_notebook_01_and_writes_manifest(tiny_world_outputs, monkeypatch, tmp_path):
    monkeypatch.setenv("VICI_OUTPUTS", str(tiny_world_outputs))
    monkeypatch.chdir(tmp_path)  # the caller's cwd must not matter
    cfg = load(None, {"run_name": "nb01", **TINY_WORLD})
    lines = []
    manifest = run(cfg, only=["1"], log=lines.append)
    out = tiny_world_outputs / "nb01"
    on_disk = json.loads((out / "run.json").read_text())
    assert manifest["status"] == on_disk["status"] == "ok"
    assert [n["name"] for n in on_disk["notebooks"]] == ["01_data_exploration.ipynb"]
    assert on_disk["notebooks"][0]["status"] == "ok" and on_disk["notebooks"][0]["duration_s"] > 0
    assert on_disk["params"]["world_train_locations"] == 12
    assert set(on_disk["environment"]) >= {"python", "torch", "timm", "faiss", "cuda", "device"}
    assert set(on_disk["git"]) == {"commit", "dirty"} and on_disk["started"] and on_disk["ended"]
    assert read_yaml(out / "params.yaml")["run_name"] == "nb01"
    nb = nbformat.read(out / "01_data_exploration.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and 'run_name = "nb01"' in injected[0].source
    # keys the notebook does not declare reach it through the run's params.yaml
    shown = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "12 train / 6 test" in shown
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3, "notebook 01 should draw its figures"
    assert any("01_data_exploration.ipynb ok" in line for line in lines)


def _notebook(path, sources):
    nb = nbformat.v4.new_notebook()
    cells = [nbformat.v4.new_code_cell(s) for s in sources]
    cells[0].metadata["tags"] = ["parameters"]
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_failing_notebook_stops_the_run_and_is_named(outputs, tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    _notebook(books / "01_fine.ipynb", ["run_name = 'x'", "print('fine')"])
    _notebook(books / "02_broken.ipynb", ["run_name = 'x'", "x = 1", "raise ValueError('bad input file foo.jpg')"])
    _notebook(books / "03_never.ipynb", ["run_name = 'x'", "print('never')"])
    cfg = validate({"run_name": "broken"})
    with pytest.raises(RunFailed, match=r"02_broken.ipynb failed in the cell run as \[4\] \(`raise ValueError.*ValueError: bad input file foo.jpg"):
        run(cfg, log=lambda s: None, notebooks_dir=books)
    manifest = json.loads((outputs / "broken/run.json").read_text())
    assert manifest["status"] == "failed"
    assert [n["status"] for n in manifest["notebooks"]] == ["ok", "failed", "pending"]
    assert manifest["notebooks"][1]["error"]["ename"] == "ValueError"
    assert (outputs / "broken/02_broken.ipynb").exists(), "the executed notebook is kept for inspection"
    assert not (outputs / "broken/03_never.ipynb").exists()


def test_progress_lines_are_coalesced(outputs, tmp_path, capfd):
    books = tmp_path / "books"
    books.mkdir()
    _notebook(books / "01_bar.ipynb", ["run_name = 'x'",
                                       "import sys\nfor i in range(50): sys.stderr.write(f'\\rstep {i}')\n"
                                       "sys.stderr.write('\\n')"])
    lines = []
    # What another kernel of the test session may print meanwhile (its shutdown is not this run's business): the
    # test once failed on exactly this line, so it is there every time now, and must not matter.
    os.write(2, b"[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.\n")
    run(validate({"run_name": "bar"}), log=lines.append, notebooks_dir=books)
    bar = [line for line in lines if line.startswith("  [01] ") and "step" in line]
    assert bar and len(bar) < 5 and bar[-1].endswith("step 49")
    startup = [line for line in capfd.readouterr().err.splitlines() if "running over TCP without encryption" in line]
    assert not startup, "the kernel's start-up warning stays out of the log"


def test_only_rejects_unknown_numbers():
    with pytest.raises(ParamsError, match="--only 09"):
        discover_notebooks(["9"])
