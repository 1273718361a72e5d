"""Figures for notebook 05: our sweeps (vici_utils.results tables, from outputs/ or the committed record
docs/results/) beside the paper's published numbers. Every series names the recipe that made it (epochs, seeds),
recall axes never run past 100 %, and legends sit inside their axes, clear of the data."""
from __future__ import annotations

import itertools
import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import paper
from ..metrics import RECALLS
from ..results import Table
from ..results.paper_tables import GMACS
from . import stamp

COLORS = {"R@1": "tab:blue", "R@5": "tab:orange", "R@10": "tab:green"}
PAPER_GREYS = {"R@1": "0.3", "R@5": "0.55", "R@10": "0.8"}
PAPER_STYLE = dict(ls="--", marker="s", mfc="white", alpha=0.8)
LEGEND_PT = 8   # legends and point labels: readable at the notebook's width


def _ours(t: Table):
    """The rows that are ours (not the paper-only ones appended at the end)."""
    return t.rows[t.rows["row"].fillna("") != ""]


def series_name(t: Table) -> str:
    """A sweep as a series: its name, 'recorded' when it comes from the committed record, and its recipe."""
    return f"{t.name}{' (recorded)' if t.recorded else ''}: {t.recipe}"


def _label(tables: list[Table]) -> tuple[str, str]:
    """What a figure of several tables shows: the distinct data sources, and a model note."""
    data = [t.provenance[0].removeprefix("data: ") for t in tables
            if t.provenance and t.provenance[0].startswith("data: ")]
    ours = "; ".join(dict.fromkeys(data)) or "no run of ours yet"
    return f"ours: {ours} | paper's: University-1652 (published, grey)", "per legend"


def _stamp(fig, tables: list[Table], cfg):
    """Label with the data of the sweeps shown, naming them as the run (the notebook's run when none)."""
    data, model = _label(tables)
    runs = " + ".join(t.name for t in tables) or cfg.run_name
    return stamp(fig, cfg.model_copy(update={"run_name": runs}), model=model, data=data)


def _recall_top(values) -> float:
    """Upper end of a recall axis: room above the highest value for a legend, never past 100 %."""
    top = max([float(v) for v in values if not math.isnan(float(v))] or [1.0])
    return min(100.0, top * 1.35 + 2)


# --- drone rate ----------------------------------------------------------------------------------------------

def _at(frame: pd.DataFrame, col: str, rate: float, metric: str) -> float:
    hit = frame.loc[np.isclose(frame[col].astype(float), rate), metric]
    return float(hit.iloc[0]) if len(hit) else math.nan


def _effect(frame: pd.DataFrame, col: str, metric: str) -> str:
    """' (P 0 -> 0.3: +2.65)': the change the paper's choice of P makes, when both rates are there."""
    d = _at(frame, col, 0.3, metric) - _at(frame, col, 0.0, metric)
    return "" if math.isnan(d) else f" (P 0 -> 0.3: {d:+.2f})"


def drone_rate_plot(tables: list[Table], cfg):
    """R@k against the drone substitution rate P: each sweep (mean ± std over seeds, its recipe in the legend) and
    the paper, on axes from 0 to at most 100 %, with the change from P = 0 to the paper's P = 0.3 in the legend."""
    fig, axes = plt.subplots(1, len(RECALLS), figsize=(15, 5.2))
    for ax, m in zip(axes, RECALLS):
        values = list(paper.DRONE_RATE[m])
        for t, marker in zip(tables, itertools.cycle("ovD^")):
            ours = _ours(t).sort_values("P")
            std = ours[f"{m}_std"].astype(float).fillna(0)
            ax.errorbar(ours["P"].astype(float), ours[m], yerr=std, marker=marker, color=COLORS[m], capsize=3,
                        label=textwrap.fill(f"ours, {series_name(t)}{_effect(ours, 'P', m)}", 48))
            values += list(ours[m] + std)
        ax.plot(paper.DRONE_RATE["drone_rate"], paper.DRONE_RATE[m], color="0.4",
                label=f"paper's, one run per P{_effect(paper.DRONE_RATE, 'drone_rate', m)}", **PAPER_STYLE)
        ax.set_ylim(0, _recall_top(values))
        ax.set(title=f"{m} against drone rate P", xlabel="P (drone image replaces satellite)", ylabel=f"{m} (%)")
        ax.legend(fontsize=LEGEND_PT - 1, loc="best")   # 'best' keeps it off the points and lines
    fig.tight_layout()
    return _stamp(fig, tables, cfg)


