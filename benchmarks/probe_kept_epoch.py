"""Which epoch to keep: the test metrics of the epoch validation chose (best.pt) beside the last epoch (last.pt),
for finished runs trained with select_epoch: best (issue 19). Costs one test evaluation per checkpoint; nothing
is trained. Only this probe looks at test for both epochs: it measures what the choice did, it chooses nothing.

    python benchmarks/probe_kept_epoch.py outputs/vlms/trained_s0 outputs/vlms/trained_s1 ...

Prints, per run: the epoch kept, test R@1/R@10/AP of both checkpoints, the temperature at the end; then the mean
and the spread (sample std) over the runs of each, and the paired difference last - best.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vici_utils.checkpoints import read_checkpoint  # noqa: E402
from vici_utils.device import resolve_device  # noqa: E402
from vici_utils.headline import machine  # noqa: E402
from vici_utils.models import model_from_checkpoint  # noqa: E402
from vici_utils.params import as_stored, load, read_yaml  # noqa: E402
from vici_utils.run_folder import BEST, LAST, TRAIN, TRAIN_CONFIG, TRAIN_RESULT  # noqa: E402
from vici_utils.train import evaluate_model, read_log  # noqa: E402
from vici_utils.u1652 import open_dataset  # noqa: E402


def probe(folder: Path) -> dict:
    cfg, train_dir, device = load(folder / "params.yaml"), folder / TRAIN, resolve_device("cpu")
    kept = as_stored(read_yaml(train_dir / TRAIN_CONFIG))["select_epoch"]
    if kept != "best":
        raise SystemExit(f"{folder}: trained with select_epoch: {kept}, so best.pt is the last epoch; this probe "
                         "needs a run that kept its best epoch")
    ds = open_dataset(cfg, progress=False)
    row = {"run": folder.name, "seed": cfg.seed, "P": cfg.drone_rate,
           "kept epoch": json.loads((train_dir / TRAIN_RESULT).read_text())["best_epoch"],
           "T last": read_log(train_dir)["temperature"].iloc[-1]}
    for name, path in (("best", train_dir / BEST), ("last", train_dir / LAST)):
        model = model_from_checkpoint(path, read_checkpoint(path)).to(device).eval()
        m = evaluate_model(model, ds.test, cfg, device)
        row |= {f"{name} {k}": m[k] for k in ("R@1", "R@10", "AP")}
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (outputs/<run> or outputs/<sweep>/<variant>)")
    args = ap.parse_args(argv)
    print("machine:", machine(), flush=True)
    df = pd.DataFrame([probe(f) for f in args.runs])
    print(df.round(2).to_string(index=False))
    for name in ("best", "last"):
        print(f"{name}: test R@1 mean {df[f'{name} R@1'].mean():.2f}, sd {df[f'{name} R@1'].std():.2f}")
    d = (df["last R@1"] - df["best R@1"]).to_numpy()
    print(f"last - best, paired: mean {d.mean():+.2f} points of R@1 over {len(d)} runs "
          f"(min {d.min():+.2f}, max {d.max():+.2f}); AP {np.mean(df['last AP'] - df['best AP']):+.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
