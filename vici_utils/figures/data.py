"""Figures for notebook 01: what the data looks like."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from ..u1652 import University1652, images_per_building, load_image
from . import stamp


def images_per_building_plot(ds: University1652, cfg):
    views = {"street": ds.train.street, "drone": ds.train.drone, "satellite": ds.train.satellite}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, (name, view) in zip(axes, views.items()):
        counts = images_per_building(view)
        top = max(counts, default=0)
        ax.hist(counts, bins=[b - 0.5 for b in range(top + 2)], color="tab:blue", edgecolor="white")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=f"train {name}: images per building", xlabel="images", ylabel="buildings")
    fig.tight_layout()
    return stamp(fig, cfg, model="")


def contact_sheet(ds: University1652, building: str, cfg, n_drone: int = 4, n_street: int = 4):
    """One place seen three ways: its satellite tile, drone views (high to low), street views."""
    sat = ds.train.satellite[building][:1]
    drone = ds.train.drone.get(building, [])
    drone = [drone[round(i * (len(drone) - 1) / max(n_drone - 1, 1))] for i in range(min(n_drone, len(drone)))]
    street = ds.train.street[building][:n_street]
    rows = [("satellite", sat), ("drone (high -> low)", drone), ("street", street)]
    cols = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(3, cols, figsize=(2.4 * cols, 7.6), squeeze=False)
    for r, (label, paths) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(paths):
                ax.imshow(load_image(paths[c]))
                ax.set_title(paths[c].name, fontsize=7)
        axes[r][0].text(-0.08, 0.5, label, transform=axes[r][0].transAxes, rotation=90, va="center", ha="right")
    fig.suptitle(f"building {building}: one place, three views")
    fig.tight_layout()
    return stamp(fig, cfg, model="")


def query_and_gallery(ds: University1652, cfg, n: int = 5, seed: int = 0):
    """Test queries (street) above the gallery tile of their building: the pairs retrieval must find."""
    import random

    by_building = {g.building: g for g in ds.test.gallery}
    picks = random.Random(seed).sample(ds.test.queries, min(n, len(ds.test.queries)))
    fig, axes = plt.subplots(2, len(picks), figsize=(2.4 * len(picks), 5), squeeze=False)
    for c, q in enumerate(picks):
        axes[0][c].imshow(load_image(q.path))
        axes[0][c].set_title(f"query {q.building}", fontsize=8)
        axes[1][c].imshow(load_image(by_building[q.building].path))
        axes[1][c].set_title(f"gallery {q.building}", fontsize=8)
        for ax in (axes[0][c], axes[1][c]):
            ax.axis("off")
    fig.suptitle("test: street queries (top) and the satellite tile to find among all gallery images (bottom)")
    fig.tight_layout()
    return stamp(fig, cfg, model="")
