"""Batched feature extraction (bf16 autocast on GPU, flip test-time augmentation) and an on-disk feature cache.

The cache key is a hash of everything the features depend on: the weights (a hash of the state_dict's bytes, so
best.pt, init_checkpoint and hub weights are all covered), the architecture and tower, the transform's repr (image
size, normalisation), the image list (paths, sizes, modification times), flip_tta and the precision. Same inputs
read the cache; any change recomputes.
"""
from __future__ import annotations

import hashlib
import json
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

def file_hash(path) -> str:
    """sha256 of a file's contents (weights files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


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
