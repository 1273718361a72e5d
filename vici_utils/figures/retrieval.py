"""Figures of notebook 03: where the true match lands, what the model retrieves, and what the embedding looks like."""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np

from ..u1652 import load_image
from . import stamp

GOOD, QUERY, OTHER = "#1a9850", "#2166ac", "0.75"


@lru_cache(maxsize=512)
def _thumb(path: str, size: int = 112) -> np.ndarray:
    img = load_image(path)
    img.thumbnail((size, size))
    return np.asarray(img)


def _show(ax, path, colour: str, width: float, title: str = "") -> None:
    ax.imshow(_thumb(str(path)))
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_edgecolor(colour)
        side.set_linewidth(width)
    if title:
        ax.set_title(title, fontsize=7, pad=2)


def rank_histogram(result, cfg):
    """Left: how often the true tile lands at each rank. Right: the CMC curve, R@k against k."""
    m = result.metrics
    ranks = m["first_match_rank"][m["first_match_rank"] > 0]
    ng = m["n_gallery"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8))
    if ng > 60:
        edges = np.unique(np.geomspace(1, ng + 1, 40).astype(int)) - 0.5
        ax.set_xscale("log")
    else:
        edges = np.arange(1, ng + 2) - 0.5
    ax.hist(ranks, bins=edges, color=QUERY, alpha=0.85)
    if ng > 10:
        ax.axvline(10.5, color="k", ls="--", lw=1)
        ax.text(11, ax.get_ylim()[1] * 0.92, "beyond the top 10:\nout of a re-ranker's reach", fontsize=8)
    ax.set_xlabel("rank of the true satellite tile (1 = first)")
    ax.set_ylabel("queries")
    ax.set_title(f"rank of the true match ({len(ranks)} queries, median {np.median(ranks):.0f} of {ng})")

    k = np.arange(1, ng + 1)
    bx.plot(k, m["cmc"][:ng], color=QUERY, label="this model")
    bx.plot(k, 100 * k / ng, color="0.5", ls=":", label="chance")
    for kk in (1, 5, 10):
        if kk <= ng:
            bx.plot(kk, m["cmc"][kk - 1], "o", color=GOOD)
            bx.annotate(f"R@{kk} = {m['cmc'][kk - 1]:.1f}", (kk, m["cmc"][kk - 1]), xytext=(6, -12),
                        textcoords="offset points", fontsize=8)
    bx.set_xscale("log")
    bx.set_ylim(0, 101)
    bx.set_xlabel("k")
    bx.set_ylabel("R@k (%)")
    bx.set_title("CMC: queries whose true tile is in the top k")
    bx.legend(loc="lower right", fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))  # room for the stamp
    return stamp(fig, cfg, model=result.model_description)


def retrieval_grid(result, cfg, queries: Sequence[int], k: int = 10, title: Optional[str] = None):
    """One row per query: the street photo, then its top-k tiles best first; the true tile framed in green."""
    test, m = result.test, result.metrics
    k = min(k, result.topk_indices.shape[1])
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.25 * (k + 1), 1.7 * len(queries) + 0.4), squeeze=False)
    for row, qi in zip(axes, queries):
        q = test.queries[qi]
        rank = m["first_match_rank"][qi]
        _show(row[0], q.path, QUERY, 3, f"query {q.building}\ntrue tile at rank {rank}")
        for j, (ax, gi) in enumerate(zip(row[1:], result.topk_indices[qi][:k]), start=1):
            g = test.gallery[gi]
            good = g.building == q.building
            _show(ax, g.path, GOOD if good else OTHER, 3 if good else 0.8,
                  f"{j}. {g.building}{' ✓' if good else ''}\n{result.topk_scores[qi][j - 1]:.3f}")
    fig.suptitle(title or f"street query and its top-{k} satellite tiles (green: the true tile)", fontsize=10)
    fig.tight_layout()
    return stamp(fig, cfg, model=result.model_description)


