"""Figures for notebook 05: our sweeps (vici_utils.results tables) beside the paper's published numbers.

With no sweep in outputs/ (a fresh clone), `recorded_tables` reads back the measurements the repository
records in README.md's results section (written by `python -m vici_utils results`), labelled as recorded,
so that the notebook still shows what the embedded sweeps measured.
"""
from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import paper
from ..metrics import RECALLS
from ..paths import REPO_ROOT
from ..results import KINDS, Table
from ..results.render import README_END, README_START
from . import stamp

COLORS = {"R@1": "tab:blue", "R@5": "tab:orange", "R@10": "tab:green"}
PAPER_GREYS = ("0.3", "0.5", "0.7", "0.85")
PAPER_STYLE = dict(ls="--", marker="s", mfc="white", alpha=0.8)
RECORDED = "recorded in README.md"   # names the tables read back from the README


def _ours(t: Table):
    """The rows that are ours (not the paper-only ones appended at the end)."""
    return t.rows[t.rows["row"].fillna("") != ""]


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


# --- the measurements recorded in README.md ------------------------------------------------------------------

def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _number(text: str) -> tuple[float, float]:
    """'6.10 ± 1.12' -> (6.10, 1.12); '7.39' -> (7.39, nan); '' -> (nan, nan)."""
    parts = [p.strip() for p in text.split("±")]
    try:
        mean = float(parts[0]) if parts[0] else math.nan
        return mean, float(parts[1]) if len(parts) > 1 else math.nan
    except ValueError:
        return math.nan, math.nan


def _table_from_section(name: str, kind: str, lines: list[str], date: str) -> Optional[Table]:
    provenance = [ln[2:].strip() for ln in lines if ln.startswith("- ")]
    grid = [_cells(ln) for ln in lines if ln.startswith("|")]
    if len(grid) < 3:
        return None
    header, body = grid[0], grid[2:]
    ours_cols = header[:header.index("paper's row")] if "paper's row" in header else header
    rows = []
    for cells in body:
        r = dict(zip(header, cells))
        if not r.get("ours"):
            continue   # a paper-only row
        row = {"row": r["ours"]}
        for c in ours_cols[1:]:
            if c in RECALLS:
                row[c], row[f"{c}_std"] = _number(r[c])
            elif c == "seeds":
                row["n"] = int(r[c]) if r[c].isdigit() else math.nan
            elif re.fullmatch(r"-?\d+", r[c]):
                row[c] = int(r[c])   # counts (pixels, dims) stay integers
            else:
                value = _number(r[c])[0]
                row[c] = r[c] if math.isnan(value) and r[c] else value
        rows.append(row)
    if not rows:
        return None
    extra = [c for c in ours_cols[1:] if c not in RECALLS and c != "seeds"]
    findings = [ln.removeprefix("Measured: ") for ln in lines if ln.startswith("Measured: ")]
    return Table(f"{name} ({RECORDED}, {date})", kind, pd.DataFrame(rows), provenance, extra, findings=findings)


def recorded_tables(kind: str, readme: Path = REPO_ROOT / "README.md") -> list[Table]:
    """The tables of this kind that README.md's results section records (one per sweep), our rows only,
    named '<sweep> (recorded in README.md, <date>)'; [] when the README records none."""
    try:
        doc = Path(readme).read_text()
    except OSError:
        return []
    start, end = doc.find(README_START), doc.find(README_END)
    if start < 0 or end < start:
        return []
    section = doc[start + len(README_START):end]
    date = re.search(r"on (\d{4}-\d{2}-\d{2})", section)
    date = date.group(1) if date else "undated"
    tables, heading, lines = [], None, []
    for line in section.splitlines() + ["### end"]:
        if line.startswith("### "):
            if heading:
                t = _table_from_section(*heading, lines, date)
                if t is not None:
                    tables.append(t)
            m = re.match(r"### (.+): `([^`]+)`", line)
            title_kind = {k.title: name for name, k in KINDS.items()}
            heading = (m.group(2), title_kind.get(m.group(1), "")) if m else None
            heading = heading if heading and heading[1] == kind else None
            lines = []
        else:
            lines.append(line)
    return tables


def show_recorded(tables: list[Table]) -> None:
    """Display recorded tables in a notebook: where they came from, then our rows as the README has them."""
    from IPython.display import Markdown, display

    for t in tables:
        lines = [f"**{t.name}**: measured by an earlier `make tables`, not by runs in this outputs folder",
                 *(f"- {line}" for line in t.provenance)]
        display(Markdown("\n".join(lines)))
        shown = t.rows.drop(columns=[c for c in t.rows if c.endswith("_std")] + ["n"], errors="ignore").copy()
        for m in RECALLS:
            shown[m] = [f"{v:.2f}" + ("" if math.isnan(s) else f" ± {s:.2f}")
                        for v, s in zip(t.rows[m], t.rows[f"{m}_std"])]
        shown["seeds"] = t.rows.get("n")
        display(shown.rename(columns={"row": "ours"}).set_index("ours"))
        if t.findings:
            display(Markdown("\n\n".join(f"Measured (recorded): {sentence}" for sentence in t.findings)))


# --- figures -------------------------------------------------------------------------------------------------

def _at(frame: pd.DataFrame, col: str, rate: float, metric: str) -> float:
    hit = frame.loc[np.isclose(frame[col].astype(float), rate), metric]
    return float(hit.iloc[0]) if len(hit) else math.nan


