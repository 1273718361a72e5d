"""Tables for notebook 03: this run's retrieval beside the references (colour baseline, chance, the paper)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from . import paper
from .metrics import METRICS, RECALL_KS
from .retrieval import RetrievalResult


def results_table(result: RetrievalResult, baseline: Optional[dict] = None) -> pd.DataFrame:
    """Our numbers (official and the named easier protocol), the colour baseline, chance, and, on
    University-1652, the paper's published rows beside them."""
    cols, ours = list(METRICS), "ours: " + result.cfg.backbone
    rows = [(ours, "official (all gallery images)", *[result.metrics[c] for c in cols]),
            (ours, "distractors_dropped (easier)", *[result.metrics_dropped[c] for c in cols])]
    if baseline is not None:
        rows.append(("colour histogram (no learning)", "official", *[baseline[c] for c in cols]))
    ng = result.metrics["n_gallery"]
    rows.append(("chance", "official", *[100 * min(k, ng) / ng for k in RECALL_KS], np.nan))
    table = pd.DataFrame(rows, columns=["model", "protocol", *cols])
    table.insert(0, "source", "this run")
    if not result.cfg.is_embedded:
        same = paper.BACKBONES[paper.BACKBONES.timm_name == result.cfg.backbone].rename(columns={"backbone": "model"})
        theirs = pd.concat([same, paper.ABLATION]).assign(protocol="official", AP=np.nan, source=paper.SOURCE)
        table = pd.concat([table, theirs[["source", "model", "protocol", *cols]]], ignore_index=True)
    return table.round(2)
