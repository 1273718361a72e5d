"""The test gallery past University-1652's tiles: folders of satellite tiles that join it as distractors.

University-160k is University-1652's test set with 167,486 more satellite tiles (its gallery_satellite_160k
folder, names only, no building labels); any folder of tiles works the same way. Extra tiles carry the building
id EXTRA, which no query asks for: under the official protocol they compete as distractors, under
distractors_dropped they are junk. Answer files name a tile by its file stem, so a stem may occur once in the
whole gallery. On the embedded world, world_extra_distractors renders that many satellite-only tiles
(world/extra.py) and they join first, before the extra_gallery folders.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .u1652 import DatasetError, ImageItem, RetrievalSet, _is_image

EXTRA = "extra"   # the building id of every extra tile


def extra_items(folders: Sequence[Path | str], taken: Sequence[str] = (), key: str = "extra_gallery") -> list[ImageItem]:
    """The tiles of `folders` (searched recursively, sorted; hidden files skipped) as gallery items, validated:
    each folder exists and holds images, and no tile's name (file stem) repeats one in `taken` or another's."""
    seen = set(taken)
    items = []
    for folder in folders:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"{key}: {folder} is not a folder (expected a folder of satellite tiles, "
                               "e.g. University-160k's gallery_satellite_160k)")
        tiles = sorted(p for p in folder.rglob("*") if _is_image(p) and not any(
            part.startswith(".") for part in p.relative_to(folder).parts))
        if not tiles:
            raise DatasetError(f"{key}: {folder} holds no .jpg, .jpeg or .png tiles")
        for p in tiles:
            if p.stem in seen:
                raise DatasetError(f"{key}: tile {p} is named {p.stem!r} like another gallery tile; answer files "
                                   "name tiles by file stem, so each stem may occur once in the gallery")
            seen.add(p.stem)
            items.append(ImageItem(p, EXTRA, p.stem))
    return items


def with_extra_tiles(cfg, test: RetrievalSet, progress: bool = True) -> RetrievalSet:
    """The run's test set: the queries against the gallery plus the world's rendered tiles and extra_gallery's."""
    extra = []
    if cfg.is_embedded and cfg.world_extra_distractors:
        from .world import WorldSpec
        from .world.extra import extra_tiles

        extra = [ImageItem(p, EXTRA, p.stem)
                 for p in extra_tiles(WorldSpec.from_params(cfg), cfg.world_extra_distractors, show=progress)]
    if not extra and not cfg.extra_gallery:
        return test
    extra += extra_items(cfg.extra_gallery, [g.name for g in test.gallery] + [e.name for e in extra])
    return RetrievalSet(test.queries, test.gallery + extra)


# --- accuracy against gallery size --------------------------------------------------------------------------------

def compressed_spec(n: int, dim: int) -> str:
    """A compressed index for a gallery of n tiles: about sqrt(n) inverted lists (39 training tiles each at least,
    faiss's own minimum), PQ of 64 bytes where 64 divides dim (else the largest divisor below 64), with 4-bit
    codes (16 centroids: 624 training tiles) below 9,984 tiles, the minimum of 8-bit codes (256 centroids).
    Below 624 tiles there is too little to train a quantiser on: "Flat" (exact)."""
    if n < 16 * 39:
        return "Flat"
    lists = int(2 ** np.clip(np.round(np.log2(np.sqrt(n))), 2, 12))
    lists = max(1, min(lists, n // 39))
    m = 64 if dim % 64 == 0 else max(d for d in range(1, min(64, dim) + 1) if dim % d == 0)
    return f"IVF{lists},PQ{m}{'x4' if n < 256 * 39 else ''}"


def top_list_metrics(indices: np.ndarray, query_ids, gallery_ids) -> dict:
    """R@1, R@10 and AP (%) from each query's top list alone (best first, -1 = none): a good match beyond the list
    adds nothing to AP, so AP is a lower bound of the whole ranking's (equal when every good match is listed)."""
    from .metrics import _JUNK, _encode_ids

    q_code, g_code = _encode_ids(query_ids, gallery_ids, "official")
    n_good = np.array([(g_code == c).sum() if c >= 0 else 0 for c in q_code])
    codes = np.where(indices >= 0, g_code[np.maximum(indices, 0)], _JUNK)
    r1 = r10 = ap = 0.0
    for row, c, ng in zip(codes, q_code, n_good):
        row = row[row != _JUNK]                 # junk is removed before ranking
        pos = np.flatnonzero(row == c) if c >= 0 else np.array([], int)
        if len(pos):
            r1 += pos[0] < 1
            r10 += pos[0] < 10
            ap += sum(((i / r if r else 1.0) + (i + 1) / (r + 1)) / 2 for i, r in enumerate(pos)) / ng
    n = len(q_code)
    return {"R@1": 100 * r1 / n, "R@10": 100 * r10 / n, "AP": 100 * ap / n}


def size_curve(query_feats, gallery_feats, query_ids, gallery_ids, sizes, spec: str | None = None,
               nprobe: int = 32, rescore_k: int | None = 100):
    """R@1, R@10 and AP against gallery size: the first `size` gallery tiles (the test gallery, then the extra
    tiles in order), by exact search (the official metric over the whole ranking) and by a compressed index with
    re-scoring (its top 10). Rows: size, search, index, R@1, R@10, AP, seconds."""
    import time

    import pandas as pd

    from . import search
    from .metrics import evaluate

    rows = []
    for n in sizes:
        g, gids = gallery_feats[:n], list(gallery_ids[:n])
        t = time.perf_counter()
        m = evaluate(query_feats, g, query_ids, gids)
        rows.append({"size": n, "search": "exact", "index": "flat", **{k: m[k] for k in ("R@1", "R@10", "AP")},
                     "seconds": time.perf_counter() - t})
        s = spec or compressed_spec(n, g.shape[1])
        t = time.perf_counter()
        _, idx = search.top_k(query_feats, g, 10, s, nprobe=nprobe, rescore_k=rescore_k)
        rows.append({"size": n, "search": "compressed", "index": f"{s}, nprobe {nprobe}, re-score top {rescore_k}",
                     **top_list_metrics(idx, query_ids, gids), "seconds": time.perf_counter() - t})
    return pd.DataFrame(rows)