def _effect(frame: pd.DataFrame, col: str, metric: str) -> str:
    """' (P 0 -> 0.3: +3.0)': the change the paper's choice of P makes, when both rates are there."""
    d = _at(frame, col, 0.3, metric) - _at(frame, col, 0.0, metric)
    return "" if math.isnan(d) else f" (P 0 -> 0.3: {d:+.1f})"


def drone_rate_plot(tables: list[Table], cfg):
    """R@k against the drone substitution rate P: each sweep (mean ± std over seeds) and the paper, on axes that
    start at 0, with the change from P = 0 to the paper's P = 0.3 in the legend."""
    fig, axes = plt.subplots(1, len(RECALLS), figsize=(12, 3.9))
    for ax, m in zip(axes, RECALLS):
        top = float(paper.DRONE_RATE[m].max())
        for t, marker in zip(tables, itertools.cycle("ovD^")):
            ours = _ours(t).sort_values("P")
            std = ours[f"{m}_std"].astype(float).fillna(0)
            ax.errorbar(ours["P"].astype(float), ours[m], yerr=std, marker=marker, color=COLORS[m], capsize=3,
                        label=f"ours: {t.name}{_effect(ours, 'P', m)}")
            top = max(top, float((ours[m] + std).max()))
        ax.plot(paper.DRONE_RATE["drone_rate"], paper.DRONE_RATE[m], color="0.4",
                label=f"paper's{_effect(paper.DRONE_RATE, 'drone_rate', m)}", **PAPER_STYLE)
        ax.set_ylim(0, top * 1.45)   # from 0, so a point or two looks its size; headroom for the legend
        ax.set(title=f"{m} against drone rate P", xlabel="P (drone image replaces satellite)", ylabel=f"{m} (%)")
        ax.legend(fontsize=6.5, loc="upper left")
    fig.tight_layout()
    return _stamp(fig, tables, cfg)


def backbone_plot(tables: list[Table], cfg):
    """R@1 against forward cost per image (GMACs, log scale): each backbone sweep and the paper's backbones."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = list(paper.BACKBONES["flops_G"].astype(float))
    for t, marker in zip(tables, itertools.cycle("ovD^")):
        ours = _ours(t)
        ax.errorbar(ours["GMACs"].astype(float), ours["R@1"], yerr=ours["R@1_std"].astype(float).fillna(0),
                    fmt=marker, capsize=3, label=f"ours: {t.name}")
        for i, (_, r) in enumerate(ours.iterrows()):
            ax.annotate(r["row"], (r["GMACs"], r["R@1"]), fontsize=7, xytext=(4, 3 - 12 * (i % 2)),
                        textcoords="offset points")
        xs += list(ours["GMACs"].astype(float))
    p = paper.BACKBONES
    ax.plot(p["flops_G"], p["R@1"], ls="none", marker="s", mfc="white", color="0.4", label="paper's (University-1652)")
    for i, (_, r) in enumerate(p.iterrows()):
        ax.annotate(r["backbone"], (r["flops_G"], r["R@1"]), fontsize=7, color="0.4", xytext=(4, -9 + 12 * (i % 2)),
                    textcoords="offset points")
    ax.set_xscale("log")
    xs = [x for x in xs if x > 0 and not math.isnan(x)]
    ax.set_xlim(min(xs) / 1.6, max(xs) * 3)   # room right of the costliest point for its name
    ax.set_ylim(0, None)
    ax.set(title="R@1 against backbone cost", xlabel="GMACs per image at the run's size (the paper's 'FLOPs')",
           ylabel="R@1 (%)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _stamp(fig, tables, cfg)


def _short(label: str, most: int = 60) -> str:
    """A legend label of at most `most` characters, keeping its end (the fusion rule tells rows apart)."""
    return label if len(label) <= most else label[:most - 22] + "..." + label[-19:]


def rerank_plot(tables: list[Table], cfg):
    """R@k before and after re-ranking, one panel per source with re-ranked rows, and the paper's VLM table
    (in greys)."""
    panels, shown = [], []
    for t in tables:
        ours = _ours(t)
        if t.kind == "vlms" or "stage" not in ours:
            panels.append((t.name, ours, False))
            shown.append(t)
        else:  # the variants that were re-ranked: their retrieval row and re-ranked row(s)
            reranked = set(ours.loc[ours["stage"] != "retrieval", "variant"])
            if reranked:
                panels.append((t.name, ours[ours["variant"].isin(reranked)], False))
                shown.append(t)
    theirs = paper.VLMS.rename(columns={"vlm": "row"})
    panels.append(("paper's (University-1652)", theirs, True))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.6), squeeze=False)
    for ax, (title, rows, is_paper) in zip(axes[0], panels):
        width = 0.8 / max(len(rows), 1)
        for i, (_, r) in enumerate(rows.iterrows()):
            xs = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(RECALLS))]
            errs = [r.get(f"{m}_std") for m in RECALLS]
            errs = None if any(e is None or math.isnan(e) for e in errs) else errs  # one seed, or the paper's
            colour = PAPER_GREYS[i % len(PAPER_GREYS)] if is_paper else None
            ax.bar(xs, [r[m] for m in RECALLS], width, yerr=errs, capsize=2, color=colour,
                   edgecolor="0.2" if is_paper else None, lw=0.5, label=_short(str(r["row"])))
        ax.set_xticks(range(len(RECALLS)), RECALLS)
        ax.set_ylim(0, max(float(rows[list(RECALLS)].max().max()), 1) * 1.6)   # headroom for the legend
        ax.set(ylabel="recall (%)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle("before and after re-ranking the top 10 (R@10 cannot move)")
    fig.tight_layout()
    return _stamp(fig, shown, cfg)   # the stamp names only the sources drawn
