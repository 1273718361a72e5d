"""Figures of notebook 02: what the model sees (drone mixing), what InfoNCE asks of it, how training went."""
from __future__ import annotations

import math
import matplotlib.pyplot as plt
import numpy as np
import torch

from ..datasets import SATELLITE, PairKey, drone_choices
from . import stamp


def to_image(x: torch.Tensor, data_config: dict) -> np.ndarray:
    """A normalised CHW tensor back to an HWC image in [0, 1] for display."""
    mean = torch.tensor(data_config["mean"]).view(3, 1, 1)
    std = torch.tensor(data_config["std"]).view(3, 1, 1)
    return (x.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def _bare(ax, title: str = "", colour: str | None = None):
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8, pad=2)
    if colour:
        for side in ax.spines.values():
            side.set_edgecolor(colour)
            side.set_linewidth(2.5)


def drone_mixing(pairs, model, cfg, n: int = 4, seed: int = 0):
    """For n buildings, what a training step may see after augmentation: the street photo, the satellite
    tile, and drone views that replace the tile with probability drone_rate (first: the highest view)."""
    with_drone = [i for i, d in enumerate(pairs.drone) if d]
    rng = np.random.default_rng(seed)
    rows = sorted(rng.choice(with_drone, size=min(n, len(with_drone)), replace=False).tolist()) if with_drone else []
    if not rows:
        raise ValueError("drone_mixing: no training building has drone images")
    dc = model.data_config
    fig, axes = plt.subplots(len(rows), 5, figsize=(8.5, 2.1 * len(rows) + 0.6), squeeze=False,
                             gridspec_kw={"hspace": 0.45})
    for ax_row, b in zip(axes, rows):
        n_drone = len(pairs.drone[b])
        allowed = drone_choices(n_drone, cfg.drone_high_only)
        picks = [0, allowed // 2, allowed - 1]
        keys = [PairKey(b, 0, SATELLITE, seed)] + [PairKey(b, 0, d, seed + 1 + j) for j, d in enumerate(picks)]
        street, sat, *_ = pairs[keys[0]]
        _bare(ax_row[0], f"street\n{pairs.buildings[b]}", "#2166ac")
        ax_row[0].imshow(to_image(street, dc))
        _bare(ax_row[1], f"satellite\n(p = {1 - cfg.drone_rate:.2f})", "#1a9850")
        ax_row[1].imshow(to_image(sat, dc))
        for ax, key in zip(ax_row[2:], keys[1:]):
            _, tile, *_ = pairs[key]
            _bare(ax, f"drone {key.drone + 1}/{n_drone}", "#d73027")
            ax.imshow(to_image(tile, dc))
    only = "the high first third of " if cfg.drone_high_only else ""
    fig.suptitle(f"Drone mixing: with probability {cfg.drone_rate:g} the satellite tile (green) is replaced by one "
                 f"of {only}the building's drone views (red)", fontsize=9)
    fig.subplots_adjust(top=0.9, bottom=0.08, left=0.02, right=0.98, wspace=0.08)
    return stamp(fig, cfg, model="")


@torch.no_grad()
def similarity_matrix(model, street: torch.Tensor, satellite: torch.Tensor, cfg, title: str, temperature: float = 0.1):
    """The InfoNCE picture for one batch: cosine similarities street x satellite, thumbnails on the axes,
    and the softmax of row i that the loss pushes towards its diagonal cell."""
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
        ax = fig.add_subplot(grid[i + 1, 0])
        ax.imshow(to_image(street[i], dc))
        _bare(ax)
        ax = fig.add_subplot(grid[0, i + 1])
        ax.imshow(to_image(satellite[i], dc))
        _bare(ax)
    ax = fig.add_subplot(grid[1:, 1:n + 1])
    im = ax.imshow(sim, cmap="viridis")  # the matrix's own range: an untrained model has all cosines near 1
    for i in range(n):
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, ec="w", lw=1.5))
    p = np.exp((sim - sim.max(1, keepdims=True)) / temperature)
    p /= p.sum(1, keepdims=True)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="k" if sim[i, j] > (sim.min() + sim.max()) / 2 else "w")
    _bare(ax)
    cax = fig.add_subplot(grid[1:, n + 1])
    fig.colorbar(im, cax=cax, label="cosine similarity")
    correct = float(np.mean(sim.argmax(1) == np.arange(n)))
    fig.suptitle(f"{title}: white squares = same building\nthe row softmax at T = {temperature:.3g} puts "
                 f"{np.mean(np.diag(p)):.0%} on them; the top-1 tile is right for {correct:.0%} of the rows", fontsize=9)
    fig.text(0.02, 0.5, "street photos (rows)", rotation=90, va="center", fontsize=8)
    fig.text(0.5, 0.9, "satellite tiles (columns)", ha="center", fontsize=8)
    return stamp(fig, cfg)


def curves(log, cfg, batch_size: int | None = None):
    """Loss (with the chance level log B), validation recall, and the learned temperature per epoch."""
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(12, 3.6))
    ax.plot(log["epoch"], log["loss"], color="#2166ac")
    b = batch_size or cfg.batch_size
    ax.axhline(math.log(b), color="0.5", ls=":", lw=1)
    ax.text(log["epoch"].iloc[0], math.log(b), f"chance: log {b}", fontsize=8, va="bottom", color="0.4")
    ax.set_xlabel("epoch")
    ax.set_ylabel("InfoNCE loss")
    ax.set_title("training loss")
    val = log.dropna(subset=["R@1"])
    which = val["eval_set"].iloc[0] if len(val) else cfg.select_on
    for k, c in (("R@1", "#1a9850"), ("R@5", "#66bd63"), ("R@10", "#a6d96a")):
        bx.plot(val["epoch"], val[k], "o-", color=c, ms=3, label=k)
    if len(val):
        best = val.loc[val["R@1"].idxmax()]
        bx.axvline(best["epoch"], color="0.5", ls="--", lw=1)
        bx.text(best["epoch"], 2, f" best R@1 {best['R@1']:.1f}", fontsize=8)
    bx.set_xlabel("epoch")
    bx.set_ylabel("%")
    bx.set_ylim(0, 100)
    bx.legend(fontsize=8, loc="upper left")
    bx.set_title(f"recall on the {'held-out train buildings' if which == 'val' else 'TEST set (select_on: test)'}")
    cx.plot(log["epoch"], log["temperature"], color="#762a83", label="temperature")
    cx.set_xlabel("epoch")
    cx.set_ylabel("temperature T", color="#762a83")
    dx = cx.twinx()
    dx.plot(log["epoch"], log["drone_rate"], color="#d73027", alpha=0.6, lw=1)
    dx.axhline(cfg.drone_rate, color="#d73027", ls=":", lw=1)
    dx.set_ylabel("drone substitutions (realised)", color="#d73027")
    dx.set_ylim(0, max(0.05, 2 * cfg.drone_rate))
    cx.set_title("temperature and drone rate")
    for a in (ax, bx, cx):
        a.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return stamp(fig, cfg)


def eval_batch(retrieval_set, model, cfg, n: int = 8, seed: int = 0):
    """(street, satellite) tensors of n distinct buildings of a RetrievalSet, with the eval transforms."""
    from ..datasets import decode_image
    from ..models import model_transforms

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
