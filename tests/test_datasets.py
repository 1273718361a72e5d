"""Training pairs, drone mixing, batches of distinct buildings, image lists, JPEG decoding."""
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vici_utils.datasets import (SATELLITE, ImageListDataset, PairBatchSampler, PairDataset, PairKey, decode_image,
                                 drone_choices)
from vici_utils.models import TwoTower
from vici_utils.transforms import model_transforms
from vici_utils.u1652 import DatasetError, ImageItem, University1652

RED, GREEN, BLUE = (220, 20, 20), (20, 220, 20), (20, 20, 220)


def _img(path: Path, color, size=(48, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG")


def colour_tree(root: Path, n=6, drones=6):
    """Satellite red, street green, drone blue; the last building has no drone images."""
    for i in range(n):
        b = f"{i:04d}"
        _img(root / f"train/satellite/{b}/{b}.jpg", RED)
        for s in range(3):
            _img(root / f"train/street/{b}/s{s}.jpg", GREEN)
        (root / f"train/drone/{b}").mkdir(parents=True, exist_ok=True)
        for d in range(drones if i < n - 1 else 0):
            _img(root / f"train/drone/{b}/image-{d + 1:02d}.jpeg", BLUE)
    _img(root / "test/query_street/0100/q.jpg", GREEN)
    _img(root / "test/gallery_satellite/0100/0100.jpg", RED)
    return root


# --- decoding and image lists ----------------------------------------------------------------------------
def test_decode_downscales_big_jpegs_at_decode_time(tmp_path):
    _img(tmp_path / "big.jpg", RED, size=(512, 512))
    assert decode_image(tmp_path / "big.jpg", size=64).size == (128, 128)  # 1/4 scale, >= 2x the target
    assert decode_image(tmp_path / "big.jpg").size == (512, 512)
    Image.new("RGB", (512, 512)).save(tmp_path / "big.png")
    assert decode_image(tmp_path / "big.png", size=64).size == (512, 512)  # draft is JPEG only
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"bad\.jpg: cannot read this image"):
        decode_image(tmp_path / "bad.jpg", size=64)


def test_image_list_returns_tensor_and_index(tmp_path):
    _img(tmp_path / "a.jpg", RED)
    _img(tmp_path / "b.jpg", BLUE)
    tf = model_transforms(None, TwoTower("resnet10t", image_size=32), train=False, view="satellite")
    ds = ImageListDataset([ImageItem(tmp_path / "a.jpg", "0001", "a"), tmp_path / "b.jpg"], tf)
    x, i = ds[1]
    assert len(ds) == 2 and i == 1 and x.shape == (3, 32, 32)
    assert x[2].mean() > x[0].mean()  # blue
    xs, idx = next(iter(DataLoader(ds, batch_size=2)))
    assert xs.shape == (2, 3, 32, 32) and idx.tolist() == [0, 1]


# --- the batch sampler -----------------------------------------------------------------------------------
def test_one_street_per_building_distinct_batches_deterministic():
    n_street = [1 + i % 4 for i in range(50)]
    s = PairBatchSampler(n_street, [6] * 50, batch_size=8, seed=3)
    batches = list(s)
    assert len(batches) == len(s) == 6  # 50 // 8, the incomplete batch dropped
    seen = [k.building for b in batches for k in b]
    assert len(seen) == len(set(seen)) == 48
    assert all(0 <= k.street < n_street[k.building] for b in batches for k in b)
    assert batches == list(s)  # same epoch, same plan
    s.set_epoch(1)
    assert list(s) != batches
    assert list(PairBatchSampler(n_street, [6] * 50, 8, seed=4)) != batches


def test_all_streets_keep_buildings_distinct_within_a_batch():
    n_street = [10] + [1] * 30  # one building with many images: it cannot fill batches on its own
    s = PairBatchSampler(n_street, [0] * 31, batch_size=4, street_sampling="all")
    batches = list(s)
    for b in batches:
        assert len({k.building for k in b}) == len(b) == 4
    used = Counter((k.building, k.street) for b in batches for k in b)
    assert max(used.values()) == 1 and len(used) == 4 * len(batches) >= 30
    assert sum(1 for (b, _) in used if b == 0) == len(batches)  # building 0 in every batch, once


def test_ddp_ranks_split_a_global_batch_of_distinct_buildings():
    args = ([2] * 40, [5] * 40, 4)
    ranks = [list(PairBatchSampler(*args, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    single = list(PairBatchSampler([2] * 40, [5] * 40, 8, seed=1))
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 5
    for a, b, g in zip(*ranks, single):
        assert a + b == g and len({k.building for k in a + b}) == 8
    with pytest.raises(DatasetError, match="cannot fill a batch of 8 distinct buildings"):
        PairBatchSampler([1] * 7, [0] * 7, 4, world_size=2)


def test_drone_rate_realised_and_high_only():
    n = 4000
    keys = [k for b in PairBatchSampler([1] * n, [54] * n, 100, drone_rate=0.3) for k in b]
    rate = sum(k.drone != SATELLITE for k in keys) / len(keys)
    assert abs(rate - 0.3) < 0.025
    assert {k.drone for k in keys} - {SATELLITE} == set(range(54))
    never = [k for b in PairBatchSampler([1] * n, [54] * n, 100, drone_rate=0.0) for k in b]
    assert all(k.drone == SATELLITE for k in never)
    high = [k for b in PairBatchSampler([1] * n, [54] * n, 100, drone_rate=1.0, drone_high_only=True) for k in b]
    assert {k.drone for k in high} == set(range(18))  # the first third of the sequence only
    assert drone_choices(2, True) == 1 and drone_choices(0, True) == 0
    none = [k for b in PairBatchSampler([1] * 100, [0] * 100, 10, drone_rate=1.0) for k in b]
    assert all(k.drone == SATELLITE for k in none)  # no drone images: the satellite stays


# --- the pair dataset ------------------------------------------------------------------------------------
def _pairs(root, train=False):
    ds = University1652(root)
    m = TwoTower("resnet10t", image_size=32)
    return PairDataset(ds.train.buildings, ds.train, model_transforms(None, m, train, "street"),
                       model_transforms(None, m, train, "satellite"))


def test_pairs_load_street_and_satellite_or_drone(tmp_path):
    pairs = _pairs(colour_tree(tmp_path))
    assert pairs.counts() == ([3] * 6, [6] * 5 + [0])
    street, tile, b, is_drone = pairs[PairKey(2, 1, SATELLITE, 0)]
    assert b == 2 and not is_drone
    assert street[1].mean() > street[0].mean() and tile[0].mean() > tile[2].mean()  # green street, red tile
    _, tile, _, is_drone = pairs[PairKey(2, 1, 4, 0)]
    assert is_drone and tile[2].mean() > tile[0].mean()  # blue drone image
    s = PairBatchSampler(*pairs.counts(), batch_size=6, drone_rate=1.0)
    _, tiles, buildings, drones = next(iter(DataLoader(pairs, batch_sampler=s)))
    assert sorted(buildings.tolist()) == list(range(6))
    assert drones.tolist() == [b != 5 for b in buildings.tolist()]  # building 5 has no drone images


def test_augmentation_depends_on_the_sample_seed_only(tmp_path):
    root = tmp_path / "t"
    for i in range(4):
        b = f"{i:04d}"
        for view, name in (("satellite", f"{b}.jpg"), ("street", "s.jpg")):
            p = root / f"train/{view}/{b}/{name}"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.linear_gradient("L").resize((64, 64)).convert("RGB").save(p)
        (root / f"train/drone/{b}").mkdir(parents=True)
    (root / "test/query_street/0009").mkdir(parents=True)
    _img(root / "test/query_street/0009/q.jpg", GREEN)
    _img(root / "test/gallery_satellite/0009/0009.jpg", RED)
    pairs = _pairs(root, train=True)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = pairs[PairKey(1, 0, SATELLITE, 7)]
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    torch.manual_seed(999)
    b = pairs[PairKey(1, 0, SATELLITE, 7)]
    c = pairs[PairKey(1, 0, SATELLITE, 8)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    # workers or not, the same epoch gives the same tensors
    s = PairBatchSampler(*pairs.counts(), batch_size=4, seed=0)
    inline = [x for x in DataLoader(pairs, batch_sampler=s, num_workers=0)]
    workers = [x for x in DataLoader(pairs, batch_sampler=s, num_workers=2)]
    for u, v in zip(inline, workers):
        assert torch.equal(u[0], v[0]) and torch.equal(u[1], v[1])
