"""Batched feature extraction (bf16 autocast on GPU, flip test-time augmentation) and an on-disk feature cache.

The cache key is a hash of everything the features depend on: the weights (a hash of the state_dict's bytes, so
best.pt, init_checkpoint and hub weights are all covered), the architecture and tower, the transform's repr (image
size, normalisation), the image list (paths, sizes, modification times), flip_tta and the precision. Same inputs
read the cache; any change recomputes.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .device import autocast, data_workers, resolve_device, resolve_precision
from .paths import outputs_root
from .run_folder import write_atomic
from .progress import progress as progress_bar

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return outputs_root() / "cache" / "features"


@torch.inference_mode()
def extract_features(model_tower_fn: Callable[[torch.Tensor], torch.Tensor], items: Sequence, transform,
                     batch_size: int = 128, device="auto", flip_tta: bool = False, precision: str = "auto",
                     num_workers: Optional[int] = None, progress: bool = True, desc: str = "embedding") -> np.ndarray:
    """Embed `items` (ImageItems or paths) with one tower: float32 [n, dim], L2-normalised.

    flip_tta adds the embedding of the horizontally flipped image before normalising, as the official test.py
    does (towers that normalise their output, as ours do, then give the mean direction of the two). A tower fn bound to a module in training mode is switched to eval for the pass (BatchNorm statistics)."""
    from .datasets import ImageListDataset

    if len(items) == 0:
        raise ValueError("extract_features: no images to embed")
    device = resolve_device(device) if isinstance(device, str) else device
    dtype = resolve_precision(precision, device)
    workers = data_workers(device, persistent=False) if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(ImageListDataset(items, transform), batch_size=batch_size, shuffle=False,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         persistent_workers=False)
    owner = getattr(model_tower_fn, "__self__", None)
    was_training = isinstance(owner, torch.nn.Module) and owner.training
    if was_training:
        owner.eval()
    out = None
    try:
        with progress_bar(total=len(items), desc=desc, unit="img", disable=not progress) as bar:
            for x, index in loader:
                x = x.to(device, non_blocking=True)
                if device.type == "cpu":
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device, dtype):
                    f = model_tower_fn(x).float()
                    if flip_tta:
                        f = f + model_tower_fn(torch.flip(x, dims=[3])).float()
                f = F.normalize(f.flatten(1), dim=1).cpu().numpy()
                if out is None:
                    out = np.empty((len(items), f.shape[1]), dtype=np.float32)
                out[index.numpy()] = f
                bar.update(len(f))
    finally:
        if was_training:
            owner.train()
    return out


# --- the cache ----------------------------------------------------------------------------------------------------

def state_dict_hash(module: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a module's state_dict: the weights it will compute with,
    whichever file (or none) they came from."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def items_fingerprint(items: Sequence) -> list:
    """(path, size, mtime) per image: a rewritten, added, removed or reordered image changes the cache key."""
    rows = []
    for it in items:
        p = Path(getattr(it, "path", it))
        st = p.stat()
        rows.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return rows


def features_key(**parts) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_features(model_tower_fn: Callable[[torch.Tensor], torch.Tensor], items: Sequence, transform, *,
                    model_key: str, cache_dir=None, tag: str = "features", batch_size: int = 128, device="auto",
                    flip_tta: bool = False, precision: str = "auto", num_workers: Optional[int] = None,
                    progress: bool = True) -> np.ndarray:
    """extract_features, read from / written to `cache_dir` (default outputs/cache/features/).

    model_key names the weights, architecture and tower (e.g. f"{backbone}|street|{state_dict_hash(model)}");
    the transform repr, image list, flip_tta and precision are added here."""
    device = resolve_device(device) if isinstance(device, str) else device
    dtype = resolve_precision(precision, device)
    key = features_key(model=model_key, transform=repr(transform), images=items_fingerprint(items),
                       flip_tta=bool(flip_tta), precision=str(dtype))
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"{tag}-{key[:24]}.npy"
    if path.is_file():
        try:
            feats = np.load(path, allow_pickle=False)
        except Exception as e:  # truncated or overwritten: it is only a cache, so compute again and replace it
            warnings.warn(f"feature cache {path} is unreadable ({type(e).__name__}: {e}); computing the features "
                          "again and replacing it", stacklevel=2)
            feats = None
        if feats is not None and feats.ndim == 2 and len(feats) == len(items):
            if progress:
                print(f"{tag}: {len(items)} features read from the cache ({path.name})")
            return feats
    feats = extract_features(model_tower_fn, items, transform, batch_size=batch_size, device=device,
                             flip_tta=flip_tta, precision=precision, num_workers=num_workers, progress=progress,
                             desc=tag)
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: np.save(tmp, feats))
    return feats


# --- sharded embedding: torchrun --nproc_per_node N -m vici_utils.embed PARAMS -----------------------------------

FEATURE_DTYPES = {"float32": np.float32, "float16": np.float16}
PARTS = (("query", "street"), ("gallery", "satellite"))
SHARD_ROWS = 4096  # images embedded per call, then written: a shard's float32 rows are never all in memory


def merged_path(folder: Path, part: str, dtype: str) -> Path:
    """retrieval/features_{query,gallery}.{f32,f16}.npy; its meta (the features key, rows, dtype) in .json."""
    return Path(folder) / f"features_{part}.{'f16' if dtype == 'float16' else 'f32'}.npy"


def _shard_paths(folder: Path, part: str, rank: int) -> tuple[Path, Path]:
    return Path(folder) / f"features_{part}.rank{rank}.npy", Path(folder) / f"features_{part}.rank{rank}.idx.npy"


def embed_shard(model_tower_fn, items: Sequence, transform, indices: np.ndarray, folder: Path, part: str, rank: int,
                dtype: str = "float32", **extract) -> Path:
    """Embed items[indices] into a memory-mapped file of rows (in `indices` order) and save `indices` beside it."""
    rows_path, idx_path = _shard_paths(folder, part, rank)
    Path(folder).mkdir(parents=True, exist_ok=True)
    rows = None
    for c0 in range(0, len(indices), SHARD_ROWS):
        f = extract_features(model_tower_fn, [items[i] for i in indices[c0:c0 + SHARD_ROWS]], transform, **extract)
        if rows is None:
            rows = np.lib.format.open_memmap(rows_path, mode="w+", dtype=FEATURE_DTYPES[dtype],
                                             shape=(len(indices), f.shape[1]))
        rows[c0:c0 + len(f)] = f
    rows.flush()
    np.save(idx_path, np.asarray(indices, dtype=np.int64))
    return rows_path


def merge_shards(folder: Path, part: str, n: int, world: int, dtype: str, key: str) -> Path:
    """One file of n rows from the world's shards, each image exactly once: DistributedSampler pads the last shards
    by repeating images, and a repeat is dropped (its row is the same). Fails naming the missing images otherwise."""
    out_path = merged_path(folder, part, dtype)
    seen = np.zeros(n, dtype=bool)
    out = None
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp.npy")
    try:
        for rank in range(world):
            rows_path, idx_path = _shard_paths(folder, part, rank)
            idx = np.load(idx_path)
            rows = np.load(rows_path, mmap_mode="r")
            _, first = np.unique(idx, return_index=True)
            keep = np.zeros(len(idx), dtype=bool)
            keep[first] = True
            keep &= ~seen[idx]
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=FEATURE_DTYPES[dtype], shape=(n, rows.shape[1]))
            for c0 in range(0, len(idx), SHARD_ROWS):
                k = keep[c0:c0 + SHARD_ROWS]
                out[idx[c0:c0 + SHARD_ROWS][k]] = rows[c0:c0 + SHARD_ROWS][k]
            seen[idx[keep]] = True
        if not seen.all():
            raise RuntimeError(f"{folder}: the {world} shards of {part} features cover {int(seen.sum())} of {n} "
                               f"images (first missing: {int(np.flatnonzero(~seen)[0])})")
        out.flush()
        del out
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    write_atomic(out_path.with_suffix(".json"), json.dumps({"key": key, "rows": n, "dtype": dtype,
                                                            "processes": world}) + "\n")
    for rank in range(world):
        for p in _shard_paths(folder, part, rank):
            p.unlink(missing_ok=True)
    return out_path


def read_merged(folder: Path, part: str, key: str) -> Optional[np.ndarray]:
    """The merged features of `part`, memory-mapped, when they were embedded with this features key; else None."""
    for dtype in FEATURE_DTYPES:
        path = merged_path(folder, part, dtype)
        meta = path.with_suffix(".json")
        if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key:
            return np.load(path, mmap_mode="r")
    return None


def tower_features_key(model_key: str, view: str, transform, items: Sequence, flip_tta: bool, dtype) -> str:
    """The key cached_features files a tower's features under (the same here, so either path finds the other's)."""
    return features_key(model=f"{model_key}|{view}", transform=repr(transform), images=items_fingerprint(items),
                        flip_tta=bool(flip_tta), precision=str(dtype))


def run_sharded(cfg, progress: bool = True) -> dict[str, Path]:
    """Embed the run's test queries and gallery (extra distractors included) in one shard per process, and merge
    them in the first process: retrieval/features_{query,gallery}.{f32,f16}.npy, which notebook 03 then reads."""
    import torch.distributed as dist
    from torch.utils.data.distributed import DistributedSampler

    from .gallery import with_extra_tiles
    from .models import load_model_for_eval
    from .run_folder import RETRIEVAL, run_dir
    from .u1652 import open_dataset

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(cfg.device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    barrier = dist.barrier if dist.is_initialized() else (lambda: None)
    run = run_dir(cfg.run_name)
    folder = run / RETRIEVAL
    if rank == 0:  # the world and its extra tiles are rendered once, by one process
        with_extra_tiles(cfg, open_dataset(cfg, progress=progress).test, progress=progress)
    barrier()
    test = with_extra_tiles(cfg, open_dataset(cfg, progress=False).test, progress=False)
    torch.manual_seed(cfg.seed)  # as retrieval.evaluate: an untrained model is the same one
    model, transforms = load_model_for_eval(cfg, run)
    model_key = f"{model.config}|{state_dict_hash(model)}"
    model.to(device).eval()
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    out = {}
    for part, view in PARTS:
        items = test.queries if part == "query" else test.gallery
        key = tower_features_key(model_key, view, transforms[view], items, cfg.flip_tta,
                                 resolve_precision(cfg.precision, device))
        if read_merged(folder, part, key) is None:
            indices = np.fromiter(iter(DistributedSampler(range(len(items)), num_replicas=world, rank=rank,
                                                          shuffle=False)), dtype=np.int64)
            fn = model.encode_street if view == "street" else model.encode_satellite
            embed_shard(fn, items, transforms[view], indices, folder, part, rank, cfg.features_dtype,
                        batch_size=cfg.eval_batch_size, device=device, flip_tta=cfg.flip_tta,
                        precision=cfg.precision, num_workers=cfg.num_workers, progress=progress and rank == 0,
                        desc=f"{part} shard {rank}/{world}")
            barrier()
            if rank == 0:
                merge_shards(folder, part, len(items), world, cfg.features_dtype, key)
            barrier()
        out[part] = merged_path(folder, part, cfg.features_dtype)
    return out


def main(argv=None) -> None:
    import torch.distributed as dist

    from .params import from_command_line

    cfg = from_command_line(argv, "python -m vici_utils.embed",
                            "Embed a run's test queries and gallery in shards (torchrun).")
    try:
        paths = run_sharded(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        for part, path in paths.items():
            rows = np.load(path, mmap_mode="r")
            print(f"{path}: {rows.shape[0]:,} {part} features of dim {rows.shape[1]} ({rows.dtype})")


if __name__ == "__main__":
    main()
