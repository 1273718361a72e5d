"""Sentences about a run's results, chosen and filled in from the numbers, so the notebooks' prose can never
contradict the figures beside it. Each function takes what the notebook already computed and returns plain
text; fixed prose in the notebooks makes no claim that a run could contradict.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


def _pct(x: float) -> str:
    return f"{x:.1f} %"


def training_story(log: pd.DataFrame) -> str:
    """What the training curves show: where the loss went, how recall on the checked set moved, where it peaked."""
    if log.empty:
        return "No training in this run (epochs: 0): the model is evaluated as it was loaded."
    first_loss, last_loss = log["loss"].iloc[0], log["loss"].iloc[-1]
    checked = log.dropna(subset=["R@1"])
    which = "the held-out training buildings" if (log["eval_set"].iloc[0] == "val") else "the TEST set"
    text = (f"The training loss went from {first_loss:.2f} in epoch 1 to {last_loss:.2f} in epoch "
            f"{int(log['epoch'].iloc[-1])}.")
    if checked.empty:
        return text + " Recall was never checked (no held-out buildings): the last epoch is the model."
    r1 = checked["R@1"].to_numpy()
    best = int(checked["epoch"].iloc[int(np.argmax(r1))])
    last = int(checked["epoch"].iloc[-1])
    text += (f" R@1 on {which} went from {_pct(r1[0])} at epoch {int(checked['epoch'].iloc[0])} to "
             f"{_pct(r1[-1])} at epoch {last}, best {_pct(r1.max())} at epoch {best}.")
    rises = int((np.diff(r1) > 0).sum())
    if len(r1) > 2:
        text += f" It rose at {rises} of {len(r1) - 1} checks"
        if best == last:
            text += "; the best epoch was the last, so more epochs might still help."
        elif r1[-1] < r1.max() - 1.0:
            text += (f"; it fell {r1.max() - r1[-1]:.1f} points after its peak while the loss kept falling: the "
                     "model began to memorise its training buildings (best.pt keeps the peak).")
        else:
            text += "; it levelled off near its peak."
    return text


def val_and_test(val_r1: float, val_gallery: int, test_r1: float, test_gallery: int, k: int = 1) -> str:
    """Why validation and test recall differ: gallery sizes and their chance levels."""
    chance_val, chance_test = 100 * k / val_gallery, 100 * k / test_gallery
    return (f"Validation R@{k} is {_pct(val_r1)} against a gallery of {val_gallery} tiles (chance {_pct(chance_val)}); "
            f"test R@{k} is {_pct(test_r1)} against {test_gallery} tiles (chance {_pct(chance_test)}). The test gallery is "
            f"{test_gallery / val_gallery:.0f}x larger, so each query has that many more tiles to confuse with its own: "
            f"the two numbers measure different tasks, and only the test number compares with other runs. As multiples "
            f"of chance: {val_r1 / chance_val:.1f}x on validation, {test_r1 / chance_test:.1f}x on test.")


def modality_gap(street: np.ndarray, satellite: np.ndarray) -> str:
    """Whether the two towers put their embeddings in separate regions: the distance between the two centroids
    against the spread of the embeddings around them."""
    cs, cg = street.mean(0), satellite.mean(0)
    gap = float(np.linalg.norm(cs - cg))
    spread = float(np.sqrt(((street - cs) ** 2).sum(1).mean() + ((satellite - cg) ** 2).sum(1).mean()) / math.sqrt(2))
    ratio = gap / max(spread, 1e-9)
    if ratio > 1.0:
        verdict = "a clear modality gap: the two views sit in separate regions of the space"
    elif ratio > 0.4:
        verdict = "a moderate modality gap: the two clouds are offset but overlap"
    else:
        verdict = "no real modality gap: street and satellite embeddings share one region"
    return (f"The street and satellite centroids are {gap:.2f} apart, against a spread of {spread:.2f} around them "
            f"(ratio {ratio:.2f}): {verdict}. Retrieval only compares a query with tiles, so a gap by itself costs "
            "nothing; what matters is the order of the tiles around each query.")


def rerank_change(before: dict, after: dict, rule: str, what: str) -> str:
    """The re-ranker's effect on R@1 and R@5 for one fusion rule, stated with its sign."""
    d1, d5 = after["R@1"] - before["R@1"], after["R@5"] - before["R@5"]

    def change(d, k):
        if abs(d) < 0.05:
            return f"left R@{k} unchanged at {_pct(before[f'R@{k}'])}"
        return (f"{'raised' if d > 0 else 'lowered'} R@{k} from {_pct(before[f'R@{k}'])} to {_pct(after[f'R@{k}'])} "
                f"({d:+.1f} points)")

    return (f"On this run, {what} with the '{rule}' rule {change(d1, 1)} and {change(d5, 5)}; R@10 cannot move "
            f"(the same {10} candidates are only reordered).")


