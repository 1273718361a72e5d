"""Gallery search past one machine's flat index: faiss `index_factory` indexes, trained on a sample of the gallery,
saved in the run folder and reused, and an exact re-scoring of their top K' candidates.

    faiss_index: flat | hnsw | any faiss index_factory string, e.g. "IVF4096,PQ64" (inner product)
    faiss_nprobe: inverted lists visited per query (IVF indexes)
    faiss_rescore_k: K'; the index proposes K' candidates, their exact cosine from the stored features ranks them

A compressed index (PQ) only approximates the scores; re-scoring the top K' with the features themselves makes the
final top 10 an exact ranking of the candidates, so the index only has to get the right tiles into the top K'.

Training sample: 64 gallery rows per inverted list (faiss's k-means warns below 39 and subsamples above 256) and at
least 65,536 rows, so that each of PQ's 256-centroid codebooks sees 256 points per centroid; at most the gallery.
For IVF4096,PQ64 that is 262,144 rows: a quarter of a million-tile gallery, 1 GB in float32 while training.
The sample is drawn with a fixed seed, so an index is a function of the features and the factory string.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Optional

import faiss
import numpy as np
import torch

from .metrics import _features, build_index, check_gallery
from .run_folder import write_atomic

BASIC = ("flat", "hnsw")   # the indexes metrics.build_index makes (no training, nothing to save)
ROWS = 1 << 16             # gallery rows converted to float32 at a time (256 MB at 1,024 dimensions)
PER_LIST = 64              # training rows per inverted list
MIN_SAMPLE = 1 << 16       # training rows at least (PQ codebooks: 256 centroids x 256 points)
SEED = 1652


def check_spec(spec: str, dim: int, key: str = "faiss_index") -> None:
    """Raise one clear sentence if faiss cannot make `spec` for `dim`-dimensional features."""
    if spec in BASIC:
        return
    try:
        faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1][:200]
        raise ValueError(f"{key}: {spec!r} is not a faiss index_factory string for {dim}-dimensional features "
                         f"(expected flat, hnsw or e.g. 'IVF4096,PQ64' with PQ's m dividing {dim}): {first}") from None


def train_size(index: faiss.Index, n: int) -> int:
    """Rows to train `index` on (see the module's docstring): 0 for an index that needs no training."""
    if index.is_trained:
        return 0
    ivf = faiss.try_extract_index_ivf(index)
    lists = ivf.nlist if ivf is not None else 0
    return int(min(n, max(PER_LIST * lists, MIN_SAMPLE)))


def _no_polysemous(index: faiss.Index) -> None:
    """index_factory's PQ also trains polysemous codes (for Hamming pre-filtering, which we never use): 50x the
    training time of the codebooks themselves. Switched off, as the factory's 'np' suffix does."""
    ivf = faiss.try_extract_index_ivf(index)
    for part in (index, ivf):
        part = faiss.downcast_index(part) if part is not None else None
        if part is not None and hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False


def _rows(gallery, idx, out: Optional[torch.Tensor] = None) -> np.ndarray:
    """Gallery rows as contiguous float32. Fancy-indexed float16 rows go through torch: numpy converts float16 a
    value at a time, torch's vectorised copy into a reused float32 buffer (`out`) was 8x faster (re-scoring a
    million-tile memmap's top 1,000 spent three quarters of its time converting)."""
    rows = gallery[idx]
    if out is None or not rows.flags.writeable:   # a slice of a read-only memmap: torch takes writable arrays only
        return np.ascontiguousarray(rows, dtype=np.float32)
    dst = out.view(-1)[:rows.size].view(rows.shape)
    dst.copy_(torch.from_numpy(rows))
    return dst.numpy()


def build(gallery, spec: str, seed: int = SEED) -> faiss.Index:
    """An inner-product index over the gallery (float16/float32, memory-mapped or not), trained on a seeded sample
    and filled a block of rows at a time, so the gallery is never copied whole into float32."""
    if spec in BASIC:
        return build_index(gallery, spec)
    check_gallery(gallery)
    dim = gallery.shape[1]
    check_spec(spec, dim)
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    _no_polysemous(index)
    n_train = train_size(index, len(gallery))
    if n_train:
        sample = np.sort(np.random.default_rng(seed).choice(len(gallery), n_train, replace=False))
        index.train(_rows(gallery, sample))
    for r0 in range(0, len(gallery), ROWS):
        index.add(_rows(gallery, slice(r0, r0 + ROWS)))
    return index


def features_digest(gallery) -> str:
    """sha256 of the gallery's shape, dtype and bytes (read a block at a time): the same features, the same index."""
    h = hashlib.sha256(f"{tuple(gallery.shape)}|{gallery.dtype}".encode())
    for r0 in range(0, len(gallery), ROWS):
        h.update(np.ascontiguousarray(gallery[r0:r0 + ROWS]).tobytes())
    return h.hexdigest()


def index_path(folder: Path, spec: str, digest: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_")
    return Path(folder) / f"index-{slug}-{digest[:16]}.faiss"


def open_index(gallery, spec: str, folder: Optional[Path] = None) -> faiss.Index:
    """The index of `spec` over the gallery: read from `folder` when one was built from the same features, else
    built and (for a trained index) saved there. flat and hnsw are built every time (no training to save)."""
    if spec in BASIC or folder is None:
        return build(gallery, spec)
    path = index_path(folder, spec, features_digest(gallery))
    if path.is_file():
        return faiss.read_index(str(path))
    index = build(gallery, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: faiss.write_index(index, str(tmp)))
    return index


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Inverted lists visited per query, for any index with an IVF inside (no effect on others)."""
    if faiss.try_extract_index_ivf(index) is not None:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", int(nprobe))


def rescore(query_feats, gallery, candidates: np.ndarray, k: int, rows: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The top k of each query's candidates (int [nq, K'], -1 = none) by exact inner product with the gallery's
    stored features, ties by lower gallery index: (scores [nq, k] float32, indices [nq, k] int64; -1 / -inf
    where a query had fewer than k candidates)."""
    q = _features(query_feats, "query_feats")
    k = min(int(k), candidates.shape[1])
    out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(q), k), -1, dtype=np.int64)
    buffer = (torch.empty(min(rows, len(q)) * candidates.shape[1] * q.shape[1], dtype=torch.float32)
              if gallery.dtype == np.float16 else None)
    for r0 in range(0, len(q), rows):  # [rows, K', dim] float32 at a time, never every query's candidates
        cand = candidates[r0:r0 + rows]
        found = cand >= 0
        g = _rows(gallery, np.where(found, cand, 0).ravel(), buffer).reshape(*cand.shape, -1)
        s = np.where(found, np.einsum("qkd,qd->qk", g, q[r0:r0 + rows]), -np.inf).astype(np.float32)
        order = np.lexsort((np.where(found, cand, np.iinfo(np.int64).max), -s), axis=1)[:, :k]
        out_s[r0:r0 + rows] = np.take_along_axis(s, order, 1)
        out_i[r0:r0 + rows] = np.where(np.isfinite(out_s[r0:r0 + rows]), np.take_along_axis(cand, order, 1), -1)
    return out_s, out_i


def top_k(query_feats, gallery, k: int, spec: str = "flat", nprobe: int = 32, rescore_k: Optional[int] = None,
          folder: Optional[Path] = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery images per query: (scores [nq, k] float32, indices [nq, k] int64), best first.

    flat is exact. With rescore_k = K' the index proposes max(K', k) candidates and exact cosine ranks them;
    without it the index's own (approximate, for PQ) scores rank them. k is clamped to the gallery size."""
    q = _features(query_feats, "query_feats")
    k = min(int(k), len(gallery))
    index = open_index(gallery, spec, folder)
    if q.shape[1] != index.d:
        raise ValueError(f"query features have dim {q.shape[1]} but the gallery index has dim {index.d}")
    set_nprobe(index, nprobe)
    want = min(max(int(rescore_k or 0), k), index.ntotal)
    if isinstance(index, faiss.IndexHNSWFlat):
        index.hnsw.efSearch = max(64, 2 * want)
    scores, indices = index.search(q, want)
    if not rescore_k:
        return scores[:, :k].astype(np.float32, copy=False), indices[:, :k].astype(np.int64, copy=False)
    return rescore(q, gallery, indices.astype(np.int64, copy=False), k)
