"""Retrieval metrics with the official University-1652 semantics, and nearest-neighbour search with faiss.

The official evaluator (evaluate_gpu.py of the University-1652 baseline), per query:
- score = gallery_features @ query_feature (L2-normalised features), ranked by descending score;
- gallery label -1 is junk and is removed before ranking; good matches: gallery label == query label;
- CMC is 1 from the position of the first good match onwards and is averaged over all queries;
  R@k = CMC[k-1];
- AP by the trapezoid rule over the good matches: one good match at 1-based rank r gives AP = 1 if r == 1
  else 1/(2r) (AP is not MRR);
- a query whose building is not in the gallery gets CMC = -1 from compute_mAP and is skipped when summing,
  yet the sums are divided by the number of all queries: it counts as CMC all 0 and AP 0. We do the same and
  report how many such queries there were (`n_query_no_match`);
- "Recall@top1%" is CMC[round(0.01 * Ng)] with Ng the gallery length (an off-by-one kept as published,
  reported as 'R@top1%').

Here the same numbers come from whole-matrix numpy operations instead of a loop over queries. Ties: the official
argsort(score)[::-1] leaves the order of equal scores unspecified; we put the lower gallery index first,
everywhere, so a ranking is reproducible.

Protocols: "official" keeps every gallery image (for University-1652 all 951, the 250 distractor buildings
included). "distractors_dropped" is the easier protocol of popular forks (gallery images whose building has no
query are treated as junk); it is only ever reported under that name.
"""
from __future__ import annotations

from itertools import repeat
from typing import Any, Sequence

import faiss
import numpy as np

PROTOCOLS = ("official", "distractors_dropped")
RECALL_KS = (1, 5, 10)
RECALLS = tuple(f"R@{k}" for k in RECALL_KS)  # the recall columns, as the paper prints them
METRICS = (*RECALLS, "AP")  # the headline numbers of every metrics dict (tables, logs, results rows)
_JUNK = -2       # gallery code of a junk image (never a good match, removed before ranking)
_UNKNOWN = -1    # query code of a query whose building is unknown or absent from the gallery
_BLOCK = 256     # query rows scored at a time: 256 x 951 scores (~1 MB) stay in the CPU cache
_COLS = 1 << 16  # gallery images scored at a time: a 256 x 65,536 block of scores is 64 MB


def _features(x, name: str) -> np.ndarray:
    """Contiguous float32 [n, d], finite and L2-normalised (one pass: a non-finite value makes its norm non-finite)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D array [n, dim] of features, got shape {x.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    bad = ~(np.abs(norms - 1.0) <= 1e-3)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: expected finite, L2-normalised rows; row {i} has norm {norms[i]:.4g} "
                         f"({int(bad.sum())} bad rows). Normalise with x / ||x|| (embed.extract_features does).")
    return x


def _check_pair(q: np.ndarray, g: np.ndarray) -> None:
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query features have dim {q.shape[1]} but gallery features have dim {g.shape[1]}")


# --- search -------------------------------------------------------------------------------------------------------

def build_index(gallery_feats, index: str = "flat", hnsw_m: int = 32) -> faiss.Index:
    """An inner-product faiss index over the gallery: "flat" is exact; "hnsw" is approximate, for millions of images."""
    g = _features(gallery_feats, "gallery_feats")
    if index == "flat":
        idx = faiss.IndexFlatIP(g.shape[1])
    elif index == "hnsw":
        idx = faiss.IndexHNSWFlat(g.shape[1], hnsw_m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = 80
    else:
        raise ValueError(f"index: expected 'flat' or 'hnsw', got {index!r}")
    idx.add(g)
    return idx


def search(query_feats, gallery_feats, k: int, index: str = "flat") -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery images per query by inner product: (scores [nq, k] float32, indices [nq, k] int64), best first.

    k larger than the gallery is clamped to the gallery size. `gallery_feats` may also be a built faiss index."""
    q = _features(query_feats, "query_feats")
    idx = gallery_feats if isinstance(gallery_feats, faiss.Index) else build_index(gallery_feats, index)
    if q.shape[1] != idx.d:
        raise ValueError(f"query features have dim {q.shape[1]} but the gallery index has dim {idx.d}")
    if k < 1:
        raise ValueError(f"k: expected >= 1, got {k}")
    k = min(int(k), idx.ntotal)
    if isinstance(idx, faiss.IndexHNSWFlat):
        idx.hnsw.efSearch = max(64, 2 * k)
    scores, indices = idx.search(q, k)
    return scores.astype(np.float32, copy=False), indices.astype(np.int64, copy=False)


