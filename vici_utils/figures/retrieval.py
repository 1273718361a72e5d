"""Figures of notebook 03: where the true match lands, what the model retrieves, and what the embedding looks like."""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter

from ..u1652 import load_image
from . import framed, legend_below, stamp

GOOD, QUERY, OTHER = "#1a9850", "#2166ac", "0.75"


@lru_cache(maxsize=512)
def _thumb(path, size: int = 112) -> np.ndarray:
    """An image as a thumbnail of at most `size` px, cached: the grids show each gallery tile many times."""
    img = load_image(path)
    img.thumbnail((size, size))
    return np.asarray(img)


def rank_bin_width(n_gallery: int, max_bars: int = 100) -> int:
    """Ranks per bar of the rank histogram: the smallest of 1, 2, 5, 10, 20, 50, ... that gives at most
    max_bars bars. Bars are then equally wide and, up to a width of 10, rank 10 ends a bar."""
    scale = 1
    while True:
        for f in (1, 2, 5):
            if -(-n_gallery // (f * scale)) <= max_bars:
                return f * scale
        scale *= 10


def rank_histogram(result, cfg):
    """Left: the share of queries whose true tile lands at each rank, in bars of equal width, against the
    share a random ranking would give. Right: the CMC curve, R@k against k."""
    m = result.metrics
    ranks = m["first_match_rank"][m["first_match_rank"] > 0]
    ng = m["n_gallery"]
    w = rank_bin_width(ng)
    edges = np.arange(0.5, ng + w, w)   # every bar w ranks wide
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax.hist(ranks, bins=edges, weights=np.full(len(ranks), 100 / max(len(ranks), 1)), color=QUERY, alpha=0.85)
    ax.axhline(100 * w / ng, color="0.4", ls=":", lw=1.2, label=f"random ranking ({100 * w / ng:.2g} % a bar)")
    ax.set_xlim(0, edges[-1])
    if ng > 10:
        beyond = 100 * np.mean(ranks > 10) if len(ranks) else 0.0
        ax.axvline(10.5, color="k", ls="--", lw=1,
                   label=f"right of it: {beyond:.0f} % of queries,\nout of a re-ranker's reach (top 10)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)   # headroom for the legend
    ax.set_xlabel(f"rank of the true satellite tile (1 = first; each bar {w} rank{'s' if w > 1 else ''})")
    ax.set_ylabel("share of queries (%)")
    ax.set_title(f"rank of the true match ({len(ranks)} queries, median {np.median(ranks):.0f} of {ng})", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)

    k = np.arange(1, ng + 1)
    bx.plot(k, m["cmc"][:ng], color=QUERY, label="this model")
    bx.plot(k, 100 * k / ng, color="0.5", ls=":", label="chance")
    for kk in (1, 5, 10):
        if kk <= ng:
            bx.plot(kk, m["cmc"][kk - 1], "o", color=GOOD)
            bx.annotate(f"R@{kk} = {m['cmc'][kk - 1]:.1f}", (kk, m["cmc"][kk - 1]), xytext=(6, -12),
                        textcoords="offset points", fontsize=8)
    bx.set_xscale("log")
    bx.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))   # 1, 10, 100 rather than 10^k
    bx.set_ylim(0, 101)
    bx.set_xlabel("k")
    bx.set_ylabel("R@k (%)")
    bx.set_title("CMC: queries whose true tile is in the top k", fontsize=10)
    bx.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return stamp(fig, cfg, model=result.model_description)


def _true_tile(result, qi: int):
    """(gallery index, score) of the query's own tile, or None when the gallery has none."""
    b = result.test.queries[qi].building
    for gi, g in enumerate(result.test.gallery):
        if g.building == b:
            return gi, float(result.scores[qi, gi])
    return None


