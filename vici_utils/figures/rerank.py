"""Figures for notebook 04: what re-ranking changed, where, and why."""
from __future__ import annotations

import textwrap
from io import BytesIO

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_rgb
from PIL import Image

from ..metrics import RECALLS
from ..provenance import describe_model
from ..registry import FUSIONS
from ..rerank.report import describe_reranker
from ..u1652 import load_image
from . import framed, stamp


REASON_CHARS = 230   # the most characters of free text (a re-ranker's reason, a model's answer) a figure draws
PROMPT_PT = 8.5      # the request sheet's prompt: readable without zooming


def bounded(text, most: int = REASON_CHARS) -> str:
    """Free text to draw in a figure, cut to at most `most` characters on a word boundary: a model's answer can
    be any length, and a figure must not grow with it."""
    return textwrap.shorten(" ".join(str(text).split()), most, placeholder=" ...")


def readable_on(rgb) -> str:
    """Black or white, whichever reads better on a cell of colour `rgb` (relative luminance, WCAG)."""
    def linear(c):
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in to_rgb(rgb))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "black" if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else "white"


def _model(cfg) -> str:
    return f"{describe_model(cfg)}; re-ranker {describe_reranker(cfg)}"


def _finish(fig, cfg, **layout):
    """Lay out above a strip for the two-line stamp, then stamp."""
    fig.tight_layout(rect=(0, min(0.25, 0.5 / fig.get_figheight()), 1, 1), **layout)
    return stamp(fig, cfg, model=_model(cfg))


def before_after_plot(result, cfg):
    """R@1 / R@5 / R@10 of the retrieval and of every fusion rule, with the top-K ceiling on R@1."""
    m = result.metrics
    rows = ["retrieval", *FUSIONS]
    ks = list(RECALLS)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        values = [m[row][k] for k in ks]
        bars = ax.bar(np.arange(len(ks)) + (i - (len(rows) - 1) / 2) * width, values, width,
                      label=row + (" (reported)" if row == m["headline"] else ""),
                      color="0.6" if row == "retrieval" else None)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.axhline(m["r_at_k_ceiling"], color="tab:red", ls="--", lw=1, label=f"ceiling: retrieval R@{m['top_k']}")
    ax.set(xticks=range(len(ks)), xticklabels=ks, ylabel="%", ylim=(0, 100),
           title=f"before and after re-ranking the top {m['top_k']} ({m['queries_reranked']} queries)")
    # inside the axes, between the R@1 bars and the ceiling line (R@1 cannot pass the ceiling)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, max(m["r_at_k_ceiling"] / 100 - 0.03, 0.45)))
    return _finish(fig, cfg)


def pick_wins_and_losses(result, rule: str, n: int = 2):
    """Queries whose true match the rule moved up the most (wins) and down the most (losses)."""
    df = result.per_query
    before, after = df["rank_retrieval"], df[f"rank_{rule}"]
    moved = df[(before > 0) & (before <= result.metrics["top_k"]) & (before != after)]
    shift = (before - after)[moved.index]
    wins = shift[shift > 0].sort_values(ascending=False).index[:n].tolist()
    losses = shift[shift < 0].sort_values().index[:n].tolist()
    return wins, losses


