"""Why the learned verifier does not help: a measurement script (prints figures; never a test).

The verifier (reranker: verifier) trains on the training buildings, where the fine-tuned stage-1 towers
have memorised street photo and tile alike, so its training shortlists and tokens are cleaner than on unseen
buildings. This probe trains it four ways on one finished stage-1 run and scores the test queries:

    tokens   from the fine-tuned stage-1 towers, or from the ImageNet network itself (never trained on these
             buildings, so its training tokens look like its test tokens)
    agreement  with or without the product of the stage-1 embeddings as an input

Shortlists are always stage-1's (its own hard negatives). Prints test R@1 of retrieval, the verifier's own order
and the weighted / rrf fusions, with the CPU and its load.

    python benchmarks/probe_verifier_features.py [--run drone_rate/p0.3_s0] [--epochs 20]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_workbook import machine  # noqa: E402
from vici_utils import params  # noqa: E402
from vici_utils.rerank import verifier as V  # noqa: E402
from vici_utils.models import TwoTower, load_model_for_eval  # noqa: E402
from vici_utils.rerank.fusion import fuse  # noqa: E402
from vici_utils.u1652 import open_dataset  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="drone_rate/p0.3_s0", help="a finished run with a trained stage-1 model")
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args(argv)
    print(machine())
    cfg = params.from_notebook({"run_name": args.run})
    sources = {"stage-1": load_model_for_eval(cfg)[0],
               "ImageNet": TwoTower(cfg.backbone, cfg.pretrained, cfg.image_size).eval()}
    ds = open_dataset(cfg, progress=False)
    train_ids, val_ids = ds.split_buildings(cfg.val_fraction, cfg.seed)
    sets = {"train": ds.val_set(train_ids), "val": ds.val_set(val_ids), "test": ds.test}
    t0 = time.perf_counter()
    tokens = {(src, name): (V.view_tokens(cfg, m, "street", rs.queries), V.view_tokens(cfg, m, "satellite", rs.gallery))
              for src, m in sources.items() for name, rs in sets.items()}
    print(f"tokens of both sources: {time.perf_counter() - t0:.0f} s")
    truth = {name: V.truth_index(rs) for name, rs in sets.items()}
    lists = {name: V.shortlists(tokens["stage-1", name][0].emb[:, 0], tokens["stage-1", name][1].emb[:, 0],
                                cfg.rerank_top_k) for name in sets}

    def test_r1(order: np.ndarray) -> float:
        picked = torch.gather(lists["test"], 1, torch.as_tensor(order))[:, 0]
        return 100 * (picked == truth["test"]).float().mean().item()

    print(f"retrieval: test R@1 {test_r1(np.zeros((len(lists['test']), 1), dtype=np.int64)):.2f}")
    for src in sources:
        for agreement in (True, False):
            def view(name: str, side: int) -> V.Tokens:  # the source's tokens with stage-1's embeddings (or none)
                emb = tokens["stage-1", name][side].emb
                t = tokens[src, name][side]
                return V.Tokens(t.levels, emb if agreement else torch.zeros_like(emb), t.grids)

            t1 = time.perf_counter()
            done = V.train_verifier(view("train", 0), truth["train"], view("train", 1), cfg.rerank_top_k,
                                    (view("val", 0), truth["val"], view("val", 1)), epochs=args.epochs,
                                    seed=cfg.seed, lists=lists["train"], val_lists=lists["val"])
            with torch.no_grad():
                scores = V.pair_scores(done.verifier, view("test", 0), view("test", 1), lists["test"]).numpy()
            own = np.argsort(-scores, axis=1, kind="stable")
            rank = np.argsort(own, axis=1) + 1
            found = {"own order": test_r1(own), **{rule: test_r1(fuse(rank, rule)) for rule in ("weighted", "rrf")}}
            print(f"{src:9s} agreement {'on ' if agreement else 'off'}: best epoch {done.best_epoch:2d} "
                  f"(val R@1 {done.best['verifier R@1']:.1f}); test R@1 "
                  + ", ".join(f"{k} {v:.2f}" for k, v in found.items()) + f"  [{time.perf_counter() - t1:.0f} s]")
    print("load average after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
