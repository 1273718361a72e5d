"""Checks for the figure defects that bit, for any figure the package draws (import these in figure tests):

- `assert_title(fig, expected)`: the figure's title (suptitle, else the single axes' title) starts with the title
  passed in, so a caption cannot overwrite it;
- `assert_legends_clear(fig)`: every legend lies inside the figure, an axes legend inside its own axes, a figure
  legend over no axes and no figure text (the title, the stamp); and no legend covers plotted data (lines, bars,
  markers, filled areas) of any axes;
- `assert_tick_labels_apart(fig)`: no two tick labels of one axis overlap;
- `assert_shared_y(axes)`: panels that compare one quantity have one y-range.
"""
from __future__ import annotations

import numpy as np
from matplotlib.collections import LineCollection, PathCollection, PolyCollection
from matplotlib.patches import Rectangle

TOLERANCE_PX = 1.0


def _draw(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _inside(inner, outer, tol=TOLERANCE_PX) -> bool:
    return (inner.x0 >= outer.x0 - tol and inner.x1 <= outer.x1 + tol and inner.y0 >= outer.y0 - tol
            and inner.y1 <= outer.y1 + tol)


def _overlap(a, b, tol=TOLERANCE_PX) -> bool:
    return a.x0 < b.x1 - tol and b.x0 < a.x1 - tol and a.y0 < b.y1 - tol and b.y0 < a.y1 - tol


def _points_in(points: np.ndarray, box, tol=TOLERANCE_PX) -> bool:
    if not len(points):
        return False
    p = points[np.isfinite(points).all(1)]
    return bool(((p[:, 0] > box.x0 + tol) & (p[:, 0] < box.x1 - tol)
                 & (p[:, 1] > box.y0 + tol) & (p[:, 1] < box.y1 - tol)).any())


def _densify(xy: np.ndarray, step_px: float = 2.0) -> np.ndarray:
    """Points every few pixels along a polyline (display coordinates), so a segment crossing a box is caught."""
    xy = xy[np.isfinite(xy).all(1)]
    if len(xy) < 2:
        return xy
    out = [xy[:1]]
    for a, b in zip(xy[:-1], xy[1:]):
        n = max(2, int(np.hypot(*(b - a)) / step_px) + 1)
        out.append(a + (b - a) * np.linspace(0, 1, n)[1:, None])
    return np.concatenate(out)


def data_under(ax, box) -> list[str]:
    """What of the axes' plotted data lies inside `box` (display coordinates): a description per artist."""
    hits = []
    clip = ax.get_window_extent()
    for line in ax.get_lines():
        if not line.get_visible() or len(line.get_xydata()) == 0:
            continue
        xy = line.get_transform().transform(line.get_xydata())
        pts = _densify(xy) if line.get_linestyle() not in ("None", "none", "") else xy
        pts = pts[(pts[:, 0] >= clip.x0) & (pts[:, 0] <= clip.x1) & (pts[:, 1] >= clip.y0) & (pts[:, 1] <= clip.y1)]
        if _points_in(pts, box):
            hits.append(f"line {line.get_label()!r}")
    for patch in ax.patches:
        if isinstance(patch, Rectangle) and patch.get_visible() and patch.get_height() and patch.get_width():
            if _overlap(patch.get_window_extent(), box):
                hits.append(f"bar at x={patch.get_x():.3g} (height {patch.get_height():.3g})")
    for coll in ax.collections:
        if not coll.get_visible():
            continue
        if isinstance(coll, PathCollection) and len(coll.get_offsets()):
            if _points_in(coll.get_offset_transform().transform(coll.get_offsets()), box):
                hits.append(f"markers {coll.get_label()!r}")
        elif isinstance(coll, (LineCollection, PolyCollection)):
            for seg in (coll.get_segments() if isinstance(coll, LineCollection) else
                        [p.vertices for p in coll.get_paths()]):
                if len(seg) and _points_in(_densify(coll.get_transform().transform(np.asarray(seg))), box):
                    hits.append(f"{type(coll).__name__} {coll.get_label()!r}")
                    break
    return hits


def legend_problems(fig) -> list[str]:
    """Every way a legend of `fig` is misplaced, as sentences (empty: none)."""
    renderer = _draw(fig)
    problems = []
    legends = [(ax, ax.get_legend()) for ax in fig.axes if ax.get_legend() is not None]
    legends += [(None, lg) for lg in fig.legends]
    for owner, lg in legends:
        box = lg.get_window_extent(renderer)
        name = " / ".join(t.get_text() for t in lg.get_texts())[:60]
        if not _inside(box, fig.bbox):
            problems.append(f"legend '{name}' runs outside the figure")
        if owner is not None and not _inside(box, owner.get_window_extent(renderer)):
            problems.append(f"legend '{name}' lies outside its axes '{owner.get_title()}'")
        for ax in fig.axes:
            if owner is None and ax.get_visible() and ax.axison and _overlap(box, ax.get_window_extent(renderer)):
                problems.append(f"figure legend '{name}' covers the axes '{ax.get_title()}'")
            for hit in data_under(ax, box):
                problems.append(f"legend '{name}' covers {hit} of the axes '{ax.get_title()}'")
        if owner is None:
            for t in fig.texts + [fig._suptitle] * (fig._suptitle is not None):
                if t.get_visible() and t.get_text() and _overlap(box, t.get_window_extent(renderer)):
                    problems.append(f"figure legend '{name}' covers the figure text '{t.get_text()[:40]}'")
    return problems


def tick_label_overlaps(fig) -> list[str]:
    """Pairs of overlapping tick labels on any axis of `fig`, as sentences (empty: none)."""
    renderer = _draw(fig)
    problems = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
            boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in labels]
            for i, (a, ba) in enumerate(boxes):
                problems += [f"tick labels {a!r} and {b!r} overlap on the axes '{ax.get_title()}'"
                             for b, bb in boxes[i + 1:] if _overlap(ba, bb)]
    return problems


def assert_tick_labels_apart(fig) -> None:
    problems = tick_label_overlaps(fig)
    assert not problems, "\n".join(problems)


def assert_legends_clear(fig) -> None:
    problems = legend_problems(fig)
    assert not problems, "\n".join(problems)


def assert_title(fig, expected: str) -> None:
    """The figure's title begins with `expected` (the title passed in, or the figure's own fixed title)."""
    title = fig._suptitle.get_text() if fig._suptitle is not None else ""
    if not title:
        titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
        assert len(titled) == 1, f"no suptitle and {len(titled)} axes titles: {titled}"
        title = titled[0]
    assert title.startswith(expected), f"the title reads {title!r}, not {expected!r}"


def assert_shared_y(axes) -> None:
    """Panels that compare one quantity share one y-range."""
    ranges = {tuple(np.round(ax.get_ylim(), 6)) for ax in axes}
    assert len(ranges) == 1, f"the panels have {len(ranges)} y-ranges: {sorted(ranges)}"


__all__ = ["assert_legends_clear", "assert_shared_y", "assert_tick_labels_apart", "assert_title", "data_under",
           "legend_problems", "tick_label_overlaps"]