# --- full rankings ------------------------------------------------------------------------------------------------

def rank_scores(scores) -> np.ndarray:
    """Every gallery index per query, best first, equal scores by lower gallery index: int64 [nq, ng].

    One sort of 64-bit keys (score bits above, gallery index below) is a stable descending argsort in half the
    time of numpy's stable argsort."""
    s = np.asarray(scores, dtype=np.float32) + np.float32(0)  # + 0 turns -0.0 into 0.0, so they tie
    if s.ndim != 2:
        raise ValueError(f"scores: expected a 2-D array [n_query, n_gallery], got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores: contains NaN or infinity")
    bits = s.view(np.uint32).astype(np.uint64)
    negative = (bits >> np.uint64(31)).astype(bool)
    ascending = np.where(negative, bits ^ np.uint64(0xFFFFFFFF), bits | np.uint64(0x80000000))
    keys = ((np.uint64(0xFFFFFFFF) - ascending) << np.uint64(32)) | np.arange(s.shape[1], dtype=np.uint64)
    keys.sort(axis=1)
    return (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)


def similarity(query_feats, gallery_feats) -> np.ndarray:
    """Cosine similarity [nq, ng] of L2-normalised features."""
    q, g = _features(query_feats, "query_feats"), _features(gallery_feats, "gallery_feats")
    _check_pair(q, g)
    return q @ g.T


def full_ranking(query_feats, gallery_feats) -> np.ndarray:
    """Every gallery index per query, best first (ties by gallery index): int64 [nq, ng]."""
    return rank_scores(similarity(query_feats, gallery_feats))


# --- ids ----------------------------------------------------------------------------------------------------------

