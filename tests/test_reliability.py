"""Issue 12: what a real user breaks. Untrusted checkpoints, orphaned workers, and the messages of the runner,
the feature cache and the dataset reader; each test reproduces the report's command in small."""
import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vici_utils.checkpoints import WeightsError, read_checkpoint
from vici_utils.models import TwoTower, build_model, load_model_for_eval
from vici_utils.params import Params, ParamsError, validate

REPO = Path(__file__).resolve().parent.parent


# --- 1. checkpoints never run code ---------------------------------------------------------------------------------
def _touch(path):
    """What a malicious pickle would call; the tests check it never runs."""
    Path(path).write_text("pwned")
    return 0


class Evil:
    """Pickles as a call of _touch: loading it with plain pickle writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return _touch, (self.marker,)


class Config:
    """Stands for omegaconf's DictConfig in VICI's hyper_parameters: restored through __setstate__."""

    def __init__(self, marker):
        self.marker, self.lr = str(marker), 1e-4

    def __setstate__(self, state):
        _touch(state["marker"])
        self.__dict__.update(state)


def test_checkpoint_that_needs_pickle_is_refused_without_running_it(tmp_path, monkeypatch):
    # The report's evil.pt: {'model': C()} where C reduces to open('PWNED', 'w').
    monkeypatch.chdir(tmp_path)
    opener = type("C", (), {"__reduce__": lambda self: (open, ("PWNED", "w"))})
    torch.save({"model": opener()}, tmp_path / "evil.pt")
    torch.save({"model": Evil(tmp_path / "PWNED2"), "model_config": {}}, tmp_path / "evil2.pt")
    base = {"backbone": "resnet10t", "pretrained": False, "image_size": 32}
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(WeightsError, match=rf"init_checkpoint .*{name} holds pickled Python objects \(.*\) .*not "
                                               r"loaded.*torch.save\(\{'state_dict'") as e:
            build_model(validate({**base, "init_checkpoint": str(tmp_path / name)}))
        assert "\n" not in str(e.value)
    with pytest.raises(WeightsError, match=r"pretrained .*evil\.pt holds pickled Python objects"):
        TwoTower("resnet10t", pretrained=str(tmp_path / "evil.pt"))
    # The best.pt of a run folder someone shared
    shared = tmp_path / "shared"
    (shared / "train").mkdir(parents=True)
    (tmp_path / "evil2.pt").rename(shared / "train/best.pt")
    with pytest.raises(WeightsError, match=r"checkpoint .*best\.pt holds pickled Python objects"):
        load_model_for_eval(validate(base), run_dir=shared)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()


def test_lightning_checkpoint_with_pickled_hyper_parameters_loads_without_running_them(tmp_path):
    street, sat = TwoTower("resnet10t", image_size=32).street, TwoTower("resnet10t", image_size=32).street
    sd = collections.OrderedDict({f"model.street_conv.{k}": v for k, v in street.state_dict().items()})
    sd.update({f"model.sat_conv.{k}": v for k, v in sat.state_dict().items()})
    marker = tmp_path / "ran"
    torch.save({"epoch": 9, "pytorch-lightning_version": "2.4.0", "state_dict": sd,
                "hyper_parameters": {"config": Config(marker), "trap": Evil(marker)}, "hparams_type": Config,
                "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.5)}}}, tmp_path / "vici.ckpt")
    ckpt = read_checkpoint(tmp_path / "vici.ckpt")
    assert not marker.exists(), "a class of the checkpoint was called while reading it"
    assert set(ckpt) == {"epoch", "pytorch-lightning_version", "state_dict", "callbacks"}  # objects left out
    m = build_model(validate({"backbone": "resnet10t", "pretrained": False, "image_size": 32,
                              "init_checkpoint": str(tmp_path / "vici.ckpt")}))
    for k, v in sat.state_dict().items():
        torch.testing.assert_close(m.satellite.state_dict()[k], v)
    assert not marker.exists()
    torch.load(tmp_path / "vici.ckpt", weights_only=False)  # the control: an unrestricted load runs them
    assert marker.exists()


def test_a_corrupt_checkpoint_is_one_sentence(tmp_path):
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(WeightsError, match=r"init_checkpoint: cannot read .*cut\.pt"):
        read_checkpoint(tmp_path / "cut.pt", "init_checkpoint")


# --- 7. world workers die with their parent ------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_world_workers_die_with_a_killed_parent(tmp_path):
    code = ("import sys; from vici_utils.world import WorldSpec, ensure_world; "
            "ensure_world(WorldSpec(train_locations=40, test_locations=2, distractors=0, challenge=False, "
            "view_size=256, supersample=2.0), root=sys.argv[1], workers=2, progress=False)")
    # big views: a location takes over a second, so a worker that only noticed at its next result would live on
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "world")], cwd=REPO)
    workers = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.1)
            workers = _children(parent.pid)
        assert len(workers) == 2, "the world generation did not start its 2 workers"
        time.sleep(0.5)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 2
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, workers)), "pool workers outlived their killed parent"
    finally:
        for pid in workers:  # only if the test failed: leave no orphans behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()


# --- 8. messages ---------------------------------------------------------------------------------------------------
def _notebook(path, sources):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def test_ctrl_c_during_a_run_is_one_line_saying_what_is_saved(tmp_path):
    books = tmp_path / "books"
    _notebook(books / "01_fine.ipynb", ["run_name = 'x'", "print('fine')"])
    _notebook(books / "02_slow.ipynb", ["run_name = 'x'", "import time\nprint('started', flush=True)\ntime.sleep(120)"])
    # `python -m vici_utils run`, on these notebooks
    code = ("import sys; from pathlib import Path; import vici_utils.runner as r; real = r.run; "
            "r.run = lambda cfg, only=None: real(cfg, only=only, notebooks_dir=Path(sys.argv[1])); "
            "from vici_utils.__main__ import main; sys.exit(main(['run', 'params/default.yaml', '--set', 'run_name=cc']))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(books)], cwd=REPO, text=True,
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


def test_ctrl_c_during_a_sweep_is_one_line(outputs, tmp_path, monkeypatch, capsys):
    from vici_utils import runner, sweep

    def interrupted(*args, **kwargs):
        raise runner.RunInterrupted("Interrupted during 02_finetune.ipynb.")

    monkeypatch.setattr(runner, "run", interrupted)
    (tmp_path / "s.yaml").write_text(f"sweep: s\nbase: {REPO / 'params/default.yaml'}\nvariants: [{{name: a}}]\n")
    assert sweep.main([str(tmp_path / "s.yaml")]) == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Sweep 's' interrupted" in err[0] and "results.csv" in err[0]
    assert "run the same command again to resume" in err[0]


def test_a_dead_kernel_says_it_likely_ran_out_of_memory(outputs, tmp_path):
    from vici_utils.runner import RunFailed, run

    books = tmp_path / "books"
    _notebook(books / "01_oom.ipynb", ["run_name = 'x'", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"])
    with pytest.raises(RunFailed, match=r"01_oom.ipynb: the kernel died, most likely out of memory.*smaller "
                                         r"batch_size, image_size or eval_batch_size"):
        run(validate({"run_name": "oom"}), log=lambda s: None, notebooks_dir=books)
    import json

    assert json.loads((outputs / "oom/run.json").read_text())["status"] == "failed"


def _unwritable_outputs(tmp_path) -> Path:
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o500)
        return tmp_path / "ro/outputs"
    if not Path("/sys").is_dir():  # root writes anywhere else
        pytest.skip("needs a folder this user cannot write")
    return Path("/sys/vici_outputs")


def test_unwritable_outputs_is_one_sentence_naming_the_folder(tmp_path, monkeypatch, capsys):
    from vici_utils.__main__ import main

    root = _unwritable_outputs(tmp_path)
    monkeypatch.setenv("VICI_OUTPUTS", str(root))
    for argv in (["run", "params/default.yaml", "--set", "run_name=x", "--only", "01"], ["world", "params/default.yaml"]):
        assert main(argv) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and f"the outputs folder {root} must be writable" in err[0] and "VICI_OUTPUTS" in err[0]


def test_run_name_refuses_the_shared_folders_and_says_what_is_allowed():
    for name in ("worlds/x", "worlds", "cache/features"):
        with pytest.raises(ParamsError, match=rf"run_name may not start with '{name.split('/')[0]}'"):
            validate({"run_name": name})
    with pytest.raises(ParamsError, match=r"letters, digits and _ - \. \(not first\), with '/' between") as e:
        validate({"run_name": "my run"})
    assert "[A-Za-z" not in str(e.value)
    assert validate({"run_name": "worlds_2/a.b"}).run_name == "worlds_2/a.b"


def test_a_corrupt_feature_cache_file_is_named_and_recomputed(tmp_path):
    import numpy as np
    from PIL import Image

    from vici_utils import embed

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((16, 16, 3), 40 * i, dtype=np.uint8)).save(paths[-1])
    model = TwoTower("resnet10t", image_size=32).eval()
    from vici_utils.transforms import model_transforms

    tf = model_transforms(Params(image_size=32), model, train=False, view="street")
    kw = dict(model_key="m", cache_dir=tmp_path / "cache", batch_size=2, device="cpu", num_workers=0, progress=False)
    first = embed.cached_features(model.encode_street, paths, tf, **kw)
    (cached,) = (tmp_path / "cache").glob("*.npy")
    cached.write_bytes(cached.read_bytes()[:50])  # a write cut short
    with pytest.warns(UserWarning, match=rf"feature cache .*{cached.name} is unreadable.*computing the features again"):
        again = embed.cached_features(model.encode_street, paths, tf, **kw)
    np.testing.assert_allclose(again, first, atol=1e-6)
    np.testing.assert_allclose(np.load(cached), first, atol=1e-6)  # replaced by a good file


# --- 8. the dataset reader -------------------------------------------------------------------------------------------
def test_hidden_files_are_skipped_and_a_corrupt_image_names_its_path(tmp_path):
    from tests.test_u1652 import make_tree
    from vici_utils.u1652 import DatasetError, University1652, sample_image_sizes

    root = make_tree(tmp_path)
    (root / "train/street/0001/._s1.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata
    (root / "train/street/.DS_Store").write_bytes(b"junk")
    (root / "train/street/._0002").mkdir()
    ds = University1652(root)
    assert [p.name for p in ds.train.street["0001"]] == ["s1.jpg", "s2.jpeg"]
    assert "._0002" not in ds.train.street
    bad = root / "train/street/0001/s1.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=rf"{bad}: cannot read this image"):
        sample_image_sizes([bad])


def test_challenge_without_its_list_warns_and_is_skipped(tmp_path):
    from PIL import Image

    from tests.test_u1652 import make_tree
    from vici_utils.u1652 import DatasetWarning, University1652

    root = make_tree(tmp_path)
    for d, name in (("workshop_query_street", "q.jpeg"), ("workshop_gallery_satellite", "g.jpg")):
        (root / "test" / d).mkdir()
        Image.new("RGB", (8, 8)).save(root / "test" / d / name)
    with pytest.warns(DatasetWarning, match=r"incomplete challenge layout, missing query_street_name\.txt .*skipped"):
        ds = University1652(root)
    assert ds.challenge is None and len(ds.test.queries) == 4


def test_queried_buildings_with_an_empty_gallery_folder_are_recorded_and_warned(tmp_path):
    from tests.test_u1652 import make_tree
    from vici_utils.u1652 import DatasetWarning, University1652

    root = make_tree(tmp_path)
    (root / "test/gallery_satellite/0102/0102.jpg").unlink()  # its folder stays, empty
    with pytest.warns(DatasetWarning, match=r"1 queried buildings have no gallery image \(0102\)") as caught:
        ds = University1652(root)
    assert ds.test.buildings_without_gallery == ["0102"]
    assert len([w for w in caught if issubclass(w.category, DatasetWarning)]) == 1


def test_a_corrupt_resume_checkpoint_is_named_with_the_fix(tiny_world_outputs, monkeypatch, tmp_path):
    from tests.conftest import TINY_MODEL, TINY_WORLD
    from vici_utils.params import validate
    from vici_utils.train import train

    monkeypatch.setenv("VICI_OUTPUTS", str(tmp_path / "outputs"))
    cfg = validate({**TINY_WORLD, **TINY_MODEL, "run_name": "torn", "epochs": 2, "batch_size": 4})
    last = tmp_path / "outputs" / "torn" / "train" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    with pytest.raises(WeightsError, match=r"last.pt.*Delete .*last.pt to start this run again, or set resume: false"):
        train(cfg, progress=False)


# --- issue 22.10: every run file read back names itself and the command that remakes it --------------------------

def test_corrupt_run_files_name_themselves_and_the_command_that_remakes_them(tmp_path):
    import numpy as np

    from vici_utils.run_folder import RunFileError, read_features, read_json

    feats = tmp_path / "features.npz"
    remade = r"remake it with python -m vici_utils run <its params file> --set run_name=r --only 03"
    for content in (b"PK\x03\x04 not a zip at all", b""):
        feats.write_bytes(content)
        with pytest.raises(RunFileError, match=rf"{feats}: not a features file of ours .*; {remade}"):
            read_features(feats, "r")
    arrays = {k: np.array([object(), 1], dtype=object) for k in ("query_features", "query_ids", "query_names",
                                                                  "query_paths", "gallery_features", "gallery_ids",
                                                                  "gallery_names", "gallery_paths")}
    np.savez(feats, **arrays)  # pickled object arrays: never loaded
    with pytest.raises(RunFileError, match=rf"{feats}: not a features file of ours \(ValueError: Object arr.*{remade}"):
        read_features(feats, "r")
    np.savez(feats, query_features=np.zeros((2, 3)))
    with pytest.raises(RunFileError, match=rf"missing arrays \['query_ids'.*{remade}"):
        read_features(feats, "r")
    result = tmp_path / "result.json"
    result.write_text('{"best_epoch": 3, "be')
    with pytest.raises(RunFileError, match=rf"{result}: not readable JSON .* --set run_name=r --only 02"):
        read_json(result, "r", "train")


def test_a_truncated_best_checkpoint_names_the_command_that_remakes_it(tmp_path):
    base = {"backbone": "resnet10t", "pretrained": False, "image_size": 32, "run_name": "trunc"}
    (tmp_path / "train").mkdir()
    model = TwoTower("resnet10t", image_size=32)
    torch.save({"model": model.state_dict()}, tmp_path / "train/best.pt")
    data = (tmp_path / "train/best.pt").read_bytes()
    (tmp_path / "train/best.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"best\.pt .*remake it by training this run again: python -m vici_utils "
                                           r"run <its params file> --set run_name=trunc --set resume=false --only 02"):
        load_model_for_eval(validate(base), run_dir=tmp_path)