def retrieval_grid(result, cfg, queries: Sequence[int], k: int = 10, title: Optional[str] = None):
    """One row per query: the street photo, then its top-k tiles best first, the true tile framed in green.
    When the true tile ranks below k it is shown after the row, with its rank, so that every row shows it."""
    test, m = result.test, result.metrics
    k = min(k, result.topk_indices.shape[1])
    ranks = [int(m["first_match_rank"][qi]) for qi in queries]
    extra = any(r > k or r <= 0 for r in ranks)
    ncols = k + 1 + (2 if extra else 0)   # query, top k, (a gap, the true tile)
    ratios = [1] * (k + 1) + ([0.25, 1] if extra else [])
    fig, axes = plt.subplots(len(queries), ncols, figsize=(1.25 * (k + 1) + (1.55 if extra else 0),
                                                           1.75 * len(queries) + 0.9),
                             squeeze=False, gridspec_kw={"width_ratios": ratios, "wspace": 0.08, "hspace": 0.55})
    for row, qi, rank in zip(axes, queries, ranks):
        q = test.queries[qi]
        framed(row[0], _thumb(q.path), f"query {q.building}\ntrue tile at rank {rank}", QUERY, 3)
        for j, (ax, gi) in enumerate(zip(row[1:k + 1], result.topk_indices[qi][:k]), start=1):
            g = test.gallery[gi]
            good = g.building == q.building
            caption = f"{j}. {g.building}{' ✓' if good else ''}\n{result.topk_scores[qi][j - 1]:.3f}"
            framed(ax, _thumb(g.path), caption, GOOD if good else OTHER, 3 if good else 0.8)
        if extra:
            row[k + 1].axis("off")
            truth = _true_tile(result, qi) if rank > k else None
            if truth is not None:
                framed(row[k + 2], _thumb(test.gallery[truth[0]].path), f"true tile: rank {rank}\n{truth[1]:.3f}",
                       GOOD, 3)
            else:
                row[k + 2].axis("off")
    n = len(queries)
    sample = (f"these {n}: {sum(r == 1 for r in ranks)} at rank 1, {sum(0 < r <= k for r in ranks)} in the top {k}; "
              f"all {m['n_query']} queries: R@1 {m['R@1']:.1f} %, R@{k} {m['cmc'][k - 1]:.1f} %")
    fig.suptitle((title or f"street query and its top-{k} satellite tiles (green: the true tile"
                  + (f"; right: the true tile when it ranks below {k})" if extra else ")")) + "\n" + sample,
                 fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.95 / fig.get_figheight(), bottom=0.01)
    return stamp(fig, cfg, model=result.model_description)


def worst_failures(result, cfg, n: int = 6, k: int = 5):
    """The queries whose true tile is ranked lowest, one per building: the query, the tile it should have found,
    and its top k instead."""
    test, m = result.test, result.metrics
    order, seen = [], set()
    for qi in np.lexsort((m["ap"], -m["first_match_rank"])):
        b = test.queries[qi].building
        if b not in seen:
            seen.add(b)
            order.append(qi)
        if len(order) == n:
            break
    k = min(k, result.topk_indices.shape[1])
    ratios = [1, 1, 0.2] + [1] * k
    fig, axes = plt.subplots(len(order), k + 3, figsize=(1.35 * (k + 2) + 0.3, 1.8 * len(order) + 0.9),
                             squeeze=False, gridspec_kw={"width_ratios": ratios, "wspace": 0.08, "hspace": 0.55})
    for row, qi in zip(axes, order):
        q = test.queries[qi]
        framed(row[0], _thumb(q.path), f"query {q.building}", QUERY, 3)
        truth = _true_tile(result, qi)
        if truth is not None:
            framed(row[1], _thumb(test.gallery[truth[0]].path),
                   f"true tile: rank {m['first_match_rank'][qi]}\n{truth[1]:.3f}", GOOD, 3)
        else:
            row[1].axis("off")
        row[2].axis("off")
        for j, (ax, gi) in enumerate(zip(row[3:], result.topk_indices[qi][:k]), start=1):
            g = test.gallery[gi]
            framed(ax, _thumb(g.path), f"{j}. {g.building}\n{result.topk_scores[qi][j - 1]:.3f}", OTHER, 0.8)
    fig.suptitle(f"the {len(order)} worst queries (one per building): the query, the tile it should have found "
                 f"(green),\nand the {k} tiles it ranked first instead", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.85 / fig.get_figheight(), bottom=0.01)
    return stamp(fig, cfg, model=result.model_description)


