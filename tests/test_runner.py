"""The papermill runner: executes notebooks, writes the manifest, and fails loudly and usefully."""
import json
import os
import signal
import subprocess
import sys
import time

import nbformat
import pytest

from vici_utils.params import ParamsError, load, read_yaml, validate
from vici_utils.paths import REPO_ROOT
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
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
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


# --- issue 22: concurrent runs, disk full, failed reruns, --only, checks before anything runs ---------------------

def _books(tmp_path, **cells):
    books = tmp_path / "books"
    books.mkdir(exist_ok=True)
    for name, sources in cells.items():
        _notebook(books / f"{name}.ipynb", ["run_name = 'x'", *sources])
    return books


def test_a_second_run_on_one_run_name_is_refused_naming_the_first(outputs, tmp_path):
    """Issue 22.2: run B started while run A held the folder trained with B's parameters; now B is refused."""
    import subprocess
    import sys
    import time

    started, release = tmp_path / "a_started", tmp_path / "a_may_end"
    books = _books(tmp_path, **{"01_slow": [f"open({str(started)!r}, 'w').close()",
                                            f"import os, time\nend = time.time() + 60\n"
                                            f"while not os.path.exists({str(release)!r}) and time.time() < end: "
                                            "time.sleep(0.1)"]})
    script = ("import sys; from vici_utils.params import validate; from vici_utils.runner import run; "
              f"run(validate({{'run_name': 'shared', 'weight_decay': 0.01}}), log=lambda s: None, "
              f"notebooks_dir=__import__('pathlib').Path({str(books)!r}))")
    a = subprocess.Popen([sys.executable, "-c", script, "--marker-A"], env={**os.environ, "VICI_OUTPUTS": str(outputs)})
    try:
        deadline = time.time() + 120
        while not started.exists() and a.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert started.exists(), "run A never started its notebook"
        with pytest.raises(RunFailed, match=rf"shared is in use by another run \(pid {a.pid}, command `.*-A`\); "
                                            r"wait for it to end, or give this run another run_name") as e:
            run(validate({"run_name": "shared", "weight_decay": 0.2}), log=lambda s: None, notebooks_dir=books)
        assert "\n" not in str(e.value)
        assert read_yaml(outputs / "shared/params.yaml")["weight_decay"] == 0.01  # A's parameters stay A's
    finally:
        release.touch()
        assert a.wait(timeout=120) == 0
    run(validate({"run_name": "shared", "weight_decay": 0.2}), log=lambda s: None, notebooks_dir=books)  # free again


def test_a_failed_rerun_keeps_the_last_good_notebook_and_only_keeps_every_status(outputs, tmp_path):
    """Issue 22.13: a failed rerun overwrote the last good executed notebook; --only dropped the other notebooks
    from run.json."""
    flag = tmp_path / "break"
    books = _books(tmp_path, **{"01_first": ["print('first')"],
                                "02_second": [f"import os\nif os.path.exists({str(flag)!r}): raise ValueError('broken')",
                                              "print('good output')"]})
    cfg = validate({"run_name": "rerun"})
    run(cfg, log=lambda s: None, notebooks_dir=books)
    good = (outputs / "rerun/02_second.ipynb").read_bytes()
    flag.touch()
    with pytest.raises(RunFailed, match=r"rerun/02_second\.failed\.ipynb; the last good one stays at .*02_second"):
        run(cfg, only=["2"], log=lambda s: None, notebooks_dir=books)
    assert (outputs / "rerun/02_second.ipynb").read_bytes() == good
    manifest = json.loads((outputs / "rerun/run.json").read_text())
    assert [(n["name"], n["status"]) for n in manifest["notebooks"]] == [("01_first.ipynb", "ok"),
                                                                          ("02_second.ipynb", "failed")]
    flag.unlink()
    run(cfg, only=["2"], log=lambda s: None, notebooks_dir=books)
    assert not (outputs / "rerun/02_second.failed.ipynb").exists()
    assert [n["status"] for n in json.loads((outputs / "rerun/run.json").read_text())["notebooks"]] == ["ok", "ok"]
    assert not list((outputs / "rerun").glob(".*.running.ipynb"))


def test_data_root_and_backbone_are_checked_before_anything_runs(outputs, tmp_path):
    """Issue 22.13: both were found out only inside the notebooks, 11-12 s in."""
    marker = tmp_path / "ran"
    books = _books(tmp_path, **{"01_any": [f"open({str(marker)!r}, 'w').close()"]})
    with pytest.raises(ParamsError, match=r"data_root: .*nowhere: data root not found"):
        run(validate({"run_name": "pre", "data_root": str(tmp_path / "nowhere")}), notebooks_dir=books)
    with pytest.raises(ParamsError, match=r"backbone: backbone 'resnet_50x' is not a timm model"):
        run(validate({"run_name": "pre", "backbone": "resnet_50x"}), notebooks_dir=books)
    assert not marker.exists() and not (outputs / "pre").exists()


