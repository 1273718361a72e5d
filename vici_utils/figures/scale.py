"""Notebook 03's scale figure: accuracy against gallery size, exact against compressed search."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter

from . import stamp

MEASURES = ("R@1", "R@10", "AP")


def gallery_size_figure(curve, cfg, model: str):
    """R@1, R@10 and AP (%) against gallery size (log scale) from gallery.size_curve: exact search solid, the
    compressed index (its top 10 after re-scoring; AP from the top 10 alone, a lower bound) dashed."""
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(10, 3.2), sharex=True)
    for ax, measure in zip(axes, MEASURES):
        for search, style in (("exact", "-o"), ("compressed", "--s")):
            part = curve[curve.search == search]
            label = "exact (flat)" if search == "exact" else f"compressed: {part['index'].iloc[-1]}"
            ax.plot(part["size"], part[measure], style, label=label, ms=4)
        ax.set_xscale("log")
        sizes = sorted(curve["size"].unique())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(sizes, _size_labels(sizes), fontsize=7, rotation=30)
        ax.set_xlabel("gallery tiles")
        ax.set_title(measure + (" (%)" if measure != "AP" else " (%; compressed: top-10 lower bound)"), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    fig.suptitle("Street -> satellite accuracy as distractor tiles join the gallery", fontsize=10)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, ncol=2, loc="upper center",
               bbox_to_anchor=(0.5, 0.93), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    return stamp(fig, cfg, model=model)


def _size_labels(sizes, apart: float = 1.5) -> list[str]:
    """Tick labels for sorted gallery sizes on a log axis: the largest always, a smaller one only if it is at
    least `apart` times below the last labelled (20,000 beside 20,200 would print one over the other)."""
    labels, last = [], None
    for n in reversed(sizes):
        keep = last is None or last / n >= apart
        labels.append(f"{n:,}" if keep else "")
        last = n if keep else last
    return labels[::-1]
