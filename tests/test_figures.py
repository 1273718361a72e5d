"""The figures say what they show: equal histogram bins as shares, every true tile on view, one colour scale for
the similarity matrices, chance levels with gallery sizes, the target and cameras of the embedded world, no
empty table, and a stamp that neither overlaps nor leaves a band of empty space."""
from __future__ import annotations

import math
from types import SimpleNamespace

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from tests.conftest import TINY_WORLD  # noqa: E402
from tests.figure_checks import (assert_legends_clear, assert_shared_y, assert_tick_labels_apart,  # noqa: E402
                                 assert_title, legend_problems, tick_label_overlaps)
from vici_utils.figures import data as data_figures  # noqa: E402
from vici_utils.figures import results as result_figures  # noqa: E402
from vici_utils.figures import retrieval as retrieval_figures  # noqa: E402
from vici_utils.figures import scale as scale_figures  # noqa: E402
from vici_utils.figures import stamp  # noqa: E402
from vici_utils.figures import training as training_figures  # noqa: E402
from vici_utils.params import validate  # noqa: E402
from vici_utils.u1652 import ImageItem, RetrievalSet  # noqa: E402

CFG = validate({"run_name": "figs"})
BEST = validate({"run_name": "figs", "select_epoch": "best"})


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


# --- notebook 03 ------------------------------------------------------------------------------------------------

def _fake_result(tmp_path, ranks: list[int], n_gallery: int = 30):
    """A RetrievalResult-like object whose query i finds its true tile at rank ranks[i]."""
    img = tmp_path / "img.png"
    Image.new("RGB", (16, 16), (90, 120, 60)).save(img)
    gallery = [ImageItem(img, f"{b:04d}", f"{b:04d}") for b in range(n_gallery)]
    queries = [ImageItem(img, f"{i:04d}", f"{i:04d}/q.jpg") for i in range(len(ranks))]
    scores = np.zeros((len(ranks), n_gallery), np.float32)
    for qi, rank in enumerate(ranks):
        others = [g for g in range(n_gallery) if g != qi]
        order = others[:rank - 1] + [qi] + others[rank - 1:]        # gallery indices, best first
        scores[qi, order] = np.linspace(0.9, 0.1, n_gallery)
    top = np.argsort(-scores, 1)[:, :10]
    ranks_a = np.array(ranks)
    cmc = np.array([100 * np.mean(ranks_a <= k) for k in range(1, n_gallery + 1)])
    metrics = {"first_match_rank": ranks_a, "n_gallery": n_gallery, "n_query": len(ranks), "cmc": cmc,
               "R@1": cmc[0], "ap": 100 / (2 * ranks_a)}
    return SimpleNamespace(test=RetrievalSet(queries, gallery), scores=scores, topk_indices=top,
                           topk_scores=np.take_along_axis(scores, top, 1), metrics=metrics,
                           model_description="fake model")


def test_rank_histogram_has_equal_bins_that_show_shares(tmp_path):
    ranks = [1, 1, 2, 3, 7, 12, 19, 25, 30, 44, 60, 150, 180, 200]
    result = _fake_result(tmp_path, [1])
    result.metrics |= {"first_match_rank": np.array(ranks), "n_gallery": 200,
                       "cmc": np.array([100 * np.mean(np.array(ranks) <= k) for k in range(1, 201)])}
    fig = retrieval_figures.rank_histogram(result, CFG)
    bars = [p for p in fig.axes[0].patches if isinstance(p, matplotlib.patches.Rectangle)]
    widths = {round(b.get_width(), 9) for b in bars}
    assert len(widths) == 1, f"bins of unequal width: {sorted(widths)}"
    assert sum(b.get_height() for b in bars) == pytest.approx(100), "bar heights are shares of the queries (%)"
    assert "share of queries" in fig.axes[0].get_ylabel()
    assert retrieval_figures.rank_bin_width(951) == 10 and retrieval_figures.rank_bin_width(200) == 2
    assert retrieval_figures.rank_bin_width(40) == 1


