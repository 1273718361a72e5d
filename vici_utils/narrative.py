"""Sentences about a run's results, chosen and filled in from the numbers, so the notebooks' prose can never
contradict the figures beside it. Each function takes what the notebook already computed and returns a
`Sentence`: plain text that also carries every number it states as a `Fact` (the value, how it is printed and
where it comes from), so a test can check each printed number against its source. Notebooks show sentences
with `show`, which keeps the facts in the executed notebook; fixed prose in the notebooks makes no claim that
a run could contradict.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

MIME = "application/vnd.vici.sentence+json"   # the facts of a shown sentence, in the executed notebook


@dataclass(frozen=True)
class Fact:
    """One number a sentence states. `source` says where the value comes from, for the tests to check:
    "<file under the run folder>:<key>" (a JSON key, or a CSV column at `[column=value]`, e.g.
    "train/train_log.csv:loss[epoch=1]"), "= <expression of the sentence's other facts>", or "" for a value
    computed in the notebook itself (then only its printing is checked)."""
    value: float
    fmt: str = ".1f"
    source: str = ""

    @property
    def text(self) -> str:
        return format(self.value, self.fmt)


class Sentence(str):
    """Text made of a template whose every number about results is a named fact: str(s) equals
    s.template.format(**{name: fact.text}). Numbers written in the template itself are fixed wording (a 95 %
    interval, R@1), never a measurement."""
    template: str
    facts: dict

    def __new__(cls, template: str = "", **facts: Fact):
        text = template.format(**{k: f.text for k, f in facts.items()})
        obj = super().__new__(cls, text)
        obj.template, obj.facts = template, dict(facts)
        return obj

    @staticmethod
    def join(parts, sep: str = "") -> "Sentence":
        """Several sentences as one (fact names must differ); plain strings join as fixed wording."""
        template, facts = [], {}
        for part in parts:
            if isinstance(part, Sentence):
                clash = set(facts) & set(part.facts)
                if clash:
                    raise ValueError(f"Sentence.join: fact names used twice: {sorted(clash)}")
                template.append(part.template)
                facts |= part.facts
            else:
                template.append(str(part).replace("{", "{{").replace("}", "}}"))
        return Sentence(sep.replace("{", "{{").replace("}", "}}").join(template), **facts)

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": str(self),
                MIME: {"template": self.template, "facts": {k: asdict(f) for k, f in self.facts.items()}}}


def show(sentence) -> None:
    """Show a sentence in a notebook: its text, and its facts for the tests (a plain string shows as text)."""
    from IPython.display import display

    if isinstance(sentence, Sentence):
        display(sentence._repr_mimebundle_(), raw=True)   # raw: IPython would show a str subclass as its repr
    else:
        print(sentence)


def _pct(x: float) -> str:
    return f"{x:.1f} %"


LOG = "train/train_log.csv"
METRICS = "retrieval/metrics.json"


def training_story(log: pd.DataFrame, select_epoch: str = "last") -> Sentence:
    """What the training curves show: where the loss went, how recall on the checked set moved, where it peaked,
    and where the learned temperature went. `log`: the run's train/train_log.csv; select_epoch: the run's."""
    if log.empty:
        return Sentence("No training in this run (epochs: 0): the model is evaluated as it was loaded.")
    e0, e1 = int(log["epoch"].iloc[0]), int(log["epoch"].iloc[-1])
    parts = [Sentence("The training loss went from {loss0} in epoch {e0} to {loss1} in epoch {e1}.",
                      loss0=Fact(log["loss"].iloc[0], ".2f", f"{LOG}:loss[epoch={e0}]"),
                      e0=Fact(e0, "d", f"{LOG}:epoch[epoch={e0}]"),
                      loss1=Fact(log["loss"].iloc[-1], ".2f", f"{LOG}:loss[epoch={e1}]"),
                      e1=Fact(e1, "d", f"{LOG}:epoch[epoch={e1}]"))]
    checked = log.dropna(subset=["R@1"])
    which = "the held-out training buildings" if (log["eval_set"].iloc[0] == "val") else "the TEST set"
    if checked.empty:
        return Sentence.join(parts + [" Recall was never checked (no held-out buildings): the last epoch is the model."])
    r1 = checked["R@1"].to_numpy()
    epochs = checked["epoch"].astype(int).to_numpy()
    best, first, last = int(epochs[int(np.argmax(r1))]), int(epochs[0]), int(epochs[-1])

    def r1_at(e):
        return Fact(float(checked.loc[checked["epoch"] == e, "R@1"].iloc[0]), ".1f", f"{LOG}:R@1[epoch={e}]")

    parts.append(Sentence(" R@1 on " + which + " went from {r_first} % at epoch {c_first} to {r_last} % at epoch "
                          "{c_last}, best {r_best} % at epoch {c_best}.",
                          r_first=r1_at(first), c_first=Fact(first, "d"), r_last=r1_at(last), c_last=Fact(last, "d"),
                          r_best=r1_at(best), c_best=Fact(best, "d")))
    if len(r1) > 2:
        parts.append(Sentence(" It rose at {rises} of {checks} checks", rises=Fact(int((np.diff(r1) > 0).sum()), "d"),
                              checks=Fact(len(r1) - 1, "d")))
        if best == last:
            parts.append("; the best epoch was the last, so more epochs might still help.")
        elif r1[-1] < r1.max() - 1.0:
            parts.append(Sentence("; it fell {fall} points after its peak while the loss kept falling: the model "
                                  "began to memorise its training buildings, or the few held-out buildings "
                                  + ("vary by chance (best.pt keeps the peak)." if select_epoch == "best" else
                                     "vary by chance (best.pt keeps the last epoch; select_epoch: best would keep "
                                     "the peak)."),
                                  fall=Fact(r1.max() - r1[-1], ".1f", "= r_best - r_last")))
        else:
            parts.append("; it levelled off near its peak.")
    if "temperature" in log and log["temperature"].nunique() > 1:
        t0, t1 = float(log["temperature"].iloc[0]), float(log["temperature"].iloc[-1])
        parts.append(Sentence(
            " The learned temperature went from {t0} to {t1}: " + (
                "a lower T sharpens the softmax, so the model grew more confident in its own ranking."
                if t1 < t0 else "a higher T flattens the softmax."),
            t0=Fact(t0, ".3f", f"{LOG}:temperature[epoch={e0}]"), t1=Fact(t1, ".3f", f"{LOG}:temperature[epoch={e1}]")))
    return Sentence.join(parts)


def val_and_test(val_r1: float, val_gallery: int, test_r1: float, test_gallery: int, k: int = 1,
                 val_source: str = "") -> Sentence:
    """Why validation and test recall differ: gallery sizes and their chance levels. val_source: where val_r1
    comes from (a Fact source, e.g. the training log's row of the selected epoch)."""
    return Sentence(
        f"Validation R@{k} is {{val}} % against a gallery of {{nv}} tiles (chance {{cv}} %); "
        f"test R@{k} is {{test}} % against {{nt}} tiles (chance {{ct}} %). The test gallery is "
        "{ratio}x larger, so each query has that many more tiles to confuse with its own: "
        "the two numbers measure different tasks, and only the test number compares with other runs. As multiples "
        "of chance: {xv}x on validation, {xt}x on test.",
        val=Fact(val_r1, ".1f", val_source), nv=Fact(val_gallery, "d"),
        cv=Fact(100 * k / val_gallery, ".1f", f"= 100 * {k} / nv"),
        test=Fact(test_r1, ".1f", f"{METRICS}:R@{k}"), nt=Fact(test_gallery, "d", f"{METRICS}:n_gallery"),
        ct=Fact(100 * k / test_gallery, ".1f", f"= 100 * {k} / nt"),
        ratio=Fact(test_gallery / val_gallery, ".0f", "= nt / nv"),
        xv=Fact(val_r1 / (100 * k / val_gallery), ".1f", f"= val / (100 * {k} / nv)"),
        xt=Fact(test_r1 / (100 * k / test_gallery), ".1f", f"= test / (100 * {k} / nt)"))


def modality_gap(street: np.ndarray, satellite: np.ndarray) -> Sentence:
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
    return Sentence("The street and satellite centroids are {gap} apart, against a spread of {spread} around them "
                    "(ratio {ratio}): " + verdict + ". Retrieval only compares a query with tiles, so a gap by itself "
                    "costs nothing; what matters is the order of the tiles around each query.",
                    gap=Fact(gap, ".2f"), spread=Fact(spread, ".2f"), ratio=Fact(ratio, ".2f"))


def loss_against_chance(loss: float, batch: int, temperature: float) -> Sentence:
    """The loss of one batch against log B, the loss of a model that cannot tell the tiles apart."""
    chance = math.log(batch)
    gap = loss - chance
    if abs(gap) < 0.1 * chance:
        verdict = "close to it: before fine-tuning the towers barely tell these tiles apart"
    elif gap > 0:
        verdict = ("above it: the model is confidently wrong on some rows (a negative tile is more similar than "
                   "the true one, and the small temperature magnifies the difference)")
    else:
        verdict = "below it: the model already tells some of these tiles apart"
    return Sentence("At T = {t} the loss of these {b} pairs is {loss}, against log {b} = {chance} for a model that "
                    "gives every tile the same probability: " + verdict + ".",
                    t=Fact(temperature, "g"), b=Fact(batch, "d"), loss=Fact(loss, ".2f"),
                    chance=Fact(chance, ".2f", "= log(b)"))


def drone_batch(n_drone: int, n_pairs: int, n_available: int, rate: float) -> Sentence:
    """How many pairs of one batch got a drone image, against what drone_rate makes likely (binomial)."""
    mean = rate * n_available
    sd = math.sqrt(n_available * rate * (1 - rate))
    z = (n_drone - mean) / sd if sd else 0.0
    verdict = ("within the usual spread" if abs(z) <= 2 else
               "an unusually " + ("low" if z < 0 else "high") + " draw, which happens by chance now and then")
    return Sentence("First batch of epoch 1: {n} pairs of distinct buildings, {d} with a drone image instead of the "
                    "satellite tile. With P = {p} and {a} of them having drone images, a batch holds {mean} on average "
                    "(binomial standard deviation {sd}): {d} is " + verdict + ". The share over each whole epoch is "
                    "the drone_rate column of the training log.",
                    n=Fact(n_pairs, "d"), d=Fact(n_drone, "d"), p=Fact(rate, "g"), a=Fact(n_available, "d"),
                    mean=Fact(mean, ".1f", "= p * a"), sd=Fact(sd, ".1f", "= (a * p * (1 - p)) ** 0.5"))


def rerank_change(before: dict, after: dict, rule: str, what: str) -> Sentence:
    """The re-ranker's effect on R@1 and R@5 for one fusion rule, stated with its sign."""
    parts = [f"On this run, {what} with the '{rule}' rule "]
    for k in (1, 5):
        b, a = before[f"R@{k}"], after[f"R@{k}"]
        d = a - b
        if k == 5:
            parts.append(" and ")
        if abs(d) < 0.05:
            parts.append(Sentence(f"left R@{k} unchanged at {{b{k}}} %", **{f"b{k}": Fact(b)}))
        else:
            parts.append(Sentence(f"{'raised' if d > 0 else 'lowered'} R@{k} from {{b{k}}} % to {{a{k}}} % "
                                  f"({{d{k}}} points)",
                                  **{f"b{k}": Fact(b), f"a{k}": Fact(a), f"d{k}": Fact(d, "+.1f", f"= a{k} - b{k}")}))
    parts.append("; R@10 cannot move (the same 10 candidates are only reordered).")
    return Sentence.join(parts)


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


def _difference(what: str, diff: float, lo: float, hi: float, p: float, means: tuple[float, float], n: tuple[int, int],
                test: str, effect: str, note: str = "") -> Sentence:
    return Sentence(
        what.replace("{", "{{").replace("}", "}}") + ": {diff} points of R@1 ({mb} against {ma}, {nb} and {na} seeds; "
        "95 % confidence interval {lo} to {hi}, " + test + " p = {p}): " + _verdict(lo, hi, effect) + "."
        + (" " + note.replace("{", "{{").replace("}", "}}") if note else ""),
        diff=Fact(diff, "+.2f", "= mb - ma" if test.startswith("Welch") else ""), mb=Fact(means[1], ".2f"),
        ma=Fact(means[0], ".2f"), nb=Fact(n[1], "d"), na=Fact(n[0], "d"), lo=Fact(lo, "+.2f"), hi=Fact(hi, "+.2f"),
        p=Fact(p, ".2g"))


def variant_difference(results: pd.DataFrame, a: str, b: str, what: str, note: str = "") -> Sentence:
    """Variant b minus variant a of one sweep, in R@1 over their seeds, with its 95 % confidence interval and
    whether it excludes zero: paired by seed when both variants ran the same seeds (a seed fixes the held-out
    buildings, data order and augmentation for both), else the difference of the means (Welch). `results`: a
    sweep's results.csv rows (columns variant, seed, status, R@1), or a record's summary rows (one per variant:
    R@1, R@1_std, n)."""
    ok = results[results["status"] == "ok"] if "status" in results else results
    if "seed" in ok and "variant" in ok and ("n" not in ok or ok["n"].isna().all()):
        x, y = (ok[ok["variant"] == v].dropna(subset=["R@1"]).set_index("seed")["R@1"] for v in (a, b))
        if len(x) > 1 and x.index.is_unique and set(x.index) == set(y.index):
            seeds = sorted(x.index)
            return paired_difference(x[seeds].to_numpy(), y[seeds].to_numpy(), what, note)

    def summary(v):  # mean, sample variance, number of seeds; a summary row (column n) already holds them
        g = ok[ok["variant"] == v] if "variant" in ok else ok.iloc[:0]
        if "n" in g and len(g):
            return float(g["R@1"].iloc[0]), float(g["R@1_std"].iloc[0]) ** 2, int(g["n"].iloc[0])
        x = g["R@1"].dropna().to_numpy() if len(g) else np.array([])
        return (x.mean() if len(x) else math.nan), (x.var(ddof=1) if len(x) > 1 else math.nan), len(x)

    (mx, sx, nx), (my, sy, ny) = summary(a), summary(b)
    if not nx or not ny:
        return Sentence.join([f"{what}: no finished runs of both '{a}' and '{b}' in this outputs folder yet."])
    diff = my - mx
    if nx < 2 or ny < 2:
        return Sentence.join([what, Sentence(": {diff} points of R@1 from {nx} and {ny} run(s); one seed cannot tell "
                                             "an effect from noise: run more seeds.",
                                             diff=Fact(diff, "+.2f"), nx=Fact(nx, "d"), ny=Fact(ny, "d"))])
    vx, vy = sx / nx, sy / ny
    se = math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx ** 2 / (nx - 1) + vy ** 2 / (ny - 1)) if se > 0 else nx + ny - 2
    lo, hi, p = _interval(diff, se, df)
    return _difference(what, diff, lo, hi, p, (mx, my), (nx, ny), "Welch's t-test", "effect", note)