def worst_failures(result, cfg, n: int = 6, k: int = 5):
    """The queries whose true tile is ranked lowest: the query, the tile it should have found, what it found."""
    test, m = result.test, result.metrics
    order = np.lexsort((m["ap"], -m["first_match_rank"]))[:n]
    gallery_of = {g.building: g for g in test.gallery}
    k = min(k, result.topk_indices.shape[1])
    fig, axes = plt.subplots(len(order), k + 2, figsize=(1.3 * (k + 2), 1.75 * len(order) + 0.4), squeeze=False)
    for row, qi in zip(axes, order):
        q = test.queries[qi]
        _show(row[0], q.path, QUERY, 3, f"query {q.building}")
        truth = gallery_of.get(q.building)
        if truth is not None:
            _show(row[1], truth.path, GOOD, 3,
                  f"true tile: rank {m['first_match_rank'][qi]}\n{result.scores[qi, test.gallery.index(truth)]:.3f}")
        else:
            row[1].axis("off")
        for j, (ax, gi) in enumerate(zip(row[2:], result.topk_indices[qi][:k]), start=1):
            g = test.gallery[gi]
            _show(ax, g.path, OTHER, 0.8, f"{j}. {g.building}\n{result.topk_scores[qi][j - 1]:.3f}")
    fig.suptitle(f"the {len(order)} worst queries: query | the tile it should find | what it ranked first",
                 fontsize=10)
    fig.tight_layout()
    return stamp(fig, cfg, model=result.model_description)


def similarity_matrix(result, cfg, max_buildings: int = 30, seed: int = 0):
    """Cosine similarity of street queries (rows, grouped by building) to their buildings' tiles (columns);
    the true pairs are marked. A working model makes the marked cells the brightest of their row."""
    test = result.test
    asked = sorted(set(test.query_ids))
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(asked, min(max_buildings, len(asked)), replace=False))
    cols = [i for b in chosen for i, g in enumerate(test.gallery) if g.building == b]
    rows = [i for b in chosen for i, q in enumerate(test.queries) if q.building == b]
    sub = result.scores[np.ix_(rows, cols)]
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(sub, aspect="auto", cmap="magma", interpolation="nearest")
    col_of = {test.gallery[c].building: j for j, c in enumerate(cols)}
    truth = [(col_of[test.queries[r].building], i) for i, r in enumerate(rows) if test.queries[r].building in col_of]
    ax.scatter(*zip(*truth), s=10, facecolors="none", edgecolors="c", lw=0.8, label="true pair")
    best = sub.argmax(1)
    ax.scatter(best, np.arange(len(rows)), s=14, c="w", marker="x", lw=1.0, label="row maximum")
    ax.set_xlabel(f"satellite tiles of {len(chosen)} buildings")
    ax.set_ylabel(f"their {len(rows)} street queries")
    ax.set_title("similarity of street queries to satellite tiles")
    ax.legend(loc="upper right", fontsize=7, framealpha=0.6)
    fig.colorbar(im, ax=ax, label="cosine similarity")
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
    ax.scatter(*qs.T, s=6, c="0.78", label="street queries")
    ax.scatter(*gs.T, s=18, c="0.55", marker="^", label="satellite tiles")
    asked = sorted(set(test.query_ids))
    rng = np.random.default_rng(seed)
    colours = plt.get_cmap("tab10")
    gallery_of = {g.building: i for i, g in enumerate(test.gallery)}
    highlight = sorted(rng.choice(asked, min(n_highlight, len(asked)), replace=False))
    for c, b in enumerate(highlight):
        qi = [i for i, q in enumerate(test.queries) if q.building == b]
        gi = gallery_of.get(b)
        ax.scatter(*qs[qi].T, s=22, color=colours(c % 10))
        if gi is not None:
            ax.scatter(*gs[gi], s=140, color=colours(c % 10), marker="*", edgecolors="k", lw=0.6)
            for i in qi:
                ax.plot(*np.stack([qs[i], gs[gi]]).T, color=colours(c % 10), lw=0.7, alpha=0.7)
    ax.set_xlabel(f"PC 1 ({explained[0] * 100:.0f} % of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1] * 100:.0f} % of variance)")
    ax.set_title(f"embeddings in 2-D (PCA); {len(highlight)} buildings in colour: dots street, star satellite")
    ax.legend(loc="best", fontsize=8)
    return stamp(fig, cfg, model=result.model_description)