def test_retrieval_grid_shows_the_true_tile_when_it_ranks_beyond_the_top_10(tmp_path):
    result = _fake_result(tmp_path, [28, 1, 4])
    fig = retrieval_figures.retrieval_grid(result, CFG, [0, 1, 2])
    titles = _titles(fig)
    assert any(t.startswith("true tile: rank 28") for t in titles), titles
    assert sum(t.startswith("true tile: rank") for t in titles) == 1, "rows whose tile is in the top 10 add nothing"
    assert "1 at rank 1, 2 in the top 10" in fig._suptitle.get_text(), "the sample is compared with the whole set"
    assert_title(fig, "street query and its top-10 satellite tiles (green: the true tile")
    fig = retrieval_grid_titled = retrieval_figures.retrieval_grid(result, CFG, [1, 2], title="six random queries")
    assert_title(retrieval_grid_titled, "six random queries\n"), "no tile's caption may replace the title passed in"


def test_notebook_03_figures_keep_their_legends_clear_of_data_and_say_what_they_show(tmp_path):
    result = _fake_result(tmp_path, [1, 3, 1, 12, 2, 1, 7, 1, 25, 4])
    rng = np.random.default_rng(0)
    result.query_features = rng.normal(size=(10, 8))
    result.gallery_features = rng.normal(size=(30, 8))
    result.metrics |= {"R@5": 60.0, "R@10": 90.0, "n_gallery": 30}
    for fig in (retrieval_figures.rank_histogram(result, CFG),
                retrieval_figures.embedding_projection(result, CFG, n_highlight=9),
                retrieval_figures.query_tile_similarities(result, CFG)):
        assert_legends_clear(fig)
    sims = retrieval_figures.query_tile_similarities(result, CFG, max_buildings=5)
    assert "a sub-gallery of 5 tiles" in sims.axes[0].get_title(), "the title says the row maximum is over few tiles"
    pca = retrieval_figures.embedding_projection(result, CFG, n_highlight=9)
    colours = {tuple(np.round(c.get_facecolor()[0][:3], 3)) for c in pca.axes[0].collections[2:] if len(c.get_offsets())}
    assert not [c for c in colours if c[0] == c[1] == c[2]], "a highlighted building in grey hides among the grey points"
    legend = " ".join(t.get_text() for t in pca.legends[0].get_texts())
    assert "satellite tiles" in legend and "its satellite tile" in legend


def test_legend_checks_catch_a_legend_over_data_and_one_outside_its_axes():
    fig, (ax, bx) = plt.subplots(1, 2)
    ax.bar([0, 1, 2], [95, 94, 96])
    ax.legend(["tall bars"], loc="upper left")
    bx.plot([0, 1], [0, 1], label="curve")
    bx.legend(loc="upper left", bbox_to_anchor=(-0.5, 1.0))
    problems = legend_problems(fig)
    assert any("covers bar" in p for p in problems) and any("outside its axes" in p for p in problems), problems


def test_label_checks_catch_a_figure_legend_over_the_title_and_tick_labels_one_over_another():
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([1, 2], [1, 2], label="curve")
    fig.suptitle("a title")
    fig.legend(loc="upper center", bbox_to_anchor=(0.5, 1.0))
    ax.set_xticks([1.0, 1.01], ["20,000", "20,200"])
    assert any("covers the figure text 'a title'" in p for p in legend_problems(fig))
    assert tick_label_overlaps(fig) == ["tick labels '20,000' and '20,200' overlap on the axes ''"]


def test_gallery_size_figure_keeps_title_legend_and_size_labels_apart():
    """Notebook 03's scale figure (its stamp grows the figure at the bottom: the figure legend must move with the
    axes, not float up over the title), with sizes 20,000 and 20,200 side by side as in a 100x run."""
    rows = []
    for size, r1 in ((200, 25.7), (2000, 4.1), (20000, 0.55), (20200, 0.37)):
        rows += [(size, "exact", "flat", r1, 3 * r1, 1.2 * r1), (size, "compressed", "IVF128,PQ64", r1, 3 * r1, r1)]
    curve = pd.DataFrame(rows, columns=["size", "search", "index", "R@1", "R@10", "AP"])
    fig = scale_figures.gallery_size_figure(curve, validate({"run_name": "figs", "world_extra_distractors": 20000}),
                                            "a model")
    assert_title(fig, "Street -> satellite accuracy as distractor tiles join the gallery")
    assert_legends_clear(fig)
    assert_tick_labels_apart(fig)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["200", "2,000", "", "20,200"]


