"""Extra distractor tiles for the embedded world: satellite views only, of new scenes, cached beside the world.

    <worlds_dir>/<world key>-extra/x000000.jpg ...   extra.json  {"world": key, "count": n}  (written last)

Tile i is the scene of the world's distractor number (distractors + i), seeded as every location is, so the
world's own distractors are never repeated and asking for more tiles later renders only the new ones (the first n
never change). About 0.1-0.2 s a tile on one CPU core (no street or drone views are rendered).
"""
from __future__ import annotations

import json
import os
from multiprocessing import get_context
from pathlib import Path

from ..progress import progress
from ..run_folder import write_atomic
from .build import WorldSpec, _jpeg, _worker_init, render_location

MARKER = "extra.json"


def extra_dir(spec: WorldSpec) -> Path:
    from ..paths import worlds_dir

    return worlds_dir() / f"{spec.key()}-extra"


def tile_name(i: int) -> str:
    return f"x{i:06d}.jpg"


def _render(job) -> None:
    spec, folder, i = job
    tile = render_location(spec, "distractor", spec.distractors + i)["satellite"]
    write_atomic(Path(folder) / tile_name(i), _jpeg(tile))


def ensure_extra_tiles(spec: WorldSpec, n: int, workers: int = 2, show: bool = True) -> Path:
    """The folder holding at least the first n extra tiles (rendering the missing ones); its tiles beyond n, if an
    earlier call asked for more, are left in place and are not part of the gallery (see extra_tiles)."""
    folder = extra_dir(spec)
    marker = folder / MARKER
    done = json.loads(marker.read_text())["count"] if marker.is_file() else 0
    if n <= done:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(spec, str(folder), i) for i in range(done, n)]
    with progress(total=len(jobs), desc="extra distractor tiles", unit="tile", disable=not show) as bar:
        if workers <= 1:
            for job in jobs:
                _render(job)
                bar.update()
        else:
            ctx = get_context("fork") if hasattr(os, "fork") else get_context("spawn")
            with ctx.Pool(workers, initializer=_worker_init, initargs=(os.getpid(),)) as pool:
                for _ in pool.imap_unordered(_render, jobs, chunksize=8):
                    bar.update()
    write_atomic(marker, json.dumps({"world": spec.key(), "count": n}) + "\n")
    return folder


def extra_tiles(spec: WorldSpec, n: int, show: bool = True) -> list[Path]:
    """The first n extra tiles' paths, rendered if missing."""
    folder = ensure_extra_tiles(spec, n, show=show)
    return [folder / tile_name(i) for i in range(n)]
