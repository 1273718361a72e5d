"""Figures of notebook 02: what the model sees (drone mixing), what InfoNCE asks of it, how training went."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..datasets import SATELLITE, PairKey, decode_image, drone_choices
from ..provenance import describe_model
from ..registry import LOSSES
from ..transforms import model_transforms
from . import framed, legend_below, stamp


def to_image(x: torch.Tensor, data_config: dict) -> np.ndarray:
    """A normalised CHW tensor back to an HWC image in [0, 1] for display."""
    mean = torch.tensor(data_config["mean"]).view(3, 1, 1)
    std = torch.tensor(data_config["std"]).view(3, 1, 1)
    return (x.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def drone_mixing(pairs, model, cfg, n: int = 4, seed: int = 0):
    """For n buildings, what a training step may see after augmentation: the street photo, the satellite
    tile, and drone views that replace the tile with probability drone_rate (first: the highest view)."""
    with_drone = [i for i, d in enumerate(pairs.drone) if d]
    rng = np.random.default_rng(seed)
    rows = sorted(rng.choice(with_drone, size=min(n, len(with_drone)), replace=False).tolist()) if with_drone else []
    if not rows:
        raise ValueError("drone_mixing: no training building has drone images")
    dc = model.data_config
    fig, axes = plt.subplots(len(rows), 5, figsize=(8.5, 1.95 * len(rows) + 0.8), squeeze=False,
                             gridspec_kw={"hspace": 0.45})
    for ax_row, b in zip(axes, rows):
        n_drone = len(pairs.drone[b])
        allowed = drone_choices(n_drone, cfg.drone_high_only)
        picks = [0, allowed // 2, allowed - 1]
        keys = [PairKey(b, 0, SATELLITE, seed)] + [PairKey(b, 0, d, seed + 1 + j) for j, d in enumerate(picks)]
        street, sat, *_ = pairs[keys[0]]
        framed(ax_row[0], to_image(street, dc), f"street\n{pairs.buildings[b]}", "#2166ac", 2.5, fontsize=8)
        framed(ax_row[1], to_image(sat, dc), f"satellite\n(p = {1 - cfg.drone_rate:.2f})", "#1a9850", 2.5,
               fontsize=8)
        for ax, key in zip(ax_row[2:], keys[1:]):
            _, tile, *_ = pairs[key]
            title = f"drone {key.drone + 1}/{n_drone}\n(p = {cfg.drone_rate / allowed:.2f} each)"
            framed(ax, to_image(tile, dc), title, "#d73027", 2.5, fontsize=8)
    only = "the high first third of " if cfg.drone_high_only else ""
    fig.suptitle(f"Drone mixing: with probability {cfg.drone_rate:g} the satellite tile (green) is replaced by one "
                 f"of {only}the building's drone views (red)", fontsize=9)
    fig.subplots_adjust(top=1 - 0.85 / fig.get_figheight(), bottom=0.02, left=0.02, right=0.98, wspace=0.08)
    return stamp(fig, cfg, model="")


# One colour scale for every similarity matrix, so that before/after training compare by colour. Cosines of
# these embeddings lie mostly in 0..1; a negative one shows in the colour of 0 (its number is printed anyway).
SIMILARITY_RANGE = (0.0, 1.0)


@torch.no_grad()
def batch_similarities(model, street: torch.Tensor, satellite: torch.Tensor, cfg, title: str, temperature: float = 0.1,
                       vrange: tuple[float, float] = SIMILARITY_RANGE, weights: str | None = None):
    """The InfoNCE picture for one batch: cosine similarities street x satellite, thumbnails on the axes,
    and the softmax of row i that the loss pushes towards its diagonal cell. The colour scale is fixed
    (`vrange`, 0 to 1 by default), so matrices before and after training compare by colour. `weights`: which
    weights the model holds (e.g. "trained checkpoint default/train/best.pt"), for the stamp."""
    was_training = model.training
    model.eval()
    s, g = model(street, satellite)
    model.train(was_training)
    sim = (s @ g.T).float().numpy()
    n = len(sim)
    dc = model.data_config
    fig = plt.figure(figsize=(7.2, 6.4))
    grid = fig.add_gridspec(n + 1, n + 2, width_ratios=[1] * (n + 1) + [0.25], height_ratios=[1] * (n + 1),
                            wspace=0.05, hspace=0.05)
    for i in range(n):
        framed(fig.add_subplot(grid[i + 1, 0]), to_image(street[i], dc))
        framed(fig.add_subplot(grid[0, i + 1]), to_image(satellite[i], dc))
    ax = fig.add_subplot(grid[1:, 1:n + 1])
    im = ax.imshow(sim, cmap="viridis", vmin=vrange[0], vmax=vrange[1])
    for i in range(n):
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, ec="w", lw=1.5))
    p = np.exp((sim - sim.max(1, keepdims=True)) / temperature)
    p /= p.sum(1, keepdims=True)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="k" if sim[i, j] > sum(vrange) / 2 else "w")
    framed(ax)
    cax = fig.add_subplot(grid[1:, n + 1])
    extend = {(True, True): "both", (True, False): "min", (False, True): "max"}.get(
        (bool(sim.min() < vrange[0]), bool(sim.max() > vrange[1])), "neither")
    fig.colorbar(im, cax=cax, extend=extend,
                 label=f"cosine similarity (the same scale, {vrange[0]:g} to {vrange[1]:g}, in every matrix)")
    correct = float(np.mean(sim.argmax(1) == np.arange(n)))
    fig.suptitle(f"{title}: white squares = same building; cosines {sim.min():.2f} to {sim.max():.2f}\n"
                 f"the row softmax at T = {temperature:.3g} puts {np.mean(np.diag(p)):.0%} on them; the top-1 tile is "
                 f"right for {correct:.0%} of the rows (chance: 1/{n} = {1 / n:.0%})", fontsize=9)
    fig.text(0.02, 0.5, "street photos (rows)", rotation=90, va="center", fontsize=8)
    fig.text(0.5, 0.9, "satellite tiles (columns)", ha="center", fontsize=8)
    return stamp(fig, cfg, model=describe_model(cfg) + (f"; weights: {weights}" if weights else ""))




RECALL_COLOURS = {"R@1": "#1a9850", "R@5": "#66bd63", "R@10": "#a6d96a"}


def _eval_name(which: str) -> str:
    return "held-out train buildings" if which == "val" else "TEST set (select_on: test)"


def kept_row(log, kept_epoch: int | None):
    """The log's row of the epoch best.pt holds (training's `best_epoch`, which training chose), or None when that
    epoch was not checked or nothing was kept."""
    row = log[(log["epoch"] == kept_epoch) & log["R@1"].notna()]
    return row.iloc[0] if len(row) else None


def curves(log, cfg, batch_size: int | None = None, val_gallery: int | None = None, kept_epoch: int | None = None):
    """Loss (with the chance level log B), recall on the checked set with its chance level (k / val_gallery, when
    the gallery size is given), and the learned temperature per epoch; kept_epoch (training's `best_epoch`) is
    marked."""
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(12, 3.6))
    ax.plot(log["epoch"], log["loss"], color="#2166ac", label="training loss")
    b = batch_size or cfg.batch_size
    ax.axhline(math.log(b), color="0.5", ls=":", lw=1, label=f"chance: log {b} = {math.log(b):.2f}")
    ax.set_ylim(0, max(math.log(b), log["loss"].max()) * 1.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel(LOSSES.load(cfg.loss).label.partition(":")[0] + " loss")  # the label's name, before its colon
    ax.set_title("training loss", fontsize=10)
    val = log.dropna(subset=["R@1"])
    which = val["eval_set"].iloc[0] if len(val) else cfg.select_on
    for k, c in RECALL_COLOURS.items():
        bx.plot(val["epoch"], val[k], "o-", color=c, ms=3, label=k)
        if val_gallery:
            kk = int(k[2:])
            bx.axhline(100 * min(kk, val_gallery) / val_gallery, color=c, ls=":", lw=1.2)
    best = kept_row(log, kept_epoch)
    if best is not None:
        bx.axvline(best["epoch"], color="0.5", ls="--", lw=1,
                   label=f"kept ({cfg.select_epoch} epoch): R@1 {best['R@1']:.1f} at epoch {int(best['epoch'])}")
    bx.set_xlim(ax.get_xlim())   # the same epochs as the loss panel, even with a single check
    bx.set_xlabel("epoch")
    bx.set_ylabel("%")
    bx.set_ylim(0, 100)
    if val_gallery:
        bx.plot([], [], color="0.4", ls=":", lw=1.2, label="recall by chance (k / tiles)")
    size = f", {val_gallery} tiles" if val_gallery else ""
    bx.set_title(f"recall on the {_eval_name(which)}{size}", fontsize=10)
    cx.plot(log["epoch"], log["temperature"], color="#762a83", label="temperature T")
    cx.set_xlabel("epoch")
    cx.set_ylabel("temperature T", color="#762a83")
    dx = cx.twinx()
    dx.plot(log["epoch"], log["drone_rate"], color="#d73027", alpha=0.6, lw=1, label="drone substitutions per epoch")
    dx.axhline(cfg.drone_rate, color="#d73027", ls=":", lw=1, label=f"drone_rate P = {cfg.drone_rate:g} (the target)")
    dx.set_ylabel("drone substitutions (realised)", color="#d73027")
    dx.set_ylim(0, max(0.05, 2 * cfg.drone_rate))
    cx.set_title("temperature and drone rate", fontsize=10)
    for a in (ax, bx, cx):
        a.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    fig.tight_layout()
    legend_below(fig, ncol=4, fontsize=7)   # inside a panel it would cover a curve or a chance line
    return stamp(fig, cfg)


def val_and_test(log, val_gallery: int, test_metrics: dict, cfg, kept_epoch: int | None, model: str | None = None):
    """Validation and test recall side by side, each with its chance level and gallery size. Left: R@1/5/10 of
    the selected epoch on the checked set and on the test set, chance as a dashed mark over each bar. Right: the
    same recalls against k as a share of each gallery (R@10 of 40 tiles inspects a quarter of the gallery, R@10
    of 200 tiles a twentieth), with the test CMC as a curve when `test_metrics` holds it.
    test_metrics: notebook 03's metrics (R@1, R@5, R@10, n_gallery; optionally cmc). kept_epoch: training's
    `best_epoch`. model: the stamp's model line (notebook 03: the retrieval result's, which names the evaluated
    weights)."""
    best = kept_row(log, kept_epoch)
    n_test = int(test_metrics["n_gallery"])
    ks = [int(k[2:]) for k in RECALL_COLOURS]
    sets = []
    if best is not None:
        which = "validation" if best["eval_set"] == "val" else "test, as used for selection"
        sets.append((f"{which} (epoch {int(best['epoch'])})", val_gallery, [best[f"R@{k}"] for k in ks], "#1a9850"))
    sets.append(("test (notebook 03)", n_test, [test_metrics[f"R@{k}"] for k in ks], "#2166ac"))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.1, 1]})
    width = 0.8 / len(sets)
    for i, (name, n, values, colour) in enumerate(sets):
        xs = np.arange(len(ks)) + (i - (len(sets) - 1) / 2) * width
        chance = [100 * min(k, n) / n for k in ks]
        bars = ax.bar(xs, values, width * 0.95, color=colour,
                      label=f"{name}: {n} tiles, chance {' / '.join(f'{c:.3g}' for c in chance)} %")
        for bar, v in zip(bars, values):   # inside a tall bar, above a short one: clear of the chance mark
            tall = v >= 12
            ax.text(bar.get_x() + bar.get_width() / 2, v / 2 if tall else v + 1.5, f"{v:.1f}", ha="center",
                    va="center" if tall else "bottom", fontsize=8, color="white" if tall else colour,
                    fontweight="bold")
        ax.hlines(chance, xs - width / 2, xs + width / 2, colors="k", linestyles="--", lw=1.5)
    ax.plot([], [], "k--", lw=1.5, label="chance = k / tiles in the gallery")
    ax.set(xticks=range(len(ks)), xticklabels=[f"R@{k}" for k in ks], ylim=(0, 105), ylabel="%")
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("R@1 / R@5 / R@10 of the selected weights; dashed: chance", fontsize=10)
    if "cmc" in test_metrics:
        cmc = np.asarray(test_metrics["cmc"])[:n_test]
        share = 100 * np.arange(1, n_test + 1) / n_test
        bx.plot(share, cmc, color="#2166ac", lw=1.2, label="test: R@k for every k")
    for name, n, values, colour in sets:
        bx.plot([100 * k / n for k in ks], values, "o", color=colour, ms=6, mec="white",
                label=f"{name}: R@1, 5, 10")
    diagonal = np.geomspace(0.01, 100, 200)   # a straight y = x bends on a log x axis: draw it point by point
    bx.plot(diagonal, diagonal, color="0.5", ls=":", label="chance (R@k = k / tiles)")
    bx.set_xscale("log")
    bx.set(xlim=(100 / max(n_test, val_gallery or 1) / 1.5, 100), ylim=(0, 101),
           xlabel="k as a share of the gallery (%)", ylabel="R@k (%)")
    bx.set_title("the same recalls against the share of the gallery inspected", fontsize=10)
    fig.tight_layout()
    legend_below(fig, ncol=2, fontsize=7)   # over the bars it covered the tallest one
    return stamp(fig, cfg, model=model)


def eval_batch(retrieval_set, model, cfg, n: int = 8, seed: int = 0):
    """(street, satellite) tensors of n distinct buildings of a RetrievalSet, with the eval transforms."""
    first_query = {}
    for q in retrieval_set.queries:
        first_query.setdefault(q.building, q)
    tile = {g.building: g for g in retrieval_set.gallery}
    ids = [b for b in first_query if b in tile]
    chosen = sorted(np.random.default_rng(seed).choice(ids, size=min(n, len(ids)), replace=False).tolist())
    tf_s = model_transforms(cfg, model, train=False, view="street")
    tf_g = model_transforms(cfg, model, train=False, view="satellite")
    street = torch.stack([tf_s(decode_image(first_query[b].path, tf_s.size)) for b in chosen])
    sat = torch.stack([tf_g(decode_image(tile[b].path, tf_g.size)) for b in chosen])
    return street, sat
