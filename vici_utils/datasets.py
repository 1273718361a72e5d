"""Torch datasets: training pairs with drone mixing, and plain image lists for embedding.

Every random choice of a training epoch (which street image, satellite or drone, which drone view, the
augmentation seed) is drawn in the main process by `PairBatchSampler` from (seed, epoch) alone, and the
workers only execute it. So an epoch is the same with 0 or 8 workers, persistent or not, and a resumed
run replays exactly the epochs an uninterrupted one would have seen.
"""
from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from .u1652 import DatasetError, ImageItem, TrainSplit, load_image

SATELLITE = -1  # PairKey.drone value for "use the satellite tile"


class DecodedCache:
    """Decoded images kept in memory up to a byte budget: an epoch of the embedded world decodes the same few
    thousand small JPEGs again and again. Each DataLoader worker holds its own (persistent workers keep it)."""

    def __init__(self, budget_bytes: int):
        self.budget, self.used, self.images = budget_bytes, 0, {}

    def get(self, key):
        return self.images.get(key)

    def put(self, key, image: Image.Image) -> None:
        size = image.width * image.height * 3
        if self.used + size <= self.budget:
            self.images[key] = image
            self.used += size


DECODED = DecodedCache(int(os.environ.get("VICI_DECODED_CACHE_MB", "1024")) << 20)


def decode_image(path: Path | str, size: Optional[int] = None) -> Image.Image:
    """An image as RGB (from DECODED when it holds it). A JPEG much bigger than `size` is decoded at a reduced
    scale that keeps at least twice the target size, so the resize still antialiases. Transforms return new
    images, so the cached one is never modified."""
    key = (str(path), size)
    cached = DECODED.get(key)
    if cached is not None:
        return cached
    image = load_image(path, draft_size=2 * size if size else None)
    DECODED.put(key, image)
    return image


@contextlib.contextmanager
def seeded(seed: int):
    """Seed torch and python RNGs (what timm/torchvision transforms draw from) for one sample, then
    restore them, so augmentation depends on the sample's seed only, not on the worker or the order."""
    torch_state, py_state = torch.random.get_rng_state(), random.getstate()
    torch.default_generator.manual_seed(seed)  # the CPU generator only: torch.manual_seed costs 100x more
    random.seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        random.setstate(py_state)


class ImageListDataset(Dataset):
    """Images to embed: `items` are ImageItems or paths; returns (tensor, index)."""

    def __init__(self, items: Sequence[ImageItem | Path | str], transform):
        self.paths = [it.path if isinstance(it, ImageItem) else Path(it) for it in items]
        self.transform = transform
        self.size = getattr(transform, "size", None)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(decode_image(self.paths[i], self.size)), i


class PairKey(NamedTuple):
    building: int  # index into PairDataset.buildings
    street: int    # index into that building's street images
    drone: int     # index into its drone images, or SATELLITE
    seed: int      # augmentation seed of this sample


class PairDataset(Dataset):
    """(street, satellite-or-drone, building index, is_drone) for a PairKey drawn by PairBatchSampler."""

    def __init__(self, buildings: Sequence[str], split: TrainSplit, street_transform, satellite_transform,
                 drone_transform=None):
        missing = [b for b in buildings if not split.street.get(b) or not split.satellite.get(b)]
        if missing:
            raise DatasetError(f"training buildings without street or satellite images: {missing[:5]}")
        self.buildings = list(buildings)
        self.street = [split.street[b] for b in self.buildings]
        self.satellite = [split.satellite[b][0] for b in self.buildings]
        self.drone = [split.drone.get(b, []) for b in self.buildings]
        self.street_transform, self.satellite_transform = street_transform, satellite_transform
        self.drone_transform = drone_transform or satellite_transform

    def __len__(self) -> int:
        return len(self.buildings)

    def counts(self) -> tuple[list[int], list[int]]:
        """Street and drone images per building, what the sampler needs to plan an epoch."""
        return [len(s) for s in self.street], [len(d) for d in self.drone]

    def load(self, key: PairKey):
        b = key.building
        tile = self.satellite[b] if key.drone == SATELLITE else self.drone[b][key.drone]
        street = decode_image(self.street[b][key.street], getattr(self.street_transform, "size", None))
        tile = decode_image(tile, getattr(self.satellite_transform, "size", None))
        return street, tile

    def __getitem__(self, key: PairKey):
        key = PairKey(*key)
        street, tile = self.load(key)
        with seeded(key.seed):
            xs = self.street_transform(street)
            xt = (self.satellite_transform if key.drone == SATELLITE else self.drone_transform)(tile)
        return xs, xt, key.building, key.drone != SATELLITE