def paired_difference(a: np.ndarray, b: np.ndarray, what: str, note: str = "") -> Sentence:
    """b minus a, paired (run i of a and of b share everything but the compared setting, e.g. the seed): the
    mean of the per-pair differences, its 95 % confidence interval (Student's t on the differences) and whether
    the interval excludes zero."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired_difference: need the same number (>= 1) of runs on both sides, got {len(a)} and {len(b)}")
    d = b - a
    if len(d) < 2:
        return Sentence.join([what, Sentence(": {diff} points of R@1 from one pair of runs; one seed cannot tell an "
                                             "effect from noise: run more seeds.", diff=Fact(d.mean(), "+.2f"))])
    lo, hi, p = _interval(d.mean(), d.std(ddof=1) / math.sqrt(len(d)), len(d) - 1)
    return _difference(what, d.mean(), lo, hi, p, (a.mean(), b.mean()), (len(a), len(b)),
                       "paired t-test over seeds,", "effect", note)


def rerank_gains(gains: pd.DataFrame) -> Sentence:
    """Each re-ranker's change of R@1 with the rule its runs report (chosen before the test set: on the validation
    buildings, or by the fusion parameter; else, for older records, the best rule after the fact, said so), paired
    by seed, with the 95 % confidence interval of that change. `gains`: results.rerank_gains (one row per re-ranker
    and rule)."""
    if gains.empty:
        return Sentence("No re-ranking sweep has finished yet.")
    lines = []
    for i, (name, g) in enumerate(gains.groupby("re-ranker", sort=False)):
        reported = "reported" in g and g["reported"].any()  # the rule the runs report, chosen before the test set
        best = g[g["reported"]].iloc[0] if reported else g.loc[g["change"].idxmax()]
        n = int(best["seeds"])
        change = Fact(best["change"], "+.2f")
        if n < 2:
            lines.append(Sentence.join([f"{name}: its {'reported' if reported else 'best'} rule ({best['rule']}) "
                                        "changed R@1 by ", Sentence(
                f"{{c{i}}} points on one seed, which cannot tell an effect from noise.", **{f"c{i}": change})]))
            continue
        if reported:
            on = "on the validation buildings" if best.get("chosen on") == "validation" else "by the fusion parameter"
            how = Sentence(f"its reported rule ({best['rule']}, chosen {on})")
        else:
            how = Sentence(f"its best rule ({best['rule']}, the best of {{k{i}}} after the fact, so this is optimistic)",
                           **{f"k{i}": Fact(len(g), "d")})
        said = Sentence.join([f"{name}: ", how, Sentence(
            f" changed R@1 from {{b{i}}} % to {{a{i}}} %, {{c{i}}} points",
            **{f"b{i}": Fact(best["retrieval R@1"]), f"a{i}": Fact(best["re-ranked R@1"]), f"c{i}": change})])
        if pd.isna(best["change std"]):  # a record of means only: the per-seed pairs are not there
            lines.append(Sentence.join([said, Sentence(
                f" (difference of the means over {{n{i}}} seeds; the record keeps no per-seed pairs, so no paired "
                "interval).", **{f"n{i}": Fact(n, "d")})]))
            continue
        lo, hi, p = _interval(best["change"], best["change std"] / math.sqrt(n), n - 1)
        effect = "gain" if best["change"] > 0 else "loss"
        lines.append(Sentence.join([said, Sentence(
            f" (mean of {{n{i}}} seeds' paired differences; 95 % confidence interval {{lo{i}}} to {{hi{i}}}, "
            f"p = {{p{i}}}): {_verdict(lo, hi, effect)}.",
            **{f"n{i}": Fact(n, "d"), f"lo{i}": Fact(lo, "+.2f"), f"hi{i}": Fact(hi, "+.2f"),
               f"p{i}": Fact(p, ".2g")})]))
    return Sentence.join(lines, "\n")


def validation_chance(n_gallery: int, k: int = 10) -> Sentence:
    """Chance R@k on a small validation gallery, which makes validation recall look high."""
    return Sentence(f"The validation gallery holds only {{n}} tiles, so chance R@{k} there is {{c}} %: notebook 03 "
                    "sets validation beside the test set.",
                    n=Fact(n_gallery, "d"), c=Fact(min(100.0, 100 * k / n_gallery), ".0f", f"= min(100, 100 * {k} / n)"))


def test_task(n_query: int, n_buildings: int, n_gallery: int, n_distractors: int) -> Sentence:
    """The size of the test task and what chance gives on it."""
    return Sentence("{q} queries of {b} buildings against {g} gallery tiles ({d} distractor buildings): chance "
                    "R@1 = {chance} %",
                    q=Fact(n_query, "d"), b=Fact(n_buildings, "d"), g=Fact(n_gallery, "d"), d=Fact(n_distractors, "d"),
                    chance=Fact(100 / n_gallery, ".2f", "= 100 / g"))


def gallery_size(curve) -> str:
    """What growing the gallery did, from gallery.size_curve's rows (exact and compressed search per size)."""
    exact = curve[curve.search == "exact"].set_index("size")
    comp = curve[curve.search == "compressed"].set_index("size")
    n0, n1 = exact.index.min(), exact.index.max()
    worst = (exact["R@1"] - comp["R@1"]).abs().max()
    return (f"From {n0:,} to {n1:,} gallery tiles ({n1 / n0:.0f}x), exact search's R@1 goes from "
            f"{exact.loc[n0, 'R@1']:.1f} % to {exact.loc[n1, 'R@1']:.1f} % and R@10 from {exact.loc[n0, 'R@10']:.1f} % "
            f"to {exact.loc[n1, 'R@10']:.1f} %; the compressed index ({comp['index'].iloc[-1]}) "
            + (f"stays within {worst:.1f} points of exact R@1 at every size." if round(worst, 1) else
               "gives exact search's R@1 at every size."))
