"""Issue 12: what a real user breaks. The tests left here guard units whose test files were being edited in
parallel (issue 20.5); each belongs in the file named in its docstring, the others moved to their units' files."""
import pytest

from vici_utils.checkpoints import WeightsError
from vici_utils.models import TwoTower
from vici_utils.params import Params, ParamsError, validate
from vici_utils.paths import REPO_ROOT


def test_ctrl_c_during_a_sweep_is_one_line(outputs, tmp_path, monkeypatch, capsys):
    """Issue 12 (8), for test_sweep.py: Ctrl-C during a sweep."""
    from vici_utils import runner, sweep

    def interrupted(*args, **kwargs):
        raise runner.RunInterrupted("Interrupted during 02_finetune.ipynb.")

    monkeypatch.setattr(runner, "run", interrupted)
    (tmp_path / "s.yaml").write_text(f"sweep: s\nbase: {REPO_ROOT / 'params/default.yaml'}\nvariants: [{{name: a}}]\n")
    assert sweep.main([str(tmp_path / "s.yaml")]) == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Sweep 's' interrupted" in err[0] and "results.csv" in err[0]
    assert "run the same command again to resume" in err[0]


def test_run_name_refuses_the_shared_folders_and_says_what_is_allowed():
    """Issue 12 (8), for test_params.py: run_name and the shared folders."""
    for name in ("worlds/x", "worlds", "cache/features"):
        with pytest.raises(ParamsError, match=rf"run_name may not start with '{name.split('/')[0]}'"):
            validate({"run_name": name})
    with pytest.raises(ParamsError, match=r"letters, digits and _ - \. \(not first\), with '/' between") as e:
        validate({"run_name": "my run"})
    assert "[A-Za-z" not in str(e.value)
    assert validate({"run_name": "worlds_2/a.b"}).run_name == "worlds_2/a.b"


def test_a_corrupt_feature_cache_file_is_named_and_recomputed(tmp_path):
    """Issue 12 (8), for test_embed.py: a torn feature cache file."""
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


def test_a_corrupt_resume_checkpoint_is_named_with_the_fix(tiny_world_outputs, monkeypatch, tmp_path):
    """Issue 12 (8), for test_train.py: a torn last.pt."""
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