def test_shared_y_check_tells_one_range_from_several():
    fig, axes = plt.subplots(1, 3, sharey=True)
    for ax, top in zip(axes, (75, 130, 100)):
        ax.bar([0], [top])
    assert_shared_y(axes)
    fig, axes = plt.subplots(1, 3)
    for ax, top in zip(axes, (75, 130, 100)):
        ax.bar([0], [top])
    with pytest.raises(AssertionError, match="3 y-ranges"):
        assert_shared_y(axes)


def test_worst_failures_show_one_query_per_building(tmp_path):
    result = _fake_result(tmp_path, [25, 24, 3])
    result.test.queries.append(ImageItem(result.test.queries[0].path, "0000", "0000/q2.jpg"))  # a second query of 0000
    result.scores = np.vstack([result.scores, result.scores[:1]])
    result.topk_indices = np.vstack([result.topk_indices, result.topk_indices[:1]])
    result.topk_scores = np.vstack([result.topk_scores, result.topk_scores[:1]])
    result.metrics |= {"first_match_rank": np.array([25, 24, 3, 25]), "ap": np.array([2.0, 2.1, 16.7, 2.0])}
    fig = retrieval_figures.worst_failures(result, CFG, n=3)
    queries = [t for t in _titles(fig) if t.startswith("query")]
    assert queries == ["query 0000", "query 0001", "query 0002"]


# --- notebook 02 ------------------------------------------------------------------------------------------------

class _Towers(torch.nn.Module):
    """Two 'towers' that embed a batch to fixed vectors: collapsed (all alike) or distinct per building."""

    data_config = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

    def __init__(self, collapsed: bool):
        super().__init__()
        self.collapsed = collapsed

    def forward(self, street, satellite):
        n = len(street)
        base = torch.ones(n, 4)
        spread = torch.eye(n, 4) * (0.1 if self.collapsed else 3.0)
        return [torch.nn.functional.normalize(base + spread + d, dim=1) for d in (0.0, 0.01)]


def test_similarity_matrices_before_and_after_training_share_one_colour_scale():
    street, sat = torch.zeros(4, 3, 8, 8), torch.zeros(4, 3, 8, 8)
    clims = []
    for collapsed in (True, False):
        fig = training_figures.batch_similarities(_Towers(collapsed), street, sat, CFG, "t")
        clims.append([im.get_clim() for ax in fig.axes for im in ax.get_images() if im.get_array().shape == (4, 4)][0])
    assert clims[0] == clims[1] == training_figures.SIMILARITY_RANGE
    assert "chance: 1/4" in fig._suptitle.get_text()
    after = training_figures.batch_similarities(_Towers(False), street, sat, CFG, "after training",
                                                weights="trained checkpoint figs/train/best.pt")
    assert "weights: trained checkpoint figs/train/best.pt" in after.texts[-1].get_text()


def _log(val_r10=95.6):
    return pd.DataFrame({"epoch": [1, 2, 3, 4], "loss": [4.1, 3.0, 2.2, 2.0], "temperature": 0.1, "drone_rate": 0.3,
                         "eval_set": "val", "R@1": [np.nan, 20.0, np.nan, 31.4], "R@5": [np.nan, 50.0, np.nan, 70.0],
                         "R@10": [np.nan, 70.0, np.nan, val_r10]})