def wins_and_losses(result, cfg, n: int = 2):
    """Each row: the query, then its candidates in the re-ranked order, the true match framed in green, and
    the re-ranker's reason. Wins first, then losses."""
    rule = result.metrics["headline"]
    wins, losses = pick_wins_and_losses(result, rule, n)
    rows = [("win", i) for i in wins] + [("loss", i) for i in losses]
    k = result.metrics["top_k"]
    if not rows:
        fig, ax = plt.subplots(figsize=(6, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"'{rule}' moved no true match within the top {k}", ha="center", va="center")
        return _finish(fig, cfg)
    feats = result.features
    g_index = {name: i for i, name in enumerate(feats["gallery_names"])}
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(1.35 * (k + 1), 2.15 * len(rows)), squeeze=False)
    for r, (kind, q) in enumerate(rows):
        o = result.outcomes[q]
        truth = feats["query_ids"][q]
        framed(axes[r][0], load_image(feats["query_paths"][q]), f"{kind}: query\n{o.name[-18:]}", "tab:blue")
        order = result.fused[rule][q, :k]
        for c, g in enumerate(order):
            name = feats["gallery_names"][g]
            was = o.candidates.index(name) + 1
            own = o.order.index(was - 1) + 1  # the re-ranker's own rank of it, before fusion
            correct = feats["gallery_ids"][g_index[name]] == truth
            framed(axes[r][c + 1], load_image(feats["gallery_paths"][g]), f"{c + 1} (ret. {was}, re-r. {own})",
                   "tab:green" if correct else "none")
        note = bounded(o.note)
        axes[r][0].text(0, -0.22, textwrap.fill(f"re-ranker's own order, before fusion: {note}", 150),
                        transform=axes[r][0].transAxes, fontsize=7, va="top", ha="left")
    fig.suptitle(f"wins and losses of '{rule}': candidates in the fused order, with their retrieval rank (ret.) "
                 "and the re-ranker's own rank (re-r.); true match in green", fontsize=10)
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.8 / height, bottom=0.75 / height, wspace=0.06,
                        hspace=0.75)
    return stamp(fig, cfg, model=_model(cfg))


def position_bias_plot(result, cfg):
    """Which presented slot the re-ranker put first, against the slot the true match actually held."""
    bias = result.metrics["position_bias"]
    k = result.metrics["top_k"]
    n = max(bias["answers"], 1)
    slots = np.arange(1, k + 1)
    picked = np.array([bias["picked_slot_counts"].get(s, bias["picked_slot_counts"].get(str(s), 0)) for s in slots]) / n
    correct = np.array([bias["correct_slot_counts"].get(s, bias["correct_slot_counts"].get(str(s), 0))
                        for s in slots]) / n
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.bar(slots - 0.2, 100 * picked, 0.4, label="re-ranker's first choice")
    ax.bar(slots + 0.2, 100 * correct, 0.4, label="where the true match was", color="0.6")
    ax.axhline(100 / k, color="k", ls=":", lw=1, label="no preference (1/K)")
    ax.set(xticks=slots, xlabel="presented slot", ylabel="% of answers",
           title=f"position bias: first slot picked {100 * (bias['first_presented_picked'] or 0):.0f}% of the time, "
                 f"right {100 * (bias['first_presented_correct'] or 0):.0f}%")
    ax.legend(fontsize=8)
    return _finish(fig, cfg)


def rank_moves(result, cfg):
    """Where the true match went: retrieval rank (rows) against rank after the headline rule (columns)."""
    rule = result.metrics["headline"]
    k = result.metrics["top_k"]
    df = result.per_query
    inside = df[(df["rank_retrieval"] > 0) & (df["rank_retrieval"] <= k)]
    grid = np.zeros((k, k), dtype=int)
    np.add.at(grid, (inside["rank_retrieval"] - 1, inside[f"rank_{rule}"] - 1), 1)
    fig, ax = plt.subplots(figsize=(6.5, 6))
    image = ax.imshow(np.log1p(grid), cmap="Blues")
    for i, j in zip(*np.nonzero(grid)):   # each count in the colour that reads on its cell
        ax.text(j, i, grid[i, j], ha="center", va="center", fontsize=8,
                color=readable_on(image.cmap(image.norm(np.log1p(grid[i, j])))))
    ticks = np.arange(k)
    ax.set(xticks=ticks, xticklabels=ticks + 1, yticks=ticks, yticklabels=ticks + 1, xlabel=f"rank after '{rule}'",
           ylabel="rank after retrieval", title="true match: before -> after\n(below the diagonal = moved up)")
    return _finish(fig, cfg)