def _encode_ids(query_ids: Sequence, gallery_ids: Sequence, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes: gallery junk (None or -1) -> _JUNK; a query whose building has no gallery image -> _UNKNOWN.

    Ids compare as strings, so building '0001' and 1 are different buildings."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
    q = [None if v is None else str(v) for v in query_ids]
    g = [None if v is None else str(v) for v in gallery_ids]
    if protocol == "distractors_dropped":
        asked = set(q)
        g = [v if v in asked else None for v in g]
    vocab = {v: i for i, v in enumerate(sorted(set(g) - {None, "-1"}))}
    q_code = np.fromiter(map(vocab.get, q, repeat(_UNKNOWN)), np.int64, len(q))
    g_code = np.fromiter(map(vocab.get, g, repeat(_JUNK)), np.int64, len(g))
    if not vocab:
        raise ValueError(f"gallery_ids: no gallery image is left to rank ({len(g)} ids, all junk "
                         f"(None / -1){' or distractors' if protocol == 'distractors_dropped' else ''})")
    return q_code, g_code


def _good_columns(q_code: np.ndarray, g_code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gallery columns of each query's good matches, padded: (cols [nq, G] ascending, n_good [nq])."""
    order = np.argsort(g_code, kind="stable")
    sorted_codes = g_code[order]
    start = np.searchsorted(sorted_codes, q_code, "left")
    n_good = np.searchsorted(sorted_codes, q_code, "right") - start
    n_good[q_code < 0] = 0
    width = max(int(n_good.max(initial=0)), 1)
    slot = np.arange(width)
    cols = order[np.minimum(start[:, None] + slot, len(order) - 1)]
    return np.where(slot < n_good[:, None], cols, -1), n_good


# --- metrics ------------------------------------------------------------------------------------------------------

def _summarise(pos: np.ndarray, n_good: np.ndarray, n_gallery_total: int, n_competing: int, protocol: str) -> dict:
    """CMC and AP from the 0-based positions (among non-junk images) of each query's good matches.

    pos: [nq, G] ascending per row, padded with anything where slot >= n_good."""
    nq, width = pos.shape
    has = n_good > 0
    valid = np.arange(width)[None, :] < n_good[:, None]
    first = np.where(has, pos[:, 0], -1)
    cmc = np.cumsum(np.bincount(first[has], minlength=n_gallery_total)[:n_gallery_total]) / nq * 100.0
    # trapezoid rule of compute_mAP: the i-th good match (0-based) at position r adds
    # (1/n_good) * (precision before it + precision at it) / 2, with precision before = 1 at r == 0
    hit = np.arange(width, dtype=np.float64)[None, :]
    r = np.where(valid, pos, 0).astype(np.float64)
    precision = (hit + 1) / (r + 1)
    old_precision = np.where(r > 0, hit / np.maximum(r, 1), 1.0)
    ap = np.where(valid, (old_precision + precision) / 2, 0.0).sum(1) / np.maximum(n_good, 1)
    top1pct = min(int(round(0.01 * n_gallery_total)), n_gallery_total - 1)
    out: dict[str, Any] = {f"R@{k}": float(cmc[min(k, n_gallery_total) - 1]) for k in RECALL_KS}
    out.update({
        "AP": float(ap.mean() * 100.0),
        "R@top1%": float(cmc[top1pct]),
        "n_query": int(nq),
        "n_gallery": int(n_competing),
        "n_query_no_match": int((~has).sum()),
        "protocol": protocol,
        "cmc": cmc,
        "ap": ap * 100.0,
        "first_match_rank": np.where(has, first + 1, 0).astype(np.int64),
    })
    return out


def evaluate_ranking(ranking, query_ids: Sequence, gallery_ids: Sequence, protocol: str = "official") -> dict:
    """Metrics of full rankings (int [nq, ng], gallery indices best first) with the official semantics.

    Returns R@1, R@5, R@10, AP, R@top1% (percentages), n_query, n_gallery (images that compete after junk
    removal), n_query_no_match, protocol, and per query arrays: cmc [ng] (%), ap [nq] (%), first_match_rank
    [nq] (1-based among non-junk images, 0 where the query has no good match)."""
    ranking = np.asarray(ranking)
    q_code, g_code = _encode_ids(query_ids, gallery_ids, protocol)
    nq, ng = len(q_code), len(g_code)
    if ranking.shape != (nq, ng) or not np.issubdtype(ranking.dtype, np.integer):
        raise ValueError(f"ranking: expected integer gallery indices of shape ({nq}, {ng}) = (queries, gallery), "
                         f"got {ranking.dtype} {ranking.shape}; rankings must hold every gallery image")
    if ng and (ranking.min() < 0 or ranking.max() >= ng):
        raise ValueError(f"ranking: gallery indices must lie in [0, {ng}), got [{ranking.min()}, {ranking.max()}]")
    _, n_good = _good_columns(q_code, g_code)
    ranked = g_code[ranking]
    good = ranked == q_code[:, None]  # junk (-2) and unknown queries (-1) never match
    found = good.sum(1)
    if not np.array_equal(found, n_good):
        i = int(np.flatnonzero(found != n_good)[0])
        raise ValueError(f"ranking: row {i} holds {found[i]} good matches where the gallery has {n_good[i]}; "
                         "each row must be a permutation of all gallery indices")
    rows, cols = np.nonzero(good)  # row-major: per query, good matches best first
    junk = ranked == _JUNK
    positions = cols if not junk.any() else (np.cumsum(~junk, axis=1) - 1)[rows, cols]
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(n_good) - n_good, n_good)
    pos = np.zeros((nq, max(int(n_good.max(initial=0)), 1)), dtype=np.int64)
    pos[rows, slot] = positions
    return _summarise(pos, n_good, ng, int((g_code != _JUNK).sum()), protocol)


def evaluate_scores(scores, query_ids: Sequence, gallery_ids: Sequence, protocol: str = "official") -> dict:
    """Metrics of a score matrix [nq, ng] (higher = better), equal to evaluate_ranking(rank_scores(scores), ...).

    No sorting: the position of a good match is the number of non-junk images that beat it (a higher score, or an
    equal score and a lower index), counted for a block of queries at once. NaN is refused; +-inf are scores like
    any other."""
    s = np.asarray(scores, dtype=np.float32)
    if s.ndim != 2 or s.shape != (len(query_ids), len(gallery_ids)):
        raise ValueError(f"scores: expected shape ({len(query_ids)}, {len(gallery_ids)}) = (queries, gallery), "
                         f"got {s.shape}")
    q_code, g_code = _encode_ids(query_ids, gallery_ids, protocol)
    kept = np.flatnonzero(g_code != _JUNK)  # junk never competes: columns then index the kept images
    whole = len(kept) == len(g_code)
    return _evaluate_blocks(lambda c0, c1: (s[:, c0:c1] if whole else s[:, kept[c0:c1]]),
                            lambda block, r0, r1: block[r0:r1], q_code, g_code, protocol)


def check_gallery(gallery_feats, name: str = "gallery_feats", rows: int = 1 << 16) -> None:
    """The checks of _features (2-D, non-empty, finite, L2-normalised rows) on a gallery of any float dtype, a
    memory-mapped one included, a block of rows at a time: a million-tile gallery is never copied whole.
    float16 rows are held to the norm their rounding allows (2e-3)."""
    g = gallery_feats
    if g.ndim != 2 or g.shape[0] == 0 or g.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D array [n, dim] of features, got shape {g.shape}")
    tol = 2e-3 if g.dtype == np.float16 else 1e-3
    for r0 in range(0, len(g), rows):
        x = np.asarray(g[r0:r0 + rows], dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
        bad = ~(np.abs(norms - 1.0) <= tol)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name}: expected finite, L2-normalised rows; row {r0 + i} has norm {norms[i]:.4g}. "
                             "Normalise with x / ||x|| (embed.extract_features does).")


