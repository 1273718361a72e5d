"""The two-tower model: timm backbones by name, towers, heads, weights files, our and VICI's checkpoints."""
import copy

import pytest
import timm
import torch
from PIL import Image

from vici_utils.checkpoints import WeightsError
from vici_utils.model_stats import model_summary
from vici_utils.models import TwoTower, build_model, load_model_for_eval, model_from_checkpoint
from vici_utils.params import validate
from vici_utils.transforms import model_transforms

VIT = "test_vit"  # timm's 0.3 M-parameter ViT for tests: CLS pooling, 16 px patches (32 px = 2x2 patches)
DINO = "vit_small_patch14_dinov2"  # the DINOv2 layout (layer scale), 28 px = 2x2 patches


def _x(n=2, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,size", [("resnet10t", 32), (VIT, 32)])
def test_towers_by_name_give_unit_embeddings(name, size):
    m = TwoTower(name, image_size=size).eval()
    s, g = m(_x(size=size), _x(size=size, seed=1))
    assert s.shape == g.shape == (2, m.feature_dim)
    torch.testing.assert_close(s.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(g.norm(dim=1), torch.ones(2))
    assert m.data_config["input_size"] == (3, size, size) and m.config["image_size"] == size
    assert model_summary(m)["image size"] == size and model_summary(m)["GMACs per image"] > 0


def test_vit_pools_the_cls_token():
    m = TwoTower(VIT, image_size=32).eval()
    x = _x(size=32)
    torch.testing.assert_close(m.encode_street(x), torch.nn.functional.normalize(m.street.forward_features(x)[:, 0]))


def test_separate_towers_are_independent_and_shared_is_one_module():
    sep = TwoTower("resnet10t", image_size=32).eval()
    x = _x()
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
    s, g = m(_x(), _x(seed=1))
    assert s.shape == (2, 16) and m.out_dim == 16
    torch.testing.assert_close(s.norm(dim=1), torch.ones(2))
    assert m.head_street is not m.head_satellite
    shared = TwoTower("resnet10t", image_size=32, embed_dim=16, shared_towers=True)
    assert shared.head("satellite") is shared.head_street


@pytest.mark.parametrize("name,size,embed_dim", [("resnet10t", 32, None), (VIT, 32, 16)])
def test_embedding_with_feature_maps_is_the_embedding(name, size, embed_dim):
    """The verifier reads the embedding and the last stage's maps from one forward pass: the same embedding."""
    m = TwoTower(name, image_size=size, embed_dim=embed_dim).eval()
    x = _x(size=size)
    for view in ("street", "satellite"):
        emb, maps = m.encode_with_maps(x, view, levels=1)
        torch.testing.assert_close(emb, m.encode(x, view))
        assert len(maps) == 1 and maps[0].shape[0] == 2 and maps[0].ndim == 4


def test_unknown_backbone_is_one_sentence():
    with pytest.raises(WeightsError, match=r"'resnet10x' is not a timm model.*resnet10t"):
        TwoTower("resnet10x")


# --- weights ---------------------------------------------------------------------------------------------
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


def test_unreachable_hub_is_one_clear_sentence(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as offline, without waiting
    with pytest.raises(WeightsError, match=r"backbone 'resnet10t': hub weights could not be loaded") as e:
        TwoTower("resnet10t", pretrained=True)
    assert "\n" not in str(e.value) and "pretrained: false" in str(e.value)


# --- checkpoints -----------------------------------------------------------------------------------------
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
    x = _x(size=28)
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


def test_our_checkpoint_rebuilds_the_model_alone(tmp_path):
    m = TwoTower("resnet10t", image_size=32, embed_dim=8)
    torch.save({"model_config": m.config, "model": m.state_dict()}, tmp_path / "ours.pt")
    again = model_from_checkpoint(tmp_path / "ours.pt").eval()
    assert again.config == m.config and again.out_dim == 8
    torch.testing.assert_close(again.encode_street(_x()), m.eval().encode_street(_x()))


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


def test_transforms_from_the_model_data_config():
    m = TwoTower("resnet10t", image_size=40)
    img = Image.new("RGB", (120, 90), (200, 10, 10))
    ev = model_transforms(None, m, train=False, view="street")
    x = ev(img)
    assert x.shape == (3, 40, 40) and ev.size == 40
    # red after ImageNet normalisation: channel 0 high, channel 2 low
    assert x[0].mean() > 1.0 and x[2].mean() < -1.0
    tile = Image.new("RGB", (64, 64))
    tile.paste((255, 255, 255), (0, 0, 32, 32))  # a white top-left quadrant

    def quadrants(view):
        tr, seen = model_transforms(None, m, train=True, view=view), set()
        for seed in range(12):
            torch.manual_seed(seed)
            y = tr(tile)
            corners = [y[:, :8, :8].mean(), y[:, :8, -8:].mean(), y[:, -8:, :8].mean(), y[:, -8:, -8:].mean()]
            seen.add(int(torch.stack(corners).argmax()))
        return seen

    assert len(quadrants("satellite")) >= 3  # random 90-degree rotations move the white quadrant around
    assert quadrants("drone") == {0}          # a drone photo has a horizon: never turned


@pytest.mark.parametrize("keys, kind, words", [
    ({"pretrained": False}, "scratch", ("from scratch", "random initialisation", "random initialisation")),
    ({"pretrained": True}, "hub", ("hub weights", "hub weights", "hub weights")),
    ({"pretrained": "package"}, "package", ("pip package", "pretrained: package", "EfficientNet")),
    ({"pretrained": "/w/net.safetensors"}, "file", ("net.safetensors",) * 3),
    ({"init_checkpoint": "/w/vici.ckpt", "epochs": 0}, "init_checkpoint", ("vici.ckpt",) * 3),
])
def test_one_rule_says_where_the_weights_come_from(keys, kind, words, tmp_path):
    """Issue 20.1: four places said it; provenance.initial_weights is the rule, the three sentences follow it."""
    from vici_utils.params import validate
    from vici_utils.provenance import describe_model, describe_weights, initial_weights
    from vici_utils.retrieval import weights_source

    cfg = validate({"backbone": "tf_efficientnet_lite0", **keys})
    assert initial_weights(cfg) == kind
    for text, word in zip((describe_model(cfg), describe_weights(cfg), weights_source(cfg, tmp_path)), words):
        assert word in text, (text, word)
