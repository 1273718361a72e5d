"""Figures for the notebooks, one module per notebook topic. Every figure says which data and model it shows.

The provenance lines (describe_*) live in vici_utils.provenance, the one place to import them from.
What the topic modules share lives here: `stamp` (the provenance line under a figure) and `framed` (an image
panel with a coloured frame).
"""
from __future__ import annotations

from ..provenance import describe_data, describe_model

__all__ = ["framed", "legend_below", "stamp"]

STAMP_PT = 7          # font size of the stamp
STAMP_GAP_IN = 0.08   # inches between the lowest drawn thing and the stamp, and under the stamp


def framed(ax, image=None, title: str = "", colour: str | None = None, width: float = 3.0, fontsize: float = 7):
    """An image panel: `image` (an array or PIL image; None draws nothing) without ticks, `title` above it, and a
    frame of `colour`, `width` points thick ("none": no frame; None: matplotlib's thin black one)."""
    if image is not None:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    if colour is not None:
        for side in ax.spines.values():
            side.set_edgecolor(colour)
            side.set_linewidth(width)
    if title:
        drawn = width if colour not in (None, "none") else 0.0
        ax.set_title(title, fontsize=fontsize, pad=2 + drawn)   # clear of a thick frame


def legend_below(fig, handles=None, labels=None, ncol: int = 3, fontsize: float = 8):
    """One legend for the whole figure, under its panels, where it can cover neither data nor another panel:
    the panels are laid out again (tight_layout) above it. Without handles, those of every axes are collected
    (each label once)."""
    if handles is None:
        seen = {}
        for ax in fig.axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if not lab.startswith("_"):
                    seen.setdefault(lab, h)
        labels, handles = list(seen), list(seen.values())
    for ax in fig.axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    legend = fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=ncol,
                        fontsize=fontsize, frameon=False)
    height = legend.get_window_extent(_renderer(fig)).height / fig.bbox.height
    fig.tight_layout(rect=(0, height + 0.01, 1, 1))
    return legend


def _renderer(fig):
    canvas = fig.canvas
    if not hasattr(canvas, "get_renderer"):  # a backend without one: measure with Agg
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(fig)
    return canvas.get_renderer()


def _content_bottom(fig, renderer) -> float:
    """Lowest point, in inches from the figure's bottom edge, of anything drawn (axes with their labels and
    ticks, figure texts, figure legends); negative when something already hangs below the figure."""
    for a in fig.axes:
        a.apply_aspect()  # images shrink their axes to keep square pixels; measure what will be drawn
    boxes = [a.get_tightbbox(renderer) for a in fig.axes if a.get_visible()]
    boxes += [t.get_window_extent(renderer) for t in fig.texts if t.get_visible() and t.get_text()]
    boxes += [lg.get_window_extent(renderer) for lg in fig.legends]
    lows = [b.y0 for b in boxes if b is not None and b.height > 0]
    return min(lows) / fig.dpi if lows else 0.0


def _grow_bottom(fig, inches: float) -> None:
    """Add `inches` at the bottom of the figure (remove them when negative), keeping every axes and figure
    text where it is relative to the top: their sizes in inches do not change."""
    w, h = fig.get_size_inches()
    new_h = h + inches
    # figure-legend anchors in inches, read before the resize rescales their display coordinates
    anchors = [(lg, lg.get_bbox_to_anchor().x0 / fig.dpi, lg.get_bbox_to_anchor().y0 / fig.dpi) for lg in fig.legends]
    fig.set_size_inches(w, new_h, forward=False)
    for ax in fig.axes:
        p = ax.get_position()
        ax.set_position([p.x0, (p.y0 * h + inches) / new_h, p.width, p.height * h / new_h])
    for t in fig.texts:
        x, y = t.get_position()
        t.set_position((x, (y * h + inches) / new_h))
    for lg, x, y in anchors:   # a figure legend stays where it was relative to the axes above it
        lg.set_bbox_to_anchor((x / w, (y + inches) / new_h), transform=fig.transFigure)


def drawable(text: str) -> str:
    """`text` with each character the figures' font cannot draw replaced by '?': matplotlib would otherwise draw
    a box and warn once per glyph and drawing (a non-ASCII data_root gave about 140 warnings a run)."""
    if text.isascii():
        return text
    import matplotlib
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    font = FT2Font(font_manager.findfont(font_manager.FontProperties(family=matplotlib.rcParams["font.family"])))
    return "".join(c if c.isascii() or font.get_char_index(ord(c)) else "?" for c in text)


def stamp(fig, cfg, model: str | None = None, data: str | None = None):
    """Write 'data: ... | model: ... | run: ...' under a figure, so a figure copied out of context still says
    where it came from. Pass model='' for figures of data alone.

    The figure is made taller or shorter at the bottom so that the stamp sits just under the lowest label:
    no overlap, and no band of empty space above it (a fixed fraction of a tall figure wasted inches)."""
    model = describe_model(cfg) if model is None else model
    parts = [f"data: {data or describe_data(cfg)}"]
    if model:
        parts.append(f"model: {model}")
    parts.append(f"run: {cfg.run_name}")
    renderer = _renderer(fig)
    bottom = _content_bottom(fig, renderer)
    label = fig.text(0.01, 0.0, drawable(" | ".join(parts)), fontsize=STAMP_PT, color="0.35", ha="left", va="bottom",
                     wrap=True)
    height = label.get_window_extent(renderer).height / fig.dpi   # wrapped to the figure's width
    _grow_bottom(fig, height + 2 * STAMP_GAP_IN - bottom)
    label.set_position((0.01, STAMP_GAP_IN / fig.get_figheight()))
    return fig