def test_val_and_test_draws_each_chance_level_with_its_gallery_size():
    test = {"R@1": 13.3, "R@5": 41.2, "R@10": 58.2, "n_gallery": 200, "cmc": np.linspace(13.3, 100, 200)}
    fig = training_figures.val_and_test(_log(), 40, test, CFG, kept_epoch=4)
    ax = fig.axes[0]
    chance = sorted(round(y, 6) for coll in ax.collections for seg in coll.get_segments() for y in {seg[0][1]})
    assert chance == sorted([2.5, 12.5, 25.0, 0.5, 2.5, 5.0])
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "40 tiles" in legend and "200 tiles" in legend
    assert "epoch 4" in legend, "the validation numbers are those of the selected epoch"
    assert_legends_clear(fig)
    assert "epoch 2" in " ".join(t.get_text() for t in training_figures.val_and_test(
        _log(), 40, test, BEST, kept_epoch=2).legends[0].get_texts()), "the epoch training kept, not the latest"
    assert "weights: trained checkpoint x" in training_figures.val_and_test(
        _log(), 40, test, CFG, 4, model="m; weights: trained checkpoint x").texts[-1].get_text()


def test_training_curves_draw_the_validation_chance_level():
    fig = training_figures.curves(_log(), BEST, val_gallery=40, kept_epoch=2)
    levels = {round(line.get_ydata()[0], 6) for line in fig.axes[1].get_lines()
              if line.get_linestyle() == ":" and len(line.get_ydata())}
    assert {2.5, 12.5, 25.0} <= levels
    assert "40 tiles" in fig.axes[1].get_title()
    assert_legends_clear(fig)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "drone_rate P = 0.3 (the target)" in legend and "recall by chance (k / tiles)" in legend, legend
    assert len({ax.title.get_fontsize() for ax in fig.axes if ax.get_title()}) == 1, "one title size for the panels"
    assert any("kept (best epoch): R@1 20.0 at epoch 2" in t for t in legend), legend
    assert training_figures.kept_row(_log(), 3) is None, "an epoch without a check has no row to show"
    training_figures.curves(_log(), CFG)   # the notebook's old call still works


# --- notebook 05 ------------------------------------------------------------------------------------------------

def test_paper_bars_are_grey_and_backbone_labels_stay_inside_the_axes():
    fig = result_figures.rerank_plot([], CFG)
    faces = {tuple(np.round(b.get_facecolor()[:3], 3)) for b in fig.axes[-1].patches}
    assert all(r == g == b for r, g, b in faces), "the stamp calls the paper's values grey"
    fig = result_figures.backbone_plot([], CFG)
    fig.canvas.draw()
    box = fig.axes[0].get_window_extent()
    for text in fig.axes[0].texts:
        assert text.get_window_extent().x1 <= box.x1, f"{text.get_text()} runs past the axes"


def test_notebook_05_shows_no_empty_table_and_the_recorded_drone_rates(outputs, tmp_path):
    from tests.notebooks import execute

    text, images = execute("05_tables.ipynb", tmp_path / "out.ipynb")
    assert "<tbody>\n  </tbody>" not in text and "Empty DataFrame" not in text
    assert "recorded in docs/results/drone_rate.csv" in text, \
        "a fresh clone still shows the measured sweeps from the committed record, labelled as recorded"
    assert images == 3


# --- notebook 01 ------------------------------------------------------------------------------------------------

@pytest.fixture
def tiny_ds(tiny_world_outputs, monkeypatch):
    from vici_utils.u1652 import open_dataset

    monkeypatch.setenv("VICI_OUTPUTS", str(tiny_world_outputs))
    return open_dataset(validate(TINY_WORLD), progress=False)


def test_world_json_cameras_match_the_regenerated_target(tiny_ds):
    """The target drawn on the tile is the one the cameras were aimed at: every drone camera looks at the
    target's centre, and every street camera stands 4-22 m from its walls (render.py's rules)."""
    world = data_figures.read_world(tiny_ds.root)
    for b in world["train"]:
        mask, tx, ty = data_figures.target_of(world, b)
        loc = world["locations"][b]
        for cam in loc["drone"]:
            ground = cam["range"] * math.cos(math.radians(cam["pitch"]))
            look = (cam["x"] + ground * math.sin(math.radians(cam["heading"])),
                    cam["y"] + ground * math.cos(math.radians(cam["heading"])))
            assert look == pytest.approx((tx, ty), abs=0.05)
        for cam in loc["street"]:
            assert 3.5 <= data_figures.wall_distance(mask, cam["x"], cam["y"]) <= 22.5


