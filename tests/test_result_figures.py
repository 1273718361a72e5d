"""Figures of notebooks 04-05 for the defects a reader hit (issue 21, teaching review r3 section 3): one y-range to
at most 100 % where panels compare, legends inside their axes and off the data, every series naming its recipe,
point labels that do not collide, counts readable on their cells, the request sheet marking the true tile, and
free text drawn at a bounded length (issue 22 item 1)."""
from __future__ import annotations

from io import BytesIO
from types import SimpleNamespace

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from PIL import Image  # noqa: E402

from tests.figure_checks import assert_legends_clear, assert_shared_y  # noqa: E402
from vici_utils import results  # noqa: E402
from vici_utils.figures import rerank as rerank_figures  # noqa: E402
from vici_utils.figures import results as result_figures  # noqa: E402
from vici_utils.params import validate  # noqa: E402
from vici_utils.rerank.prompt import ImagePart, Request  # noqa: E402

CFG = validate({"run_name": "figs"})


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def recorded():
    return results.recorded_tables()


def test_drone_rate_legends_sit_inside_clear_of_the_data_and_name_each_recipe(recorded):
    drone = results.of_kind(recorded, "drone_rate")
    fig = result_figures.drone_rate_plot(drone, CFG)
    assert_legends_clear(fig)
    for ax in fig.axes:
        assert 0 == ax.get_ylim()[0] and ax.get_ylim()[1] <= 100, "recall axes from 0 to at most 100 %"
        assert min(t.get_fontsize() for t in ax.get_legend().get_texts()) >= 7, "a legend one can read"
    labels = " ".join(t.get_text().replace("\n", " ") for t in fig.axes[0].get_legend().get_texts())
    assert "drone_rate (recorded): 48 epochs (the default recipe), 5 seeds (0-4)" in labels
    assert "(P 0 -> 0.3: +3.25)" in labels, "the change in full, not cut"


def test_rerank_panels_share_one_y_range_never_above_100(recorded):
    vlms = results.of_kind(recorded, "vlms")
    fig = result_figures.rerank_plot(vlms, CFG)
    panels = [ax for ax in fig.axes if ax.patches]
    assert len(panels) == 2, "the recorded sweep and the paper's table"
    assert_shared_y(panels)
    assert panels[0].get_ylim()[1] <= 100
    assert "48 epochs (the default recipe)" in panels[0].get_title(), "the recorded panel says its recipe"
    assert not any(ax.get_legend() for ax in panels), "one figure legend for the metrics, above the panels"
    greys = {tuple(np.round(p.get_facecolor()[:3], 3)) for p in panels[-1].patches}
    assert all(r == g == b for r, g, b in greys), "the paper's bars are grey, as the stamp says"


def test_backbone_labels_do_not_collide_and_this_run_is_a_point(recorded, outputs):
    backbones = results.of_kind(recorded, "backbones")
    row = {"sweep": "mine", "table": "", "variant": "mine", "run": "mine", "label": "mine", "status": "ok", "seed": 0,
           "R@1": 25.7, "R@5": 63.8, "R@10": 82.8, "AP": 34.3, "param.epochs": 48}
    this_run = results.build_table(pd.DataFrame([row]), "mine")
    fig = result_figures.backbone_plot(backbones, CFG, this_run)
    ax = fig.axes[0]
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in ax.texts]
    assert not [(a.get_text(), b.get_text()) for i, a in enumerate(ax.texts) for b in ax.texts[i + 1:]
                if a.get_window_extent().overlaps(b.get_window_extent())], "labels collide"
    frame = ax.get_window_extent()
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 for b in boxes), "a label off the axes"
    assert "this run" in {t.get_text() for t in ax.texts}
    assert any("this run (mine): 48 epochs" in t.get_text() for t in ax.get_legend().get_texts())


def test_counts_are_drawn_in_the_colour_that_reads_on_their_cell():
    assert rerank_figures.readable_on("navy") == "white" and rerank_figures.readable_on("white") == "black"
    ranks = [1] * 139 + [2] * 20 + [3] * 4 + [1] * 2
    after = [1] * 139 + [2] * 19 + [1] + [4] * 4 + [1] * 2
    result = SimpleNamespace(metrics={"headline": "weighted", "top_k": 10},
                             per_query=pd.DataFrame({"rank_retrieval": ranks, "rank_weighted": after}))
    fig = rerank_figures.rank_moves(result, CFG)
    ax = fig.axes[0]
    colours = {t.get_text(): t.get_color() for t in ax.texts}
    assert colours["141"] == "white", "the largest count sits on the darkest cell"
    image = ax.get_images()[0]
    for t in ax.texts:  # each count against its own cell
        x, y = (round(v) for v in t.get_position())
        cell = image.cmap(image.norm(image.get_array()[y, x]))
        assert t.get_color() == rerank_figures.readable_on(cell)


def _png(colour) -> bytes:
    buf = BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, "PNG")
    return buf.getvalue()


def test_request_sheet_marks_the_true_tile_and_draws_bounded_text():
    k = 4
    parts = ["You are given a ground photo and satellite images. " * 6, ImagePart(_png("gray"), "image/png")]
    for i in range(k):
        parts += [f"Satellite image {i + 1}:", ImagePart(_png("green"), "image/png")]
    parts.append("Answer with JSON. " * 5)
    request = Request(0, "q0", 0, list(range(k)), [f"g{i}" for i in range(k)], parts)
    answer = {"answered by": "x", "ranking (candidate numbers, best first)": [2, 1, 3, 4], "reason": "word " * 400}
    fig = rerank_figures.request_sheet(request, CFG, answer, true_candidate=2)
    titled = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    true = [t for t in titled if "(true tile)" in t]
    assert len(true) == 1 and true[0].startswith("Satellite image 2")
    assert to_rgb(titled[true[0]].spines["top"].get_edgecolor()) == to_rgb("tab:green")
    prompt = [t for ax in fig.axes for t in ax.texts if "ground photo" in t.get_text()]
    assert prompt and prompt[0].get_fontsize() >= 8, "the prompt readable without zooming"
    drawn = " ".join(t.get_text() for t in fig.texts)
    assert drawn.count("word") * 5 <= rerank_figures.REASON_CHARS, "a model's reason drawn at bounded length"
    assert "true tile: 2" in fig._suptitle.get_text()


def test_bounded_cuts_on_a_word_and_keeps_short_text():
    assert rerank_figures.bounded("short  reason\n") == "short reason"
    cut = rerank_figures.bounded("abcdefgh " * 100, most=50)
    assert len(cut) <= 50 and cut.endswith("...")