def evaluate(query_feats, gallery_feats, query_ids: Sequence, gallery_ids: Sequence,
             protocol: str = "official", gallery_block: int = _COLS) -> dict:
    """Official metrics of street queries against the gallery: the numbers evaluate_ranking(full_ranking(...))
    gives, computed without sorting (see evaluate_scores) and blockwise: `gallery_block` gallery rows at a time
    (float32 copies of them), so neither the score matrix nor a float32 copy of the gallery is ever held whole.
    `gallery_feats` may be float16 or float32, in memory or memory-mapped (np.load(..., mmap_mode="r"))."""
    q = _features(query_feats, "query_feats")
    g = gallery_feats if isinstance(gallery_feats, np.ndarray) else np.asarray(gallery_feats, np.float32)
    check_gallery(g)
    _check_pair(q, g)
    if len(q) != len(query_ids) or len(g) != len(gallery_ids):
        raise ValueError(f"{len(q)} query features for {len(query_ids)} query ids, "
                         f"{len(g)} gallery features for {len(gallery_ids)} gallery ids: they must match")
    q_code, g_code = _encode_ids(query_ids, gallery_ids, protocol)
    kept = np.flatnonzero(g_code != _JUNK)
    whole = len(kept) == len(g_code)

    def gallery_scores(c0, c1):
        rows = g[c0:c1] if whole else g[kept[c0:c1]]
        return np.ascontiguousarray(rows, dtype=np.float32)

    return _evaluate_blocks(gallery_scores, lambda gt, r0, r1: q[r0:r1] @ gt.T, q_code, g_code, protocol,
                            gallery_block)