def query_tile_similarities(result, cfg, max_buildings: int = 30, seed: int = 0):
    """Cosine similarity of street queries (rows, grouped by building) to their buildings' tiles (columns).
    Each building's true cells (its queries' rows in its tile's column) are boxed; a white dot marks each row's
    maximum. A working model puts every dot in a box."""
    test = result.test
    asked = sorted(set(test.query_ids))
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(asked, min(max_buildings, len(asked)), replace=False))
    cols = [i for b in chosen for i, g in enumerate(test.gallery) if g.building == b]
    rows = [i for b in chosen for i, q in enumerate(test.queries) if q.building == b]
    sub = result.scores[np.ix_(rows, cols)]
    fig, ax = plt.subplots(figsize=(8.5, 6.5))
    im = ax.imshow(sub, aspect="auto", cmap="magma", interpolation="nearest")
    col_of = {test.gallery[c].building: j for j, c in enumerate(cols)}
    row_building = [test.queries[r].building for r in rows]
    start = 0
    for i in range(1, len(rows) + 1):   # one box per building: its block of rows in its own column
        if i == len(rows) or row_building[i] != row_building[start]:
            if row_building[start] in col_of:
                ax.add_patch(plt.Rectangle((col_of[row_building[start]] - 0.5, start - 0.5), 1, i - start,
                                           fill=False, ec="cyan", lw=1.4))
            start = i
    best = sub.argmax(1)
    hits = sum(col_of.get(b) == j for b, j in zip(row_building, best))
    ax.plot(best, np.arange(len(rows)), "o", ms=3, color="white", mec="k", mew=0.4)
    ax.set_xlabel(f"satellite tiles of {len(chosen)} buildings")
    ax.set_ylabel(f"their {len(rows)} street queries")
    ax.set_title(f"similarity of street queries to the tiles of {len(chosen)} buildings (a sub-gallery of "
                 f"{len(cols)} tiles):\namong these tiles the row maximum is the true tile for {hits} of {len(rows)} rows",
                 fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, fill=False, ec="cyan", lw=1.4),
               plt.Line2D([], [], ls="none", marker="o", ms=4, color="white", mec="k", mew=0.4)]
    fig.colorbar(im, ax=ax, label="cosine similarity")
    legend_below(fig, handles, ["true pairs (a building's queries x its tile)", "row maximum"], ncol=2)
    return stamp(fig, cfg, model=result.model_description)




def pca_2d(*blocks: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Project the feature blocks together onto their first two principal axes; also the share of variance each
    axis explains."""
    x = np.concatenate(blocks).astype(np.float64)
    x -= x.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    y = x @ vt[:2].T
    return np.split(y, np.cumsum([len(b) for b in blocks])[:-1]), s[:2] ** 2 / (s ** 2).sum()


def embedding_projection(result, cfg, n_highlight: int = 8, seed: int = 0):
    """2-D PCA of street and satellite embeddings; a few buildings in colour, each street photo joined to its
    tile. Two separate towers often leave a gap between the views: what matters is the ranking, not the gap."""
    test = result.test
    (qs, gs), explained = pca_2d(result.query_features, result.gallery_features)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    ax.scatter(*qs.T, s=6, c="0.78", label="street queries (all)")
    ax.scatter(*gs.T, s=18, c="0.55", marker="^", label="satellite tiles (all)")
    asked = sorted(set(test.query_ids))
    rng = np.random.default_rng(seed)
    palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]   # tab10's grey would vanish
    gallery_of = {g.building: i for i, g in enumerate(test.gallery)}
    highlight = sorted(rng.choice(asked, min(n_highlight, len(asked)), replace=False))
    for c, b in enumerate(highlight):
        qi = [i for i, q in enumerate(test.queries) if q.building == b]
        gi = gallery_of.get(b)
        ax.scatter(*qs[qi].T, s=22, color=palette[c % len(palette)])
        if gi is not None:
            ax.scatter(*gs[gi], s=140, color=palette[c % len(palette)], marker="*", edgecolors="k", lw=0.6)
            for i in qi:
                ax.plot(*np.stack([qs[i], gs[gi]]).T, color=palette[c % len(palette)], lw=0.7, alpha=0.7)
    ax.set_xlabel(f"PC 1 ({explained[0] * 100:.0f} % of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1] * 100:.0f} % of variance)")
    ax.scatter([], [], s=22, color=palette[0], label="a coloured building's street photos")
    ax.scatter([], [], s=140, color=palette[0], marker="*", edgecolors="k", lw=0.6, label="its satellite tile")
    ax.set_title(f"embeddings in 2-D (PCA): grey, every query and tile; {len(highlight)} buildings in colour",
                 fontsize=10)
    fig.tight_layout()
    legend_below(fig, ncol=2)
    return stamp(fig, cfg, model=result.model_description)
