"""Feature extraction (order, normalisation, flip TTA, eval mode) and the on-disk feature cache."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vici_utils import embed, params
from vici_utils.models import TwoTower
from vici_utils.transforms import model_transforms


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TwoTower("resnet10t", image_size=32).eval()


@pytest.fixture(scope="module")
def transform(model):
    return model_transforms(params.Params(image_size=32), model, train=False, view="street")


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


class Counting:
    """A tower fn that counts the images it embeds."""

    def __init__(self, fn):
        self.fn, self.images = fn, 0

    def __call__(self, x):
        self.images += len(x)
        return self.fn(x)


def direct(model, transform, paths, flip=False):
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        f = model.encode_street(x)
        if flip:
            f = f + model.encode_street(torch.flip(x, dims=[3]))
    return torch.nn.functional.normalize(f, dim=1).numpy()


def test_features_are_normalised_in_item_order(model, transform, images):
    f = embed.extract_features(model.encode_street, images, transform, batch_size=3, device="cpu",
                               precision="fp32", num_workers=0, progress=False)
    assert f.dtype == np.float32 and f.shape == (7, model.out_dim)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(f, direct(model, transform, images), atol=1e-4)


def test_flip_tta_adds_the_mirrored_image_before_normalising(model, transform, images):
    kw = dict(batch_size=4, device="cpu", precision="fp32", num_workers=0, progress=False)
    flipped = embed.extract_features(model.encode_street, images, transform, flip_tta=True, **kw)
    plain = embed.extract_features(model.encode_street, images, transform, **kw)
    np.testing.assert_allclose(flipped, direct(model, transform, images, flip=True), atol=1e-4)
    assert not np.allclose(flipped, plain, atol=1e-3)


def test_a_training_model_is_embedded_in_eval_mode_and_restored(transform, images):
    torch.manual_seed(1)
    m = TwoTower("resnet10t", image_size=32).train()
    f = embed.extract_features(m.encode_street, images, transform, batch_size=2, device="cpu", precision="fp32",
                               num_workers=0, progress=False)
    assert m.training
    np.testing.assert_allclose(f, direct(m.eval(), transform, images), atol=1e-4)


def test_cache_hits_and_invalidates_on_any_input_change(model, transform, images, tmp_path):
    fn = Counting(model.encode_street)
    kw = dict(cache_dir=tmp_path / "cache", batch_size=4, device="cpu", precision="fp32", num_workers=0,
              progress=False)
    key = f"resnet10t|street|{embed.state_dict_hash(model)}"
    first = embed.cached_features(fn, images, transform, model_key=key, **kw)
    assert fn.images == 7
    again = embed.cached_features(fn, images, transform, model_key=key, **kw)
    assert fn.images == 7, "same inputs must read the cache"
    np.testing.assert_array_equal(first, again)

    embed.cached_features(fn, images, transform, model_key=key, flip_tta=True, **kw)
    assert fn.images == 7 + 14, "flip_tta recomputes (two passes)"

    embed.cached_features(fn, images[:5], transform, model_key=key, **kw)
    assert fn.images == 21 + 5, "another image list recomputes"

    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(images[2])
    os.utime(images[2], ns=(1, 1))
    embed.cached_features(fn, images, transform, model_key=key, **kw)
    assert fn.images == 26 + 7, "a rewritten image recomputes"

    changed = TwoTower("resnet10t", image_size=32).eval()
    changed.load_state_dict(model.state_dict())
    assert embed.state_dict_hash(changed) == embed.state_dict_hash(model)
    with torch.no_grad():
        changed.street.conv1[0].weight[0, 0, 0, 0] += 1e-3
    new_key = f"resnet10t|street|{embed.state_dict_hash(changed)}"
    assert new_key != key
    embed.cached_features(Counting(changed.encode_street), images, transform, model_key=new_key, **kw)
    hits = embed.cached_features(fn, images, transform, model_key=new_key, **kw)
    assert fn.images == 33, "the new weights' features were cached by the first call"
    assert not np.allclose(hits, embed.cached_features(fn, images, transform, model_key=key, **kw))

    other = model_transforms(params.Params(image_size=48), TwoTower("resnet10t", image_size=48), False, "street")
    embed.cached_features(fn, images, other, model_key=key, **kw)
    assert fn.images == 40, "another transform (image size) recomputes"


def test_a_corrupt_feature_cache_file_is_named_and_recomputed(tmp_path):
    """Issue 12 (8): a torn feature cache file."""
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((16, 16, 3), 40 * i, dtype=np.uint8)).save(paths[-1])
    model = TwoTower("resnet10t", image_size=32).eval()
    tf = model_transforms(params.Params(image_size=32), model, train=False, view="street")
    kw = dict(model_key="m", cache_dir=tmp_path / "cache", batch_size=2, device="cpu", num_workers=0, progress=False)
    first = embed.cached_features(model.encode_street, paths, tf, **kw)
    (cached,) = (tmp_path / "cache").glob("*.npy")
    cached.write_bytes(cached.read_bytes()[:50])  # a write cut short
    with pytest.warns(UserWarning, match=rf"feature cache .*{cached.name} is unreadable.*computing the features again"):
        again = embed.cached_features(model.encode_street, paths, tf, **kw)
    np.testing.assert_allclose(again, first, atol=1e-6)
    np.testing.assert_allclose(np.load(cached), first, atol=1e-6)  # replaced by a good file