def request_sheet(request, cfg, answer: dict | None = None, true_candidate: int | None = None):
    """One re-ranking request as the model receives it: the prompt's text, the ground photo and the numbered
    satellite images in the order sent (thumbnails of the bytes actually sent), and the parsed answer below.
    true_candidate: the number (1-based, as presented) of the true tile, framed in green so a reader can judge
    the answer (the model is never told)."""
    images = [p for p in request.parts if not isinstance(p, str)]
    k = len(images) - 1
    cols = min(k + 1, 6)
    rows = -(-(k + 1) // cols)  # rows of thumbnails
    texts = [p for p in request.parts if isinstance(p, str)]
    width = 1.9 * cols
    chars = int(width * 72 / (0.6 * PROMPT_PT)) - 4   # monospace: a character is about 0.6 em wide
    shown = textwrap.fill(texts[0], chars) + "\n\n" + textwrap.fill(texts[-1].replace("\n", " "), chars)
    text_h = (shown.count("\n") + 1) * PROMPT_PT * 1.25 / 72 + 0.1
    said = ""
    if answer:
        said = textwrap.fill("answer as parsed: " + "; ".join(
            f"{key}: {bounded(v) if key == 'reason' else v}" for key, v in answer.items()), 150)
    answer_h = (said.count("\n") + 1) * 8 * 1.3 / 72 + 0.15 if said else 0.0
    fig = plt.figure(figsize=(width, 1.75 * rows + text_h + answer_h + 0.5))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[text_h] + [1.75] * rows)
    text_ax = fig.add_subplot(grid[0, :])
    text_ax.axis("off")
    text_ax.text(0, 1, shown, fontsize=PROMPT_PT, va="top", ha="left", family="monospace")
    for i, part in enumerate(images):
        label = "Ground photo" if i == 0 else f"Satellite image {i}"
        true = i == true_candidate
        framed(fig.add_subplot(grid[1 + i // cols, i % cols]), Image.open(BytesIO(part.data)).convert("RGB"),
               f"{label}{' (true tile)' if true else ''}\n{len(part.data) / 1024:.0f} KB {part.mime.split('/')[-1]}",
               "tab:green" if true else ("tab:blue" if i == 0 else None))
    if said:
        fig.text(0.01, 0.01, said, fontsize=8, va="bottom")
    truth = (f"; true tile: {true_candidate}, framed in green" if true_candidate
             else "; the true tile is not among them")
    fig.suptitle(f"one request: query {request.query_name}, {k} candidates in retrieval order{truth}", fontsize=10)
    fig.tight_layout(rect=(0, answer_h / fig.get_figheight(), 1, 0.97))
    return stamp(fig, cfg, model=_model(cfg))



def verifier_attention(result, cfg, q: int, heats: list):
    """What the learned verifier looks at: for query q, its attention from the street photo's tokens onto each
    candidate tile's token grid (`heats[pos]`, from the verifier's attention_maps), drawn over the tile; candidates in
    the verifier's own order."""
    f, k = result.features, result.metrics["top_k"]
    o = result.outcomes[q]
    shown = o.order[:min(5, k)]
    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(2.2 * (len(shown) + 1), 2.9))
    framed(axes[0], load_image(f["query_paths"][q]), f"query\n{o.name[-18:]}", "tab:blue")
    for rank, (ax, pos) in enumerate(zip(axes[1:], shown), start=1):
        g = int(result.ranking[q, pos])
        image = load_image(f["gallery_paths"][g])
        truth = f["gallery_ids"][g] == f["query_ids"][q]
        framed(ax, image, f"verifier #{rank} (ret. {pos + 1})", "tab:green" if truth else None)
        ax.imshow(heats[pos], cmap="magma", alpha=0.45, extent=(0, image.width, image.height, 0),
                  interpolation="bilinear")
    fig.suptitle("where the verifier looks: attention of the street photo's tokens onto each tile (bright = more)",
                 fontsize=10)
    return _finish(fig, cfg)