def _interval(diff: float, se: float, df: float) -> tuple[float, float, float]:
    """95 % confidence interval of a difference from its standard error and degrees of freedom (Student's t), and
    the two-sided p-value of 'no difference'."""
    from scipy import stats

    half = stats.t.ppf(0.975, df) * se
    p = 2 * stats.t.sf(abs(diff) / se, df) if se > 0 else float(diff == 0)
    return diff - half, diff + half, p


def _verdict(lo: float, hi: float, effect: str) -> str:
    return (f"the interval excludes zero: a measured {effect}" if lo > 0 or hi < 0 else
            "the interval includes zero: no effect distinguishable from seed-to-seed noise")


def variant_difference(results: pd.DataFrame, a: str, b: str, what: str, note: str = "") -> str:
    """Variant b minus variant a of one sweep, in R@1 over their seeds: the difference of the means, its 95 %
    confidence interval (Welch) and whether the interval excludes zero. `results`: a sweep's results.csv rows
    (columns variant, status, R@1)."""
    ok = results[results["status"] == "ok"] if "status" in results else results
    runs = {v: ok.loc[ok["variant"] == v, "R@1"].dropna().to_numpy() if "variant" in ok else np.array([])
            for v in (a, b)}
    x, y = runs[a], runs[b]
    if not len(x) or not len(y):
        return f"{what}: no finished runs of both '{a}' and '{b}' in this outputs folder yet."
    diff = y.mean() - x.mean()
    if len(x) < 2 or len(y) < 2:
        return (f"{what}: {diff:+.2f} points of R@1 from {len(x)} and {len(y)} run(s); one seed cannot tell an "
                "effect from noise: run more seeds.")
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1)) if se > 0 else len(x) + len(y) - 2
    lo, hi, p = _interval(diff, se, df)
    return (f"{what}: {diff:+.2f} points of R@1 ({y.mean():.2f} against {x.mean():.2f}, {len(y)} and {len(x)} seeds; "
            f"95 % confidence interval {lo:+.2f} to {hi:+.2f}, Welch's t-test p = {p:.2g}): "
            f"{_verdict(lo, hi, 'effect')}." + (f" {note}" if note else ""))


def rerank_gains(gains: pd.DataFrame) -> str:
    """Each re-ranker's best fusion rule and its change of R@1, paired by seed, with the 95 % confidence interval
    of that change. `gains`: results.rerank_gains (one row per re-ranker and rule)."""
    if gains.empty:
        return "No re-ranking sweep has finished yet."
    lines = []
    for name, g in gains.groupby("re-ranker", sort=False):
        best = g.loc[g["change"].idxmax()]
        n = int(best["seeds"])
        if n < 2:
            lines.append(f"{name}: its best rule ({best['rule']}) changed R@1 by {best['change']:+.2f} points on one "
                         "seed, which cannot tell an effect from noise.")
            continue
        lo, hi, p = _interval(best["change"], best["change std"] / math.sqrt(n), n - 1)
        effect = "gain" if best["change"] > 0 else "loss"
        lines.append(f"{name}: its best rule ({best['rule']}, the best of {len(g)} after the fact, so this is "
                     f"optimistic) changed R@1 from {_pct(best['retrieval R@1'])} to {_pct(best['re-ranked R@1'])}, "
                     f"{best['change']:+.2f} points (mean of {n} seeds' paired differences; 95 % confidence interval "
                     f"{lo:+.2f} to {hi:+.2f}, p = {p:.2g}): {_verdict(lo, hi, effect)}.")
    return "\n".join(lines)


def gallery_size(curve) -> str:
    """What growing the gallery did, from gallery.size_curve's rows (exact and compressed search per size)."""
    exact = curve[curve.search == "exact"].set_index("size")
    comp = curve[curve.search == "compressed"].set_index("size")
    n0, n1 = exact.index.min(), exact.index.max()
    worst = (exact["R@1"] - comp["R@1"]).abs().max()
    return (f"From {n0:,} to {n1:,} gallery tiles ({n1 / n0:.0f}x), exact search's R@1 goes from "
            f"{exact.loc[n0, 'R@1']:.1f} % to {exact.loc[n1, 'R@1']:.1f} % and R@10 from {exact.loc[n0, 'R@10']:.1f} % "
            f"to {exact.loc[n1, 'R@10']:.1f} %; the compressed index ({comp['index'].iloc[-1]}) stays within "
            f"{worst:.1f} points of exact R@1 at every size.")
