"""One of the paper's claims measured inside the chapter: drone mixing, P = 0 against P = 0.3, trained on the
quick preset (params/quick.yaml) with a few seeds and compared seed by seed.

Each run is an ordinary run folder, outputs/quick-claim/p<P>_s<seed>/ (training, then retrieval on the test
set), so a second call reuses what is finished and `python -m vici_utils run` can inspect any of them. The
runs are trained in this process rather than through a sweep: a sweep executes every notebook of every run,
which for these short trainings costs more than the training itself.
"""
from __future__ import annotations

from typing import Optional

import pandas as pd

from . import narrative
from .params import Params, load
from .paths import REPO_ROOT

QUICK = REPO_ROOT / "params" / "quick.yaml"
RATES = (0.0, 0.3)
FOLDER = "quick-claim"
PAPER_NOTE = "The paper reports +3.0 on University-1652, from one run per P."


def claim_params(seeds: int, overrides: Optional[dict] = None) -> list[Params]:
    """The runs: every seed 0..seeds-1 at each P of RATES, on the quick preset (with `overrides` on top)."""
    return [load(QUICK, (overrides or {}) | {"drone_rate": p, "seed": s, "run_name": f"{FOLDER}/p{p:g}_s{s}"})
            for s in range(seeds) for p in RATES]


def drone_claim(seeds: int, overrides: Optional[dict] = None, progress: bool = False) -> pd.DataFrame:
    """Train and evaluate each run of claim_params (finished ones are read back); one row per run: seed, P,
    test R@1 and the run's name."""
    from . import retrieval
    from .train import train

    rows = []
    for cfg in claim_params(seeds, overrides):
        train(cfg, progress=progress)
        result = retrieval.evaluate(cfg, progress=progress, challenge=False)
        rows.append({"seed": cfg.seed, "P": cfg.drone_rate, "R@1": result.metrics["R@1"], "run": cfg.run_name})
    return pd.DataFrame(rows)


def claim_sentence(runs: pd.DataFrame) -> narrative.Sentence:
    """P = 0.3 minus P = 0, paired by seed, with its 95 % interval."""
    wide = runs.pivot(index="seed", columns="P", values="R@1")
    return narrative.paired_difference(wide[RATES[0]].to_numpy(), wide[RATES[1]].to_numpy(),
                                       "Drone mixing on the quick preset, P = 0.3 minus P = 0", PAPER_NOTE)