def drone_choices(n_drone: int, high_only: bool) -> int:
    """How many drone views a building offers: all, or the high-altitude first third of the sequence."""
    return max(1, n_drone // 3) if high_only and n_drone else n_drone


class PairBatchSampler(Sampler):
    """Batches of PairKeys with distinct buildings (no false negatives), planned from (seed, epoch).

    street_sampling 'one': each building once per epoch with one random street image (VICI); 'all':
    every street image once, batches still keep buildings distinct. With probability `drone_rate` a
    pair's satellite tile is replaced by one of the building's drone views (kept if it has none).
    Under DDP the global batch (batch_size x world_size) holds distinct buildings; each rank takes its
    slice, so the gathered negatives are all true negatives.
    """

    def __init__(self, n_street: Sequence[int], n_drone: Sequence[int], batch_size: int, seed: int = 0,
                 drone_rate: float = 0.0, drone_high_only: bool = False, street_sampling: str = "one",
                 rank: int = 0, world_size: int = 1):
        if street_sampling not in ("one", "all"):
            raise ValueError(f"street_sampling must be 'one' or 'all', got {street_sampling!r}")
        self.n_street, self.n_drone = list(n_street), list(n_drone)
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        self.drone_rate, self.drone_high_only, self.street_sampling = drone_rate, drone_high_only, street_sampling
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        if len(self.n_street) < self.global_batch:
            raise DatasetError(f"{len(self.n_street)} training buildings cannot fill a batch of {self.global_batch} "
                               "distinct buildings; lower batch_size (or use more buildings)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _entries(self, g: torch.Generator) -> list[tuple[int, int]]:
        if self.street_sampling == "one":
            picks = [int(torch.randint(n, (), generator=g)) for n in self.n_street]
            entries = list(enumerate(picks))
        else:
            entries = [(b, s) for b, n in enumerate(self.n_street) for s in range(n)]
        order = torch.randperm(len(entries), generator=g).tolist()
        return [entries[i] for i in order]

    def _distinct_batches(self, entries: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
        """Greedy in shuffled order: a building already in the batch waits for the next one."""
        batches, batch, seen, waiting = [], [], set(), []
        pending = list(reversed(entries))
        while pending:
            e = pending.pop()
            if e[0] in seen:
                waiting.append(e)
                continue
            batch.append(e)
            seen.add(e[0])
            if len(batch) == self.global_batch:
                batches.append(batch)
                pending.extend(reversed(waiting))  # the waiting ones go first into the next batch
                batch, seen, waiting = [], set(), []
        return batches  # an incomplete last batch is dropped

    def plan(self, epoch: int) -> list[list[PairKey]]:
        """All global batches of an epoch."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        out = []
        for batch in self._distinct_batches(self._entries(g)):
            keys = []
            for b, s in batch:
                n = drone_choices(self.n_drone[b], self.drone_high_only)
                use_drone = n > 0 and float(torch.rand((), generator=g)) < self.drone_rate
                d = int(torch.randint(n, (), generator=g)) if use_drone else SATELLITE
                keys.append(PairKey(b, s, d, int(torch.randint(2**31 - 1, (), generator=g))))
            out.append(keys)
        return out

    def __iter__(self):
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for batch in self.plan(self.epoch):
            yield batch[lo:hi]

    def __len__(self) -> int:
        if self.street_sampling == "one":
            return len(self.n_street) // self.global_batch
        return len(self.plan(self.epoch))
