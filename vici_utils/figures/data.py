"""Figures and tables for notebook 01: what the data looks like and, in the embedded world, where the target
building and the cameras stand."""
from __future__ import annotations

import json
import random
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle, Wedge
from matplotlib.ticker import MaxNLocator

from ..u1652 import University1652, images_per_building, load_image, sample_image_sizes
from . import stamp

TARGET, STREET, DRONE = "#ffd700", "#2166ac", "#d73027"
# University-1652 per building (see the dataset's README): one 512 px satellite tile, a 54-image drone orbit,
# about 11.6k street photos over 701 train buildings, 2,579 street queries over 701 test buildings.
U1652_PER_BUILDING = {
    "satellite (train)": "1",
    "drone (train)": "54, high to low",
    "street (train)": "about 17 on average (11.6k / 701)",
    "street queries (test)": "about 3.7 on average (2,579 / 701)",
    "satellite gallery (test)": "1 (+ 250 distractor buildings)",
}
U1652_SHORT = {"street": "about 17 on average", "drone": "54", "satellite": "1"}


def images_per_building_plot(ds: University1652, cfg):
    """Histograms of images per building for each training view, with University-1652's count beside them."""
    views = {"street": ds.train.street, "drone": ds.train.drone, "satellite": ds.train.satellite}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, (name, view) in zip(axes, views.items()):
        counts = images_per_building(view)
        lo, hi = min(counts, default=0), max(counts, default=0)
        ax.hist(counts, bins=np.arange(lo, hi + 2) - 0.5, color="tab:blue", edgecolor="white")
        ax.set_xlim(lo - 1.5, hi + 1.5)   # only the counts that occur, with one empty slot either side
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="images", ylabel="buildings")
        ax.set_title(f"train {name}: images per building\n(University-1652: {U1652_SHORT[name]})", fontsize=10)
    fig.tight_layout()
    return stamp(fig, cfg, model="")


def _spread(counts: list[int]) -> str:
    if not counts:
        return "none"
    lo, hi = min(counts), max(counts)
    return f"{lo}" if lo == hi else f"{lo}-{hi}, mean {np.mean(counts):.1f}"


def views_per_building(ds: University1652) -> pd.DataFrame:
    """Images per building for every view of this data beside University-1652's: counts stay integers."""
    views = {"satellite (train)": images_per_building(ds.train.satellite),
             "drone (train)": [c for c in images_per_building(ds.train.drone) if c],
             "street (train)": images_per_building(ds.train.street),
             "street queries (test)": list(Counter(ds.test.query_ids).values()),
             "satellite gallery (test)": list(Counter(ds.test.gallery_ids).values())}
    out = pd.DataFrame([{"view": name, "buildings": len(c), "images": int(sum(c)),
                         "per building, this data": _spread(c),
                         "per building, University-1652": U1652_PER_BUILDING[name]} for name, c in views.items()])
    out.loc[out["view"] == "satellite gallery (test)", "per building, this data"] += \
        f" (+ {len(ds.test.distractors)} distractor buildings)"
    return out.set_index("view")


def image_sizes(ds: University1652, seed: int = 0, n: int = 200) -> pd.DataFrame:
    """Median width and height of a sample of each training view, and how many distinct sizes it holds."""
    rows = {}
    for view in ("satellite", "drone", "street"):
        s = sample_image_sizes([p for ps in getattr(ds.train, view).values() for p in ps], n=n, seed=seed)
        rows[view] = {"images sampled": len(s), "width (median, px)": int(s.width.median()) if len(s) else 0,
                      "height (median, px)": int(s.height.median()) if len(s) else 0,
                      "distinct sizes": len(s.drop_duplicates())}
    return pd.DataFrame(rows).T.astype(int)