def _disk_full_checks(outputs, folder, error):
    manifest = json.loads((folder / "run.json").read_text())
    assert manifest["status"] == "failed" and manifest["notebooks"][0]["status"] == "failed"
    assert str(folder) in error and "disk full" in error and "\n" not in error
    for nb in folder.glob("*.ipynb"):
        nbformat.read(nb, as_version=4)  # every executed notebook there is whole


def test_a_full_disk_is_one_sentence_recorded_in_the_manifest(outputs, tmp_path):
    """Issue 22.6, simulated: a notebook's write fails with ENOSPC."""
    books = _books(tmp_path, **{"01_full": ["import errno, os\nraise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "
                                            "'features.npz')"]})
    with pytest.raises(RunFailed) as e:
        run(validate({"run_name": "full"}), log=lambda s: None, notebooks_dir=books)
    _disk_full_checks(outputs, outputs / "full", str(e.value))


def test_a_really_full_disk(tmp_path, monkeypatch):
    """Issue 22.6 on a real full file system (a 2 MB tmpfs; needs root): the notebook fills it."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root): the simulated test above stands for it")
    try:
        monkeypatch.setenv("VICI_OUTPUTS", str(mount))
        books = _books(tmp_path, **{"01_fill": [
                                                "from vici_utils.run_folder import run_dir\n"
                                                "with open(run_dir('x') / 'big.bin', 'wb') as f:\n"
                                                "    for _ in range(100): f.write(b'0' * 100_000)"]})
        with pytest.raises(RunFailed) as e:
            run(validate({"run_name": "x"}), log=lambda s: None, notebooks_dir=books)
        _disk_full_checks(mount, mount / "x", str(e.value))
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# --- issue 12: Ctrl-C and a dead kernel ---------------------------------------------------------------------------
def test_ctrl_c_during_a_run_is_one_line_saying_what_is_saved(tmp_path):
    """Issue 12 (8): Ctrl-C during a run is one line saying what is saved."""
    books = tmp_path / "books"
    _notebook(books / "01_fine.ipynb", ["run_name = 'x'", "print('fine')"])
    _notebook(books / "02_slow.ipynb", ["run_name = 'x'", "import time\nprint('started', flush=True)\ntime.sleep(120)"])
    # `python -m vici_utils run`, on these notebooks
    code = ("import sys; from pathlib import Path; import vici_utils.runner as r; real = r.run; "
            "r.run = lambda cfg, only=None: real(cfg, only=only, notebooks_dir=Path(sys.argv[1])); "
            "from vici_utils.__main__ import main; sys.exit(main(['run', 'params/default.yaml', '--set', 'run_name=cc']))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(books)], cwd=REPO_ROOT, text=True,
                            env={**os.environ, "VICI_OUTPUTS": str(tmp_path / "outputs")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        before = []
        while not any("started" in line for line in before):
            line = proc.stdout.readline()
            assert line, f"the run ended before its slow notebook started: {before} {proc.stderr.read()}"
            before.append(line)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole foreground group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    said = [line for line in (out + err).splitlines() if line.strip()]
    assert len(said) == 1, said
    assert "Interrupted during 02_slow.ipynb" in said[0] and "(01_fine.ipynb)" in said[0]
    assert "run the same command again to resume" in said[0] and "\x1b[" not in out + err
    assert proc.returncode == 130
    import json

    manifest = json.loads((tmp_path / "outputs/cc/run.json").read_text())
    assert [n["status"] for n in manifest["notebooks"]] == ["ok", "interrupted"]


def test_a_dead_kernel_says_it_likely_ran_out_of_memory(outputs, tmp_path):
    """Issue 12 (8): a kernel killed for memory is named as such."""
    from vici_utils.runner import RunFailed, run

    books = tmp_path / "books"
    _notebook(books / "01_oom.ipynb", ["run_name = 'x'", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"])
    with pytest.raises(RunFailed, match=r"01_oom.ipynb: the kernel died, most likely out of memory.*smaller "
                                         r"batch_size, image_size or eval_batch_size"):
        run(validate({"run_name": "oom"}), log=lambda s: None, notebooks_dir=books)
    import json

    assert json.loads((outputs / "oom/run.json").read_text())["status"] == "failed"