def test_target_and_cameras_marks_every_camera_and_tables_hold_counts(tiny_ds):
    b = tiny_ds.train.buildings[0]
    world = data_figures.read_world(tiny_ds.root)
    n_cams = len(world["locations"][b]["street"]) + len(world["locations"][b]["drone"])
    fig = data_figures.target_and_cameras(tiny_ds, b, CFG)
    marks = [t.get_text() for t in fig.axes[0].texts]
    assert len(marks) == n_cams and {"S1", "D1"} <= set(marks)
    assert len([w for w in fig.axes[0].patches if isinstance(w, matplotlib.patches.Wedge)]) == n_cams

    views = data_figures.views_per_building(tiny_ds)
    assert views.loc["drone (train)", "per building, University-1652"].startswith("54")
    assert pd.api.types.is_integer_dtype(views["images"]) and pd.api.types.is_integer_dtype(views["buildings"])
    sizes = data_figures.image_sizes(tiny_ds)
    assert all(pd.api.types.is_integer_dtype(sizes[c]) for c in sizes), "counts and pixels are integers"
    geometry = data_figures.world_geometry(tiny_ds, n=5)
    assert geometry.loc["target centre: distance from the tile centre", "max"] <= 4.3


def test_query_tiles_mark_where_the_query_was_taken(tiny_ds):
    fig = data_figures.query_and_gallery(tiny_ds, CFG, n=3)
    tiles = [ax for ax in fig.axes if ax.get_title().startswith("gallery")]
    assert all(any(isinstance(p, matplotlib.patches.Wedge) for p in ax.patches) for ax in tiles)


# --- the stamp ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("height", [3.0, 12.0])
def test_stamp_sits_just_under_the_lowest_label(height):
    fig, axes = plt.subplots(4, 3, figsize=(6, height))
    for ax in axes.flat:
        ax.imshow(np.zeros((4, 4)))
        ax.set_xlabel("x")
    fig.tight_layout()
    stamp(fig, CFG)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    lowest = min(ax.get_tightbbox(r).y0 for ax in fig.axes) / fig.dpi
    label = fig.texts[-1].get_window_extent(r)
    gap = lowest - label.y1 / fig.dpi
    assert 0 <= gap < 0.25, f"{gap:.2f} in between the stamp and the figure above it"
    assert label.y0 >= 0


def test_a_non_ascii_data_root_draws_without_font_warnings(recwarn):
    """Issue 22.13: a data_root such as /data/大学-1652 printed about 140 'Glyph ... missing' warnings a run."""
    from vici_utils.params import validate

    cfg = validate({"data_root": "/data/大学-1652 é", "run_name": "x"})
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    stamp(fig, cfg, model="")
    fig.canvas.draw()
    plt.close(fig)
    assert not [w for w in recwarn if "missing from" in str(w.message)]
    assert "data: University-1652 at ??-1652 é" in fig.texts[-1].get_text()


def test_contact_sheet_says_how_many_views_it_shows_and_its_labels_touch_no_image(tiny_ds):
    b = tiny_ds.train.buildings[0]
    fig = data_figures.contact_sheet(tiny_ds, b, CFG)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for ax in fig.axes for t in ax.texts]
    assert any(f"of {len(tiny_ds.train.drone[b])}" in t.get_text() for t in labels)
    assert any(f"of {len(tiny_ds.train.street[b])}" in t.get_text() for t in labels)
    images = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_images()]
    for t in labels:
        box = t.get_window_extent(renderer)
        assert not [i for i in images if box.x0 < i.x1 + 2 and i.x0 < box.x1 + 2 and box.y0 < i.y1 and i.y0 < box.y1], \
            f"the label {t.get_text()!r} touches an image"
    slant = data_figures.world_geometry(tiny_ds, n=5).loc["drone camera: distance to the target's mid-height (slant range)"]
    assert 55 <= slant["min"] and slant["max"] <= 95, "the renderer's rule the notebook states"