def contact_sheet(ds: University1652, building: str, cfg, n_drone: int = 4, n_street: int = 4):
    """One place seen three ways: its satellite tile (left, larger), drone views (high to low) and street views.
    Each row label says how many of the building's images of that view it shows."""
    sat = ds.train.satellite[building][0]
    all_drone = ds.train.drone.get(building, [])
    drone = [all_drone[round(i * (len(all_drone) - 1) / max(n_drone - 1, 1))]
             for i in range(min(n_drone, len(all_drone)))]
    all_street = ds.train.street[building]
    street = all_street[:n_street]
    rows = [(f"drone, high -> low\n{len(drone)} of {len(all_drone)}", drone),
            (f"street\n{len(street)} of {len(all_street)}", street)]
    cols = max(1, *(len(r[1]) for r in rows))
    fig = plt.figure(figsize=(2.1 * cols + 4.8, 4.9))
    # a narrow column between the tile and the rows holds the row labels, clear of both
    grid = fig.add_gridspec(2, cols + 2, width_ratios=[2.0, 0.28] + [1] * cols, wspace=0.06, hspace=0.22,
                            left=0.03, right=0.99, top=0.86, bottom=0.02)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(load_image(sat))
    ax.set_title(f"satellite: {sat.name}", fontsize=8)
    ax.axis("off")
    for r, (label, paths) in enumerate(rows):
        gap = fig.add_subplot(grid[r, 1])
        gap.axis("off")
        gap.text(0.5, 0.5, label, transform=gap.transAxes, rotation=90, va="center", ha="center", fontsize=8)
        for c in range(cols):
            ax = fig.add_subplot(grid[r, c + 2])
            ax.axis("off")
            if c < len(paths):
                ax.imshow(load_image(paths[c]))
                ax.set_title(paths[c].name, fontsize=7)
    fig.suptitle(f"building {building}: one place, three views")
    return stamp(fig, cfg, model="")


# --- the embedded world: where the target building and the cameras are --------------------------------------

def read_world(root) -> Optional[dict]:
    """The embedded world's world.json (spec, ids, cameras of every view), or None for other data."""
    path = Path(root) / "world.json"
    return json.loads(path.read_text()) if path.is_file() else None


@lru_cache(maxsize=64)
def _target(seed: int, difficulty: float, split: str, index: int) -> tuple[np.ndarray, float, float]:
    """The target's footprint (boolean map over the scene grid, row 0 north) and its main box's centre (x east,
    y north, metres). world.json does not store the footprint, so the scene is regenerated from its seeds:
    the same call the world builder makes (about 50 ms)."""
    from ..world.scene import location_rngs, make_palette, make_scene

    sc = make_scene(location_rngs(seed, split, index)["scene"], make_palette(seed), difficulty)
    return np.isin(sc.bid, sc.target["boxes"]), float(sc.target["cx"]), float(sc.target["cy"])


def target_of(world: dict, building: str) -> tuple[np.ndarray, float, float]:
    """(footprint mask, centre x, centre y) of a location's target building; see _target."""
    from ..world import WORLD_VERSION

    if world.get("world_version") != WORLD_VERSION:
        raise ValueError(f"world {world.get('key')}: made by world version {world.get('world_version')}, but this "
                         f"code draws version {WORLD_VERSION}; delete that world folder so it is regenerated")
    loc = world["locations"][building]
    spec = world["spec"]
    return _target(int(spec["seed"]), float(spec["difficulty"]), loc["split"], int(loc["index"]))


def _cell_centres():
    from ..world.scene import CELL, N

    c = (np.arange(N) + 0.5 - N / 2) * CELL
    return c, c[::-1]          # x of each column (west -> east), y of each row (north -> south)


def wall_distance(mask: np.ndarray, x: float, y: float) -> float:
    """Metres from (x, y) to the nearest cell of the footprint (0 inside it)."""
    from ..world.scene import CELL

    xs, ys = _cell_centres()
    i, j = np.nonzero(mask)
    return float(max(np.hypot(xs[j] - x, ys[i] - y).min() - CELL / 2, 0.0))


def _angle_off(cam: dict, x: float, y: float) -> float:
    """Degrees between the camera's compass heading and the bearing from the camera to (x, y)."""
    bearing = np.degrees(np.arctan2(x - cam["x"], y - cam["y"]))
    return float(abs((cam["heading"] - bearing + 180) % 360 - 180))


