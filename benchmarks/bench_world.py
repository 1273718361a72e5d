"""Speed of the embedded world: wall seconds for the default world (2 workers, into a temporary outputs
folder via VICI_OUTPUTS), CPU seconds per train location by view type, and megabytes written.

    python benchmarks/bench_world.py [--locations 20] [--workers 2] [--keep]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def per_view_costs(n: int) -> dict:
    """Single-process CPU seconds per train location, split by stage."""
    from vici_utils.world import WorldSpec
    from vici_utils.world.build import _jpeg
    from vici_utils.world.render import (drone_cameras, photo_finish, render_satellite, render_view,
                                         street_cameras)
    from vici_utils.world.scene import location_rngs, make_palette, make_scene

    spec = WorldSpec()
    palette = make_palette(spec.seed)
    cost = dict(scene=0.0, satellite=0.0, street=0.0, drone=0.0, encode=0.0)
    views = dict(street=0, drone=0)
    clock = time.process_time
    for i in range(n):
        rngs = location_rngs(spec.seed, "train", i)
        t = clock()
        scene = make_scene(rngs["scene"], palette, spec.difficulty)
        cost["scene"] += clock() - t
        t = clock()
        sat = photo_finish(render_satellite(scene, spec.sat_size, spec.sat_metres), rngs["photo"],
                           spec.difficulty)
        cost["satellite"] += clock() - t
        t = clock()
        _jpeg(sat)
        cost["encode"] += clock() - t
        cams = {"street": street_cameras(scene, rngs["street"], 4, spec.difficulty),
                "drone": drone_cameras(scene, rngs["drone"], 5)}
        for kind, cs in cams.items():
            for cam in cs:
                t = clock()
                img = photo_finish(render_view(scene, cam, spec.view_size, spec.supersample), rngs["photo"],
                                   spec.difficulty)
                cost[kind] += clock() - t
                t = clock()
                _jpeg(img)
                cost["encode"] += clock() - t
                views[kind] += 1
    out = {k: v / n for k, v in cost.items()}
    out["per street view"] = cost["street"] / max(views["street"], 1)
    out["per drone view"] = cost["drone"] / max(views["drone"], 1)
    out["total (1 sat + 4 street + 5 drone)"] = sum(cost.values()) / n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--locations", type=int, default=20, help="train locations for the per-view costs")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the temporary outputs folder")
    args = ap.parse_args()

    print(f"CPU seconds per train location ({args.locations} locations, one process):")
    for k, v in per_view_costs(args.locations).items():
        print(f"  {k:36s} {v:.4f}")

    tmp = tempfile.mkdtemp(prefix="vici_bench_world_")
    os.environ["VICI_OUTPUTS"] = tmp
    try:
        from vici_utils.world import WorldSpec, ensure_world

        spec = WorldSpec()
        t = time.perf_counter()
        root = ensure_world(spec, workers=args.workers, progress=False)
        wall = time.perf_counter() - t
        files = [p for p in Path(root).rglob("*") if p.is_file()]
        mb = sum(p.stat().st_size for p in files) / 1e6
        print(f"default world ({spec.train_locations} train + {spec.test_locations} test + "
              f"{spec.distractors} distractors, challenge={spec.challenge}), {args.workers} workers:")
        print(f"  wall seconds {wall:.1f}   files {len(files)}   MB written {mb:.1f}")
        t = time.perf_counter()
        ensure_world(spec, workers=args.workers, progress=False)
        print(f"  cached second call {time.perf_counter() - t:.4f} s")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