# --- backbones -----------------------------------------------------------------------------------------------

def _place_labels(ax, points: list[tuple[float, float, str, str]]) -> None:
    """Name each point (x, y, text, colour) beside it, trying a few offsets in turn so that no label overlaps
    another, a marker or the axes' edge."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    markers = [ax.transData.transform((x, y)) for x, y, _, _ in points]
    placed = []
    offsets = [(5, 4, "left"), (5, -12, "left"), (-5, 4, "right"), (-5, -12, "right"), (5, 14, "left"),
               (-5, 14, "right"), (5, -22, "left"), (-5, -22, "right")]
    for x, y, text, colour in points:
        for dx, dy, ha in offsets:
            t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=LEGEND_PT - 1,
                            color=colour, ha=ha)
            bb = t.get_window_extent(renderer)
            inside = bb.x0 >= box.x0 + 1 and bb.x1 <= box.x1 - 1 and bb.y0 >= box.y0 + 1 and bb.y1 <= box.y1 - 1
            clear = not any(bb.overlaps(p) for p in placed) and not any(
                bb.x0 - 2 <= mx <= bb.x1 + 2 and bb.y0 - 2 <= my <= bb.y1 + 2 for mx, my in markers)
            if inside and clear:
                placed.append(bb)
                break
            t.remove()
        else:  # no free place: the first offset, even if crowded
            placed.append(ax.annotate(text, (x, y), xytext=offsets[0][:2], textcoords="offset points",
                                      fontsize=LEGEND_PT - 1, color=colour).get_window_extent(renderer))


def backbone_plot(tables: list[Table], cfg, this_run: Table | None = None):
    """R@1 against forward cost per image (GMACs of the backbone, log scale): each backbone sweep (its recipe in
    the legend), this run's model (cfg's backbone) when given, and the paper's backbones; point labels placed not
    to collide."""
    from ..model_stats import stats   # measured once per backbone and size, then cached on disk

    this_run_gmacs = stats(cfg.backbone, cfg.image_size)["gmacs"] if this_run is not None else None
    fig, ax = plt.subplots(figsize=(9, 5))
    xs, ys, points = list(paper.BACKBONES["flops_G"].astype(float)), list(paper.BACKBONES["R@1"]), []
    for t, marker in zip(tables, itertools.cycle("ovD^")):
        ours = _ours(t)
        line = ax.errorbar(ours[GMACS].astype(float), ours["R@1"], yerr=ours["R@1_std"].astype(float).fillna(0),
                           fmt=marker, capsize=3, label=f"ours, {series_name(t)}")
        colour = line[0].get_color()
        points += [(float(r[GMACS]), float(r["R@1"]), str(r["row"]), colour) for _, r in ours.iterrows()]
        xs += list(ours[GMACS].astype(float))
        ys += list(ours["R@1"] + ours["R@1_std"].astype(float).fillna(0))
    if this_run is not None and this_run_gmacs:
        r1 = float(_ours(this_run)["R@1"].iloc[0])
        ax.plot([this_run_gmacs], [r1], marker="*", ms=14, ls="none", color="tab:red",
                label=f"this run ({this_run.name}): {this_run.recipe}")
        points.append((this_run_gmacs, r1, "this run", "tab:red"))
        xs.append(this_run_gmacs)
        ys.append(r1)
    p = paper.BACKBONES
    ax.plot(p["flops_G"], p["R@1"], ls="none", marker="s", mfc="white", color="0.4", label="paper's (University-1652)")
    points += [(float(r["flops_G"]), float(r["R@1"]), str(r["backbone"]), "0.35") for _, r in p.iterrows()]
    ax.set_xscale("log")
    xs = [x for x in xs if x > 0 and not math.isnan(x)]
    ax.set_xlim(min(xs) / 2.5, max(xs) * 4)   # room either side for the names
    ax.set_ylim(-0.06 * max(ys), max(ys) * 1.45 + 1)   # below 0 a little: a label under a point near 0 still fits
    ax.set(title="R@1 against backbone cost", xlabel=f"{GMACS} at the run's size (the paper's 'FLOPs')",
           ylabel="R@1 (%)")
    ax.axhline(0, color="0.7", lw=0.6)
    ax.legend(fontsize=LEGEND_PT - 1, loc="upper left")
    fig.tight_layout()
    fig.canvas.draw()
    _place_labels(ax, points)
    return _stamp(fig, tables, cfg)


# --- re-ranking ----------------------------------------------------------------------------------------------

def rerank_plot(tables: list[Table], cfg, this_run: Table | None = None):
    """R@k before and after re-ranking, one panel per source with re-ranked rows (its recipe in the title), this
    run's last when given, and the paper's VLM table in greys; one y-range for every panel (0 to at most 100 %),
    rows named under their bars, one legend for the metrics above the panels."""
    panels, shown = [], []
    for t in [*tables, *([this_run] if this_run is not None else [])]:
        ours = _ours(t)
        if not t.kind_spec.all_reranked and "stage" in ours:  # the variants that were re-ranked: their rows only
            reranked = set(ours.loc[ours["stage"] != "retrieval", "variant"])
            ours = ours[ours["variant"].isin(reranked)]
        if len(ours):
            panels.append((f"this run ({t.name}): {t.recipe}" if t is this_run else series_name(t), ours, False))
            shown.append(t)
    panels.append(("paper's (University-1652, published)", paper.VLMS.rename(columns={"vlm": "row"}), True))
    top = _recall_top([v for _, rows, _ in panels for m in RECALLS for v in
                       rows[m].astype(float) + (rows[f"{m}_std"].astype(float).fillna(0) if f"{m}_std" in rows else 0)])
    top = min(100.0, max(top, 10.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(10, 1.5 * sum(len(r) for _, r, _ in panels) + 1.5), 5.4),
                             squeeze=False, sharey=True, gridspec_kw={"width_ratios": [len(r) for _, r, _ in panels]})
    width = 0.8 / len(RECALLS)
    for ax, (title, rows, is_paper) in zip(axes[0], panels):
        xs = np.arange(len(rows))
        for i, m in enumerate(RECALLS):
            std = rows[f"{m}_std"].astype(float) if f"{m}_std" in rows else None
            std = None if std is None or std.isna().all() else std.fillna(0)   # one seed, or the paper's: no bars
            ax.bar(xs + (i - 1) * width, rows[m].astype(float), width, yerr=std, capsize=2,
                   color=PAPER_GREYS[m] if is_paper else COLORS[m], edgecolor="0.2" if is_paper else None, lw=0.5,
                   label=m)
        ax.set_xticks(xs, [textwrap.fill(str(r), 16) for r in rows["row"]], fontsize=LEGEND_PT - 1)
        ax.set_title(textwrap.fill(title, 14 * len(rows) + 10), fontsize=9)
        ax.set_ylim(0, top)
    axes[0][0].set_ylabel("recall (%)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[m]) for m in RECALLS]
    handles += [plt.Rectangle((0, 0), 1, 1, facecolor=PAPER_GREYS["R@1"], edgecolor="0.2")]
    fig.legend(handles, [*RECALLS, "paper's (greys: R@1, R@5, R@10)"], loc="upper center", ncol=4,
               fontsize=LEGEND_PT, frameon=False, bbox_to_anchor=(0.5, 0.995))
    fig.suptitle("before and after re-ranking the top 10 (R@10 cannot move)", y=0.94, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return _stamp(fig, shown, cfg)   # the stamp names only the sources drawn