def world_geometry(ds: University1652, n: int = 40, seed: int = 0) -> pd.DataFrame:
    """Where the target and the cameras stand, over n locations of the embedded world drawn at random
    (distances in metres): min, median and max of each quantity, and how many values each summarises."""
    world = read_world(ds.root)
    if world is None:
        raise ValueError(f"{ds.root}: no world.json here; camera positions exist only for the embedded world")
    ids = [b for b in world["train"] + world["test"] if b in world["locations"]]
    picked = sorted(random.Random(seed).sample(ids, min(n, len(ids))))
    values: dict[str, list[float]] = {k: [] for k in (
        "target centre: distance from the tile centre", "target: height",
        "street camera: distance to the target's nearest wall", "street camera: distance to the target centre",
        "street camera: height above the ground", "street camera: degrees between view direction and target",
        "drone camera: ground distance to the target centre", "drone camera: altitude",
        "drone camera: distance to the target's mid-height (slant range)")}
    for b in picked:
        mask, tx, ty = target_of(world, b)
        loc = world["locations"][b]
        values["target centre: distance from the tile centre"].append(float(np.hypot(tx, ty)))
        values["target: height"].append(float(loc["target_height"]))
        for cam in loc["street"]:
            values["street camera: distance to the target's nearest wall"].append(
                wall_distance(mask, cam["x"], cam["y"]))
            values["street camera: distance to the target centre"].append(float(np.hypot(cam["x"] - tx, cam["y"] - ty)))
            values["street camera: height above the ground"].append(float(cam["z"]))
            values["street camera: degrees between view direction and target"].append(_angle_off(cam, tx, ty))
        for cam in loc["drone"]:
            values["drone camera: ground distance to the target centre"].append(
                float(np.hypot(cam["x"] - tx, cam["y"] - ty)))
            values["drone camera: altitude"].append(float(cam["altitude"]))
            values["drone camera: distance to the target's mid-height (slant range)"].append(float(cam["range"]))
    rows = [{"quantity": k, "min": min(v), "median": float(np.median(v)), "max": max(v), "values": len(v)}
            for k, v in values.items() if v]
    out = pd.DataFrame(rows).set_index("quantity")
    out[["min", "median", "max"]] = out[["min", "median", "max"]].round(1)
    out.attrs["locations"] = len(picked)
    return out


def _camera_for(world: dict, root: Path, path: Path) -> Optional[dict]:
    """The camera that took an image of the embedded world (None if world.json does not list it)."""
    rel = Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    parts = rel.split("/")
    loc = world["locations"].get(parts[-2]) if len(parts) >= 2 else None
    for kind in ("street", "drone"):
        for cam in (loc or {}).get(kind, []):
            if cam["file"] == rel:
                return cam
    return None


def _draw_tile(ax, sat_path: Path, metres: float):
    ax.imshow(load_image(sat_path), extent=(-metres / 2, metres / 2, -metres / 2, metres / 2), zorder=0)


def _draw_target(ax, mask: np.ndarray, tx: float, ty: float, lw: float = 2.0, label: Optional[str] = None):
    xs, ys = _cell_centres()
    ax.contour(xs, ys[::-1], mask[::-1].astype(float), levels=[0.5], colors=[TARGET], linewidths=lw, zorder=3)
    ax.plot(tx, ty, "+", color=TARGET, ms=10 * lw / 2, mew=lw, zorder=3, label=label)


def _draw_camera(ax, cam: dict, colour: str, reach: float, text: str = "", marker: str = "o", size: float = 7,
                 label: Optional[str] = None):
    """The camera's position, and its field of view as a wedge of `reach` metres (compass heading: 0 north)."""
    centre = 90 - cam["heading"]           # compass bearing -> matplotlib's angle (east = 0, counter-clockwise)
    half = cam["fov"] / 2
    ax.add_patch(Wedge((cam["x"], cam["y"]), reach, centre - half, centre + half, facecolor=colour, alpha=0.3,
                       edgecolor="white", lw=0.8, zorder=2))
    ax.plot(cam["x"], cam["y"], marker, color=colour, mec="white", mew=1.0, ms=size, zorder=4, label=label)
    if text:
        ax.annotate(text, (cam["x"], cam["y"]), xytext=(4, 4), textcoords="offset points", fontsize=8,
                    color="white", fontweight="bold", zorder=5,
                    bbox=dict(boxstyle="round,pad=0.12", fc=colour, ec="none", alpha=0.85))