def _evaluate_blocks(gallery_block, score_rows, q_code: np.ndarray, g_code: np.ndarray, protocol: str,
                     cols: int = _COLS) -> dict:
    """Positions of every good match, from blocks of (query rows x kept gallery columns).

    gallery_block(c0, c1) prepares kept gallery images c0..c1 (loaded once per pass); score_rows(block, r0, r1)
    gives queries r0..r1's scores against it. A good match's position is the number of kept images that beat
    it, summed over column blocks. Its own score is read first from the very product that then counts its block,
    so a tie is a tie bit for bit: the blocks holding good matches are scored twice (one block of 16 at a million
    tiles with the distractors after the test gallery), the others once."""
    n_total = len(g_code)
    keep = g_code != _JUNK
    g_code = g_code[keep]
    ng = len(g_code)
    good, n_good = _good_columns(q_code, g_code)
    live = good >= 0
    width = max(1, min(int(cols), ng))
    starts = range(0, ng, width)
    target = np.full(good.shape, np.nan, dtype=np.float32)
    block_of = np.where(live, good // width, -1)
    for b in np.unique(block_of[live]):
        c0 = int(b) * width
        gb = gallery_block(c0, min(c0 + width, ng))
        for r0 in range(0, len(q_code), _BLOCK):
            r1 = min(r0 + _BLOCK, len(q_code))
            rr, jj = np.nonzero(block_of[r0:r1] == b)
            if len(rr):
                target[r0 + rr, jj] = score_rows(gb, r0, r1)[rr, good[r0 + rr, jj] - c0]
    beaten = np.zeros(good.shape, dtype=np.int64)
    mask = np.empty((_BLOCK, width), dtype=bool)
    # counting a row of booleans into uint16 is ~2x faster than into int64, and cannot overflow below 65,535 columns
    count = np.uint16 if width < np.iinfo(np.uint16).max else np.int64
    for c0 in starts:
        c1 = min(c0 + width, ng)
        gb = gallery_block(c0, c1)
        for r0 in range(0, len(q_code), _BLOCK):
            r1 = min(r0 + _BLOCK, len(q_code))
            block = score_rows(gb, r0, r1)
            for j in range(good.shape[1]):  # over good-match slots (1 for street -> satellite), not over queries
                rows = np.flatnonzero(live[r0:r1, j])
                if not len(rows):
                    continue
                sub = block if len(rows) == len(block) else block[rows]
                c = good[r0 + rows, j]
                t = target[r0 + rows, j][:, None]
                inside = ((c >= c0) & (c < c1)).astype(np.int64)  # the good match itself is in this block
                m = mask[:len(rows), :c1 - c0]
                beaten_by = np.greater(sub, t, out=m).view(np.uint8).sum(1, dtype=count).astype(np.int64)
                # every other image is above or below the target, unless it ties with it or is NaN: rare, so one
                # count over the whole block tells, and only rows with a tie or NaN pay for an equality pass
                n_below = np.count_nonzero(np.less(sub, t, out=m))
                if int(beaten_by.sum()) + n_below != len(rows) * sub.shape[1] - int(inside.sum()):
                    below = m.view(np.uint8).sum(1, dtype=count).astype(np.int64)
                    odd = np.flatnonzero(beaten_by + below != sub.shape[1] - inside)
                    equal = np.equal(sub[odd], t[odd])
                    if (beaten_by[odd] + below[odd] + equal.sum(1) != sub.shape[1]).any():
                        raise ValueError("scores: contains NaN")
                    lower = np.arange(c0, c1)[None, :] < c[odd, None]  # ties rank by lower gallery index
                    beaten_by[odd] += (equal & lower).sum(1)
                beaten[r0 + rows, j] += beaten_by
    pos = np.where(live, beaten, np.iinfo(np.int64).max)
    pos.sort(axis=1)  # padding slots hold the largest int64, so they sort last
    return _summarise(pos, n_good, n_total, int(keep.sum()), protocol)


def scalars(metrics: dict) -> dict:
    """The JSON-friendly part of a metrics dict (drops the per-query arrays)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, np.ndarray)}


def evaluate_loop(scores_of, query_ids, gallery_ids, protocol: str = "official"):
    """VICI's evaluator (src/eval.py, after the official evaluate_gpu.py), one query at a time: the reference the
    vectorised metric is tested against and the baseline its benchmark is timed against. Integer labels (-1 =
    junk), per query a descending argsort, good and junk indices by np.argwhere, junk removed with np.isin, the
    CMC row as a torch IntTensor added to a running total. One change: a stable argsort, so that ties rank the
    lower gallery index first as everywhere in this module. `scores_of(i)` gives query i's gallery scores
    (numpy or CPU torch). Returns (cmc %, AP %)."""
    import torch

    vocab: dict = {}
    gl = np.array([-1 if g is None or str(g) == "-1" else vocab.setdefault(str(g), len(vocab)) for g in gallery_ids])
    ql = np.array([vocab.get(str(q), -2) for q in query_ids])  # -2: no gallery image, never a match
    if protocol == "distractors_dropped":
        gl = np.where(np.isin(gl, ql), gl, -1)
    cmc_sum, ap = torch.IntTensor(len(gl)).zero_(), 0.0
    for i in range(len(ql)):
        index = np.argsort(-np.asarray(scores_of(i), dtype=np.float32), kind="stable")
        good = np.argwhere(gl == ql[i]).flatten()
        junk = np.argwhere(gl == -1).flatten()
        if good.size == 0:
            continue
        index = index[np.isin(index, junk, invert=True)]
        rows = np.argwhere(np.isin(index, good)).flatten()
        cmc = torch.IntTensor(len(gl)).zero_()
        cmc[rows[0]:] = 1
        cmc_sum = cmc_sum + cmc
        for j, r in enumerate(rows):
            ap += ((j / r if r else 1.0) + (j + 1) / (r + 1)) / 2 / len(rows)
    return cmc_sum.numpy() / len(ql) * 100, ap / len(ql) * 100
