"""The two-tower model (models.py): timm backbones by name, towers, heads, hub weights, rebuilding from our
checkpoint and loading a run's model for evaluation."""
import pytest
import torch

from tests.tiny_models import VIT, random_images
from vici_utils.checkpoints import WeightsError
from vici_utils.model_stats import model_summary
from vici_utils.models import TwoTower, load_model_for_eval, model_from_checkpoint
from vici_utils.params import validate


@pytest.mark.parametrize("name,size", [("resnet10t", 32), (VIT, 32)])
def test_towers_by_name_give_unit_embeddings(name, size):
    m = TwoTower(name, image_size=size).eval()
    s, g = m(random_images(size=size), random_images(size=size, seed=1))
    assert s.shape == g.shape == (2, m.feature_dim)
    torch.testing.assert_close(s.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(g.norm(dim=1), torch.ones(2))
    assert m.data_config["input_size"] == (3, size, size) and m.config["image_size"] == size
    assert model_summary(m)["image size"] == size and model_summary(m)["GMACs per image"] > 0


def test_vit_pools_the_cls_token():
    m = TwoTower(VIT, image_size=32).eval()
    x = random_images(size=32)
    torch.testing.assert_close(m.encode_street(x), torch.nn.functional.normalize(m.street.forward_features(x)[:, 0]))


def test_separate_towers_are_independent_and_shared_is_one_module():
    sep = TwoTower("resnet10t", image_size=32).eval()
    x = random_images()
    before = sep.encode_satellite(x)
    with torch.no_grad():
        for p in sep.street.parameters():
            p.add_(0.1)
    torch.testing.assert_close(sep.encode_satellite(x), before)  # satellite tower untouched
    assert not torch.allclose(sep.encode_street(x), before)
    assert any(k.startswith("satellite.") for k in sep.state_dict())

    shared = TwoTower("resnet10t", image_size=32, shared_towers=True).eval()
    assert shared.satellite is None and not any(k.startswith("satellite.") for k in shared.state_dict())
    torch.testing.assert_close(shared.encode_street(x), shared.encode_satellite(x))
    assert sum(p.numel() for p in shared.parameters()) * 2 == sum(p.numel() for p in sep.parameters())


def test_projection_head():
    m = TwoTower("resnet10t", image_size=32, embed_dim=16).eval()
    s, g = m(random_images(), random_images(seed=1))
    assert s.shape == (2, 16) and m.out_dim == 16
    torch.testing.assert_close(s.norm(dim=1), torch.ones(2))
    assert m.head_street is not m.head_satellite
    shared = TwoTower("resnet10t", image_size=32, embed_dim=16, shared_towers=True)
    assert shared.head("satellite") is shared.head_street


@pytest.mark.parametrize("name,size,embed_dim", [("resnet10t", 32, None), (VIT, 32, 16)])
def test_embedding_with_feature_maps_is_the_embedding(name, size, embed_dim):
    """The verifier reads the embedding and the last stage's maps from one forward pass: the same embedding."""
    m = TwoTower(name, image_size=size, embed_dim=embed_dim).eval()
    x = random_images(size=size)
    for view in ("street", "satellite"):
        emb, maps = m.encode_with_maps(x, view, levels=1)
        torch.testing.assert_close(emb, m.encode(x, view))
        assert len(maps) == 1 and maps[0].shape[0] == 2 and maps[0].ndim == 4


def test_unknown_backbone_is_one_sentence():
    with pytest.raises(WeightsError, match=r"'resnet10x' is not a timm model.*resnet10t"):
        TwoTower("resnet10x")


def test_unreachable_hub_is_one_clear_sentence(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as offline, without waiting
    with pytest.raises(WeightsError, match=r"backbone 'resnet10t': hub weights could not be loaded") as e:
        TwoTower("resnet10t", pretrained=True)
    assert "\n" not in str(e.value) and "pretrained: false" in str(e.value)


# --- checkpoints ------------------------------------------------------------------------------------------------
def test_our_checkpoint_rebuilds_the_model_alone(tmp_path):
    m = TwoTower("resnet10t", image_size=32, embed_dim=8)
    torch.save({"model_config": m.config, "model": m.state_dict()}, tmp_path / "ours.pt")
    again = model_from_checkpoint(tmp_path / "ours.pt").eval()
    assert again.config == m.config and again.out_dim == 8
    torch.testing.assert_close(again.encode_street(random_images()), m.eval().encode_street(random_images()))


def test_load_model_for_eval_falls_back_checkpoint_then_init_then_bare(tmp_path, monkeypatch):
    monkeypatch.setenv("VICI_OUTPUTS", str(tmp_path / "out"))
    cfg = validate({"run_name": "r", "backbone": "resnet10t", "pretrained": False, "image_size": 32})
    bare, tfs = load_model_for_eval(cfg)
    assert not bare.training and set(tfs) == {"street", "satellite"}

    init = TwoTower("resnet10t", image_size=32)
    torch.save({"model_config": init.config, "model": init.state_dict()}, tmp_path / "init.pt")
    from_init, _ = load_model_for_eval(cfg.model_copy(update={"init_checkpoint": str(tmp_path / "init.pt")}))
    torch.testing.assert_close(from_init.street.conv1[0].weight, init.street.conv1[0].weight)

    trained = TwoTower("resnet10t", image_size=32)
    (tmp_path / "out/r/train").mkdir(parents=True)
    torch.save({"model_config": trained.config, "model": trained.state_dict(), "config": cfg.model_dump()},
               tmp_path / "out/r/train/best.pt")
    from_run, _ = load_model_for_eval(cfg)
    torch.testing.assert_close(from_run.street.conv1[0].weight, trained.street.conv1[0].weight)
    load_model_for_eval(cfg.model_copy(update={"lr": 0.5}))  # a training key: only resuming cares
    with pytest.raises(WeightsError, match=r"another model \(image_size \(32 -> 48\)\)"):
        load_model_for_eval(cfg.model_copy(update={"image_size": 48}))


def test_a_truncated_best_checkpoint_names_the_command_that_remakes_it(tmp_path):
    """Issue 22.10: a run file read back names itself and the command that remakes it."""
    base = {"backbone": "resnet10t", "pretrained": False, "image_size": 32, "run_name": "trunc"}
    (tmp_path / "train").mkdir()
    model = TwoTower("resnet10t", image_size=32)
    torch.save({"model": model.state_dict()}, tmp_path / "train/best.pt")
    data = (tmp_path / "train/best.pt").read_bytes()
    (tmp_path / "train/best.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"best\.pt .*remake it by training this run again: python -m vici_utils "
                                           r"run <its params file> --set run_name=trunc --set resume=false --only 02"):
        load_model_for_eval(validate(base), run_dir=tmp_path)
