"""Where a training run of the default recipe spends its time: process start-up, the world, data (decoding and
augmentation), training steps, validation and checkpoint saves, profiled over the first epochs and scaled to
the whole recipe (prints figures; never a timed test).

    python benchmarks/profile_train.py [--params params/default.yaml] [--epochs 4] [--set key=value ...]

Training runs in this process with num_workers 0, so decoding is timed where it happens (with workers it
overlaps the steps on the same cores, which on 2 cores costs about as much). The outputs go to a temporary
folder (VICI_OUTPUTS), so the world is generated afresh and timed as notebook 01 would. The last lines scale
each part to the recipe's epochs: steps and data per epoch, validation per validated epoch, saves per epoch.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Timed parts: (label, module file suffix, function name) of the functions whose cumulative time is the part.
PARTS = (
    ("data: decode + augment", "torch/utils/data/dataloader.py", "__next__"),
    ("training steps", "vici_utils/train.py", "train_step"),
    ("validation", "vici_utils/train.py", "evaluate_model"),
    ("checkpoint saves", "vici_utils/train.py", "_save_atomic"),
)


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> tuple[float, int]:
    """Cumulative seconds and primitive calls of one function (0 when it never ran)."""
    for (file, _, fn), (prim_calls, _, _, cum, _) in stats.stats.items():
        if fn == name and file.replace(os.sep, "/").endswith(suffix):
            return cum, prim_calls
    return 0.0, 0


def start_up_seconds() -> float:
    """A fresh interpreter importing what a training process imports (torch, timm, the package)."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import vici_utils.train, vici_utils.models"], check=True)
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/default.yaml")
    ap.add_argument("--epochs", type=int, default=4, help="epochs to profile (the recipe's count is scaled to)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="profile-train-"))
    os.environ["VICI_OUTPUTS"] = str(out)  # before the package reads it

    from vici_utils.headline import machine
    from vici_utils.params import load, parse_set
    from vici_utils.train import train
    from vici_utils.u1652 import open_dataset

    cfg = load(args.params, parse_set(args.set) | {"num_workers": 0, "run_name": "profile"})
    m = machine()
    print(f"machine: {m['cpu']}; bf16: {m['bf16 units']}; {m['cores']} cores; "
          f"load average {m['load average (1, 5, 15 min)']}")
    print(f"recipe: {args.params} {' '.join(args.set)}: {cfg.epochs} epochs, batch {cfg.batch_size}, "
          f"{cfg.image_size} px, {cfg.backbone}, validation every {cfg.val_every} epochs")

    start = start_up_seconds()
    t = time.perf_counter()
    open_dataset(cfg, progress=False)
    world = time.perf_counter() - t

    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    result = train(cfg, progress=False, stop_after_epoch=args.epochs)
    prof.disable()
    total = time.perf_counter() - t
    stats = pstats.Stats(prof)

    epochs = args.epochs
    validated = sum(1 for e in range(1, epochs + 1) if e % cfg.val_every == 0 or e == cfg.epochs)
    validated_all = sum(1 for e in range(1, cfg.epochs + 1) if e % cfg.val_every == 0 or e == cfg.epochs)
    print(f"process start-up (import torch, timm, vici_utils): {start:6.1f} s")
    print(f"world generation (notebook 01, once per world):       {world:6.1f} s")
    print(f"train() over {epochs} epochs ({validated} validated): {total:6.1f} s, of which")
    scaled, named = {}, 0.0
    for label, suffix, fn in PARTS:
        secs, calls = cumulative(stats, suffix, fn)
        named += secs
        per = secs / max(validated, 1) if label == "validation" else secs / epochs
        scaled[label] = per * (validated_all if label == "validation" else cfg.epochs)
        print(f"  {label:<26} {secs:7.1f} s  {100 * secs / total:5.1f} %  ({calls} calls)")
    rest = total - named
    print(f"  {'the rest (model build, set-up)':<26} {rest:7.1f} s  {100 * rest / total:5.1f} %")
    whole = start + world + rest + sum(scaled.values())
    print(f"scaled to the recipe's {cfg.epochs} epochs ({validated_all} validated): {whole:.0f} s in all")
    for label, secs in scaled.items():
        print(f"  {label:<26} {secs:7.0f} s  {100 * secs / whole:5.1f} %")
    print(f"  {'start-up + world + set-up':<26} {start + world + rest:7.0f} s  {100 * (start + world + rest) / whole:5.1f} %")
    print(f"(profiled run: {result.train_dir}; cProfile adds a few per cent to Python-heavy parts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
