"""What a sweep measured, in sentences computed from its runs: the comparisons that test the paper's claims
(pretraining, drone mixing) and every re-ranker's change of R@1. Shown under the tables in notebook 05 and in
the README's results section."""
from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from .. import narrative
from .rows import rerank_gains, trained_epochs


class Comparison(NamedTuple):
    a: str     # a variant of the sweep
    b: str     # another
    what: str  # what "b minus a" measures
    note: str = ""


# sweep name -> its comparisons, for a sweep that has its own (the others take their table kind's, TableKind)
COMPARISONS: dict[str, tuple[Comparison, ...]] = {
    "drone_views": (Comparison("p0", "p0.3_54", "Drone mixing with 54 drone views per building, P = 0.3 minus P = 0"),
                    Comparison("p0.3", "p0.3_54", "At P = 0.3, 54 drone views per building minus 4-6")),
}


def findings(name: str, kind_comparisons: tuple[Comparison, ...], results: pd.DataFrame) -> list[str]:
    """The sentences for one sweep's results.csv rows: its comparisons (its own, else its table kind's) whose two
    variants it has, then what each re-ranking variant changed (paired by seed)."""
    variants = set(results["variant"]) if "variant" in results else set()
    out = [narrative.variant_difference(results, a, b, what, note)
           for a, b, what, note in COMPARISONS.get(name, kind_comparisons)
           if {a, b} <= variants]
    gains = rerank_gains(results)
    if len(gains):
        out += narrative.rerank_gains(gains).splitlines()
    return out


def beside_sweep(rule: str, reranker: str, epochs: int, tables: list) -> str:
    """A run's re-ranking (fusion `rule` of re-ranker `reranker`, trained `epochs`) beside the same re-ranker's change
    over seeds in a re-ranking sweep (results.Table objects, from outputs/ or the committed record), saying when
    the sweep used another recipe."""
    for t in tables:
        gains = rerank_gains(t.runs)
        same = gains[(gains["reranker"] == reranker) & (gains["rule"] == rule)]
        if same.empty:
            continue
        where = f"recorded in {t.source}" if t.recorded else f"in {t.source}"
        trained = trained_epochs(t.runs)
        if epochs == 0:  # the run evaluated a checkpoint (init_checkpoint) instead of training one
            budget = (f" This run trained nothing itself (epochs 0: it evaluated a checkpoint); set the sweep's "
                      f"{'/'.join(map(str, trained)) or '?'} epochs against the recipe that trained that checkpoint.")
        elif trained and trained != [epochs]:
            models = "weaker" if max(trained) < epochs else "differently trained"
            budget = (f" Caution: that sweep trained {'/'.join(map(str, trained))} epochs and this run {epochs}, so "
                      f"it re-ranked {models} models and its change is not what this run's recipe does.")
        else:
            budget = " Same training budget as this run."
        said = narrative.rerank_gains(same.assign(reported=True)).strip()
        return f"Over seeds, the `{t.name}` sweep ({where}; {t.recipe}): {said}{budget}"
    return (f"No re-ranking sweep with '{reranker}' and the '{rule}' rule, in this outputs folder or recorded: one "
            "run's change cannot be told from noise until `python -m vici_utils sweep params/tables/vlms.yaml` "
            "measures it over seeds.")