def target_and_cameras(ds: University1652, building: str, cfg, max_views: int = 6):
    """One location of the embedded world from above: its satellite tile with the target building outlined,
    each street camera (blue) and drone camera (red) where it stood with its field of view, and beside it
    the photos those cameras took, numbered alike."""
    world = read_world(ds.root)
    if world is None:
        raise ValueError(f"{ds.root}: no world.json here; camera positions exist only for the embedded world")
    loc = world["locations"][building]
    metres = float(world["spec"]["sat_metres"])
    mask, tx, ty = target_of(world, building)
    street, drone = loc["street"][:max_views], loc["drone"][:max_views]
    cols = max(len(street), len(drone), 1)
    rows = [("street", street)] + ([("drone", drone)] if drone else [])
    fig = plt.figure(figsize=(5.4 + 1.9 * cols, 5.2))
    grid = fig.add_gridspec(len(rows), cols + 1, width_ratios=[4.6 / 1.9] + [1] * cols, wspace=0.1,
                            hspace=0.2, left=0.07, right=0.99, top=0.87, bottom=0.12)
    ax = fig.add_subplot(grid[:, 0])
    reach = max([metres / 2] + [abs(c[k]) + 6 for c in street + drone for k in ("x", "y")])
    ax.set_facecolor("0.9")
    _draw_tile(ax, ds.root / loc["satellite"], metres)
    ax.add_patch(Rectangle((-metres / 2, -metres / 2), metres, metres, fill=False, ec="0.2", lw=1, zorder=1))
    _draw_target(ax, mask, tx, ty, label="target building (outline, centre)")
    for k, cam in enumerate(street, 1):
        _draw_camera(ax, cam, STREET, 12, f"S{k}", label="street camera, field of view" if k == 1 else None)
    for k, cam in enumerate(drone, 1):
        _draw_camera(ax, cam, DRONE, 14, f"D{k}", marker="^", label="drone camera, field of view" if k == 1 else None)
    ax.set(xlim=(-reach, reach), ylim=(-reach, reach), xlabel="east (m)", ylabel="north (m)")
    ax.set_title(f"building {building}: the {metres:g} m satellite tile (framed), north up", fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=7, ncol=2, frameon=False)
    for r, (kind, cams) in enumerate(rows):
        for c in range(cols):
            bx = fig.add_subplot(grid[r, c + 1])
            bx.axis("off")
            if c >= len(cams):
                continue
            cam = cams[c]
            bx.imshow(load_image(ds.root / cam["file"]))
            if kind == "street":
                note = f"{wall_distance(mask, cam['x'], cam['y']):.0f} m from the wall"
            else:
                note = f"{cam['altitude']:.0f} m up"
            bx.set_title(f"{kind[0].upper()}{c + 1}: {note}", fontsize=7, color=STREET if kind == "street" else DRONE)
    fig.suptitle("where the photos were taken: the target building sits near the tile centre; every street "
                 "camera stands close to it and looks towards it", fontsize=10)
    return stamp(fig, cfg, model="")


def query_and_gallery(ds: University1652, cfg, n: int = 5, seed: int = 0):
    """Test queries (street) above the gallery tile of their building: the pairs retrieval must find. In the
    embedded world each tile also shows the target building (yellow) and where its query was taken (blue)."""
    by_building = {g.building: g for g in ds.test.gallery}
    picks = random.Random(seed).sample(ds.test.queries, min(n, len(ds.test.queries)))
    world = read_world(ds.root)
    fig, axes = plt.subplots(2, len(picks), figsize=(2.4 * len(picks), 5.6), squeeze=False,
                             gridspec_kw={"hspace": 0.3})
    for c, q in enumerate(picks):
        axes[0][c].imshow(load_image(q.path))
        axes[0][c].set_title(f"query {q.building}", fontsize=8)
        tile = by_building[q.building].path
        cam = _camera_for(world, ds.root, q.path) if world else None
        if cam is not None:
            metres = float(world["spec"]["sat_metres"])
            _draw_tile(axes[1][c], tile, metres)
            mask, tx, ty = target_of(world, q.building)
            _draw_target(axes[1][c], mask, tx, ty, lw=1.5)
            _draw_camera(axes[1][c], cam, STREET, 12, size=6)
            axes[1][c].set(xlim=(-metres / 2, metres / 2), ylim=(-metres / 2, metres / 2))
        else:
            axes[1][c].imshow(load_image(tile))
        axes[1][c].set_title(f"gallery {q.building}", fontsize=8)
        for ax in (axes[0][c], axes[1][c]):
            ax.set_xticks([])
            ax.set_yticks([])
    title = "test: street queries (top) and the satellite tile to find among all gallery images (bottom)"
    if world:
        title += "\non each tile: the target building (yellow) and where the query was taken, looking which way (blue)"
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.86 if world else 0.9, bottom=0.02, wspace=0.08)
    return stamp(fig, cfg, model="")
