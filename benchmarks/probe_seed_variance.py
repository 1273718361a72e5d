"""Where does the seed-to-seed spread of the default recipe come from? (issue 19)

Trains the default recipe for each seed and drone rate, stopping at every validation epoch (resume is exact on
the CPU, so the run is the one an uninterrupted training would make) to score that epoch's weights on the TEST set
as well. Only this probe looks at test per epoch: it measures how much of the spread comes from the epoch that
validation selects, and how much from the training itself (the curve of each seed, the learned temperature).

    python benchmarks/probe_seed_variance.py --seeds 0 1 2 --drone-rates 0 0.3 [--set lr=0.001] [--tag name]

Writes outputs/probe/seed_variance/<tag>/curves.csv (one row per seed, rate and checked epoch) and prints, per
seed: the selected epoch, test R@1 of the selected and of the last epoch, and the temperature at the end.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vici_utils.headline import machine  # noqa: E402
from vici_utils.checkpoints import read_checkpoint  # noqa: E402
from vici_utils.device import resolve_device  # noqa: E402
from vici_utils.models import model_from_checkpoint  # noqa: E402
from vici_utils.params import load, parse_set  # noqa: E402
from vici_utils.paths import outputs_root  # noqa: E402
from vici_utils.train import evaluate_model, train  # noqa: E402
from vici_utils.u1652 import open_dataset  # noqa: E402


def checked_epochs(epochs: int, every: int) -> list[int]:
    return sorted({*range(every, epochs + 1, every), epochs})


def probe(seed: int, rate: float, overrides: dict, tag: str) -> pd.DataFrame:
    cfg = load(REPO / "params/default.yaml",
               {**overrides, "seed": seed, "drone_rate": rate, "run_name": f"probe/seed_variance/{tag}/s{seed}_p{rate}"})
    ds = open_dataset(cfg, progress=False)
    device = resolve_device(cfg.device)
    rows = []
    for stop in checked_epochs(cfg.epochs, cfg.val_every):
        t0 = time.perf_counter()
        result = train(cfg, progress=False, stop_after_epoch=stop)
        last = result.train_dir / "last.pt"
        model = model_from_checkpoint(last, read_checkpoint(last)).to(device).eval()
        test = evaluate_model(model, ds.test, cfg, device)
        logged = result.log.iloc[-1]
        rows.append({"seed": seed, "drone_rate": rate, "epoch": stop, "val_R@1": logged["R@1"],
                     "test_R@1": test["R@1"], "test_R@10": test["R@10"], "test_AP": test["AP"],
                     "temperature": logged["temperature"], "loss": logged["loss"], "lr": logged["lr"],
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(f"  seed {seed} P {rate} epoch {stop}: val R@1 {logged['R@1']:.2f}, test R@1 {test['R@1']:.2f}, "
              f"T {logged['temperature']:.4f}", flush=True)
    return pd.DataFrame(rows)


def summary(curves: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (seed, rate), c in curves.groupby(["seed", "drone_rate"]):
        sel = c.loc[c["val_R@1"].idxmax()]  # the first of equal maxima, as train() keeps it
        last = c.iloc[-1]
        out.append({"seed": seed, "P": rate, "selected epoch": int(sel["epoch"]), "test R@1 selected": sel["test_R@1"],
                    "test R@1 last": last["test_R@1"], "test R@1 best epoch (oracle)": c["test_R@1"].max(),
                    "T last": last["temperature"]})
    return pd.DataFrame(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--drone-rates", type=float, nargs="+", default=[0.0, 0.3])
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    ap.add_argument("--tag", default="default")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    print("machine:", machine(), flush=True)
    out = outputs_root() / "probe" / "seed_variance" / args.tag
    out.mkdir(parents=True, exist_ok=True)
    frames = []
    for rate in args.drone_rates:
        for seed in args.seeds:
            frames.append(probe(seed, rate, parse_set(args.set), args.tag))
            pd.concat(frames).to_csv(out / "curves.csv", index=False)
    curves = pd.concat(frames)
    print(summary(curves).round(2).to_string(index=False))
    print("spread (sample std over seeds) per P:")
    s = summary(curves)
    print(s.groupby("P")[["test R@1 selected", "test R@1 last", "test R@1 best epoch (oracle)"]].std().round(2))
    print("machine after:", machine(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
