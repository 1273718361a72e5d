"""Weight files and checkpoints (checkpoints.py): read without running code from them, every tensor placed or the
message says which was not; our checkpoints, VICI's Lightning checkpoint, a backbone's weights file."""
import collections
import copy
from pathlib import Path

import pytest
import timm
import torch

from tests.tiny_models import DINO, VIT, random_images
from vici_utils.checkpoints import WeightsError, read_checkpoint
from vici_utils.models import TwoTower, build_model, load_model_for_eval
from vici_utils.params import validate


# --- checkpoints never run code -----------------------------------------------------------------------------------
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
    """Issue 12 (1): a checkpoint never runs code."""
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
    """Issue 12 (1): a checkpoint never runs code."""
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
    """Issue 12 (1): a checkpoint that cannot be read."""
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(WeightsError, match=r"init_checkpoint: cannot read .*cut\.pt"):
        read_checkpoint(tmp_path / "cut.pt", "init_checkpoint")


# --- weights files ------------------------------------------------------------------------------------------------
def test_pretrained_file_loads_every_tensor(tmp_path):
    src = timm.create_model("resnet10t", num_classes=1000)  # as downloaded: with its classifier
    torch.save(src.state_dict(), tmp_path / "w.pth")
    m = TwoTower("resnet10t", pretrained=str(tmp_path / "w.pth"), image_size=32)
    for k, v in m.street.state_dict().items():
        torch.testing.assert_close(v, src.state_dict()[k])
    torch.testing.assert_close(m.satellite.conv1[0].weight, src.conv1[0].weight)


def test_pretrained_vit_file_at_another_size_resamples_position_embeddings(tmp_path):
    src = timm.create_model(VIT, num_classes=0, img_size=64)  # 4x4 patches
    torch.save(src.state_dict(), tmp_path / "vit.pth")
    m = TwoTower(VIT, pretrained=str(tmp_path / "vit.pth"), image_size=32)
    assert m.street.pos_embed.shape == (1, 1 + 4, src.embed_dim)
    torch.testing.assert_close(m.street.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_missing_or_wrong_weights_file_is_one_clear_sentence(tmp_path):
    with pytest.raises(WeightsError, match=r"weights file .*nope\.pth not found for backbone 'resnet10t'") as e:
        TwoTower("resnet10t", pretrained=str(tmp_path / "nope.pth"))
    assert "\n" not in str(e.value)
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match=r"does not fit: .*model tensors not in it"):
        TwoTower("resnet10t", pretrained=str(tmp_path / "r18.pth"))


# --- VICI's checkpoint --------------------------------------------------------------------------------------------
def _vici_checkpoint(path, street, sat, extra=None, drop=None):
    """A checkpoint in the layout of VICI's Lightning module (model.street_conv / model.sat_conv)."""
    sd = {f"model.street_conv.{k}": v for k, v in street.state_dict().items()}
    sd.update({f"model.sat_conv.{k}": v for k, v in sat.state_dict().items()})
    sd.update(extra or {})
    for k in drop or []:
        del sd[k]
    torch.save({"epoch": 99, "global_step": 1234, "pytorch-lightning_version": "2.4.0", "state_dict": sd,
                "optimizer_states": [], "lr_schedulers": []}, path)
    return path


def test_vici_checkpoint_places_every_tensor(tmp_path):
    street = timm.create_model(DINO, num_classes=0, img_size=28)
    sat = copy.deepcopy(street)  # cheaper than a second model; made different below
    with torch.no_grad():
        for p in sat.parameters():
            p.mul_(0.9)
    ckpt = _vici_checkpoint(tmp_path / "vici.ckpt", street, sat)
    cfg = validate({"backbone": DINO, "pretrained": False, "image_size": 28, "init_checkpoint": str(ckpt)})
    m = build_model(cfg).eval()
    for k, v in street.state_dict().items():
        torch.testing.assert_close(m.street.state_dict()[k], v)
    for k, v in sat.state_dict().items():
        torch.testing.assert_close(m.satellite.state_dict()[k], v)
    x = random_images(size=28)
    torch.testing.assert_close(m.encode_satellite(x), torch.nn.functional.normalize(sat.eval()(x)))


def test_vici_checkpoint_leftover_missing_and_tower_count_reported(tmp_path):
    street = timm.create_model(VIT, num_classes=0, img_size=32)
    base = {"backbone": VIT, "pretrained": False, "image_size": 32}
    bad = _vici_checkpoint(tmp_path / "extra.ckpt", street, street,
                           extra={"model.street_conv.blocks.99.mlp.fc1.weight": torch.zeros(2, 2)})
    with pytest.raises(WeightsError, match=r"1 of its tensors with no place in the model \(street\.blocks\.99\.mlp"):
        build_model(validate({**base, "init_checkpoint": str(bad)}))
    gap = _vici_checkpoint(tmp_path / "gap.ckpt", street, street, drop=["model.sat_conv.norm.weight"])
    with pytest.raises(WeightsError, match=r"1 model tensors not in it \(satellite\.norm\.weight\)"):
        build_model(validate({**base, "init_checkpoint": str(gap)}))
    two = _vici_checkpoint(tmp_path / "two.ckpt", street, street)
    with pytest.raises(WeightsError, match="holds two towers.*shared_towers: false"):
        build_model(validate({**base, "shared_towers": True, "init_checkpoint": str(two)}))
    with pytest.raises(WeightsError, match="not found"):
        build_model(validate({**base, "init_checkpoint": str(tmp_path / "absent.ckpt")}))
