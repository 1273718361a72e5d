"""Figures for notebook 05: our sweeps beside the paper's published numbers."""
from __future__ import annotations

import itertools
import math

import matplotlib.pyplot as plt

from .. import paper
from ..tables import SHOWN, Table
from . import stamp

COLORS = {"R@1": "tab:blue", "R@5": "tab:orange", "R@10": "tab:green"}
PAPER_STYLE = dict(ls="--", marker="s", mfc="white", alpha=0.8)


def _ours(t: Table):
    """The rows that are ours (not the paper-only ones appended at the end)."""
    return t.rows[t.rows["row"].fillna("") != ""]


def _label(tables: list[Table]) -> tuple[str, str]:
    """What a figure of several tables shows: the distinct data sources, and a model note."""
    data = [t.provenance[0].removeprefix("data: ") for t in tables if t.provenance[0].startswith("data: ")]
    ours = "; ".join(dict.fromkeys(data)) or "no run of ours yet"
    return f"ours: {ours} | paper's: University-1652 (published, grey)", "per legend"


def _stamp(fig, tables: list[Table], cfg):
    """Label with the data of the sweeps shown, naming them as the run (the notebook's run when none)."""
    data, model = _label(tables)
    runs = " + ".join(t.name for t in tables) or cfg.run_name
    fig.subplots_adjust(bottom=max(fig.subplotpars.bottom, 0.2))  # room for the label under the axis titles
    return stamp(fig, cfg.model_copy(update={"run_name": runs}), model=model, data=data)


def drone_rate_plot(tables: list[Table], cfg):
    """R@k against the drone substitution rate P: each sweep (mean ± std over seeds) and the paper."""
    fig, axes = plt.subplots(1, len(SHOWN), figsize=(12, 3.6))
    for ax, m in zip(axes, SHOWN):
        for t, marker in zip(tables, itertools.cycle("ovD^")):
            ours = _ours(t).sort_values("P")
            ax.errorbar(ours["P"].astype(float), ours[m], yerr=ours[f"{m}_std"].fillna(0), marker=marker,
                        color=COLORS[m], capsize=3, label=f"ours: {t.name}")
        ax.plot(paper.DRONE_RATE["drone_rate"], paper.DRONE_RATE[m], color="0.4", label="paper's", **PAPER_STYLE)
        ax.set(title=f"{m} against drone rate P", xlabel="P (drone image replaces satellite)", ylabel=f"{m} (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _stamp(fig, tables, cfg)


def backbone_plot(tables: list[Table], cfg):
    """R@1 against forward cost per image (GMACs, log scale): each backbone sweep and the paper's backbones."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for t, marker in zip(tables, itertools.cycle("ovD^")):
        ours = _ours(t)
        ax.errorbar(ours["GMACs"].astype(float), ours["R@1"], yerr=ours["R@1_std"].fillna(0), fmt=marker,
                    capsize=3, label=f"ours: {t.name}")
        for i, (_, r) in enumerate(ours.iterrows()):
            ax.annotate(r["row"], (r["GMACs"], r["R@1"]), fontsize=7, xytext=(4, 3 - 12 * (i % 2)),
                        textcoords="offset points")
    p = paper.BACKBONES
    ax.plot(p["flops_G"], p["R@1"], ls="none", marker="s", mfc="white", color="0.4", label="paper's (University-1652)")
    for i, (_, r) in enumerate(p.iterrows()):
        ax.annotate(r["backbone"], (r["flops_G"], r["R@1"]), fontsize=7, color="0.4", xytext=(4, -9 + 12 * (i % 2)),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set(title="R@1 against backbone cost", xlabel="GMACs per image at the run's size (the paper's 'FLOPs')",
           ylabel="R@1 (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _stamp(fig, tables, cfg)


def rerank_plot(tables: list[Table], cfg):
    """R@k before and after re-ranking, one panel per source with re-ranked rows, and the paper's VLM table."""
    panels = []
    for t in tables:
        ours = _ours(t)
        if t.kind == "vlms":
            panels.append((t.name, ours))
        else:  # the variants that were re-ranked: their retrieval row and re-ranked row(s)
            reranked = set(ours.loc[ours["stage"] != "retrieval", "variant"])
            if reranked:
                panels.append((t.name, ours[ours["variant"].isin(reranked)]))
    theirs = paper.VLMS.rename(columns={"vlm": "row"})
    panels.append(("paper's (University-1652)", theirs))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4), squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels):
        width = 0.8 / max(len(rows), 1)
        for i, (_, r) in enumerate(rows.iterrows()):
            xs = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(SHOWN))]
            errs = [r.get(f"{m}_std") for m in SHOWN]
            errs = None if any(e is None or math.isnan(e) for e in errs) else errs  # one seed, or the paper's
            ax.bar(xs, [r[m] for m in SHOWN], width, yerr=errs, capsize=2, label=str(r["row"])[:60])
        ax.set_xticks(range(len(SHOWN)), SHOWN)
        ax.set(title=title, ylabel="recall (%)")
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle("before and after re-ranking the top 10 (R@10 cannot move)")
    fig.tight_layout()
    return _stamp(fig, tables, cfg)
