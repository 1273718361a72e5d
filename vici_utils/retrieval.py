"""Stage-1 retrieval evaluation of a run (notebook 03): embed, rank, score, and write the answer files.

    outputs/<run>/retrieval/features.npz   query/gallery features, building ids, names, paths (test split)
                            val_features.npz  the same for the held-out validation buildings (val_fraction > 0):
                                           what stage 2 chooses its fusion rule on (fusion: validation)
                            metrics.json   R@1/R@5/R@10/AP (%) under the official protocol, the named
                                           distractors_dropped numbers, the challenge score when it can be scored
                            answer.txt     top-10 gallery names per test query, tab-separated, best first
                            topk.csv       query, rank, gallery, score
                            challenge/     answer.txt + answer.zip (submission format), features.npz

Notebook 03's references and tables are elsewhere: the colour-histogram baseline in baselines.py, the results
table in retrieval_report.py.
"""
from __future__ import annotations

import csv
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import answers, metrics, search
from .device import resolve_device, resolve_precision
from .embed import cached_features, read_merged, state_dict_hash, tower_features_key
from .gallery import with_extra_tiles
from .models import load_model_for_eval
from .run_folder import (ANSWER, FEATURES, METRICS, RETRIEVAL, TOPK, TRAIN, VAL_FEATURES, run_dir, trained_checkpoint,
                         training_state, write_features, write_json)
from .weight_sources import package_source
from .provenance import describe_data, describe_model, describe_selection, initial_weights
from .u1652 import ImageItem, RetrievalSet, open_dataset

TOP_K = answers.CHALLENGE_K


class UnfinishedTraining(UserWarning):
    """The run's training stopped before its last epoch; its checkpoint is evaluated as it is."""

GROUND_TRUTH = "challenge_ground_truth.csv"  # written by the embedded world; the real challenge keeps its own


@dataclass
class RetrievalResult:
    """What evaluate computed; arrays are in query / gallery order of `test`."""
    cfg: object
    out_dir: Path
    test: RetrievalSet
    query_features: np.ndarray
    gallery_features: np.ndarray
    scores: np.ndarray          # [nq, ng] cosine similarity
    topk_indices: np.ndarray    # [nq, k] from faiss, best first
    topk_scores: np.ndarray
    metrics: dict               # official protocol, with per-query arrays
    metrics_dropped: dict       # distractors_dropped protocol (named, easier)
    weights: str                # where the evaluated weights came from
    challenge: Optional[dict] = None
    summary: dict = field(default_factory=dict)  # what metrics.json holds

    @property
    def model_description(self) -> str:
        return f"{describe_model(self.cfg)}; weights: {self.weights}"


def weights_source(cfg, folder: Optional[Path] = None) -> str:
    """Which weights models.load_model_for_eval evaluates (same order: best.pt, last.pt, init_checkpoint,
    backbone weights)."""
    train_dir = Path(folder or run_dir(cfg.run_name)) / TRAIN
    found = trained_checkpoint(train_dir)
    if found:
        state = training_state(train_dir, cfg.run_name, cfg.epochs)
        unfinished = "" if state["finished"] else (f" (UNFINISHED training: epoch {state['epoch'] or '?'} of "
                                                    f"{state['epochs']}; finish it with {state['finish']})")
        return f"trained checkpoint {cfg.run_name}/{TRAIN}/{found.name}{unfinished}"
    kind = initial_weights(cfg)
    if kind == "init_checkpoint":
        return f"init_checkpoint {Path(cfg.init_checkpoint).name} (not trained in this run)"
    if kind == "hub":
        return "hub weights, zero-shot (not trained in this run)"
    if kind == "package":
        return f"{package_source(cfg.backbone).summary}, zero-shot (not trained in this run)"
    if kind == "file":
        return f"weights file {Path(cfg.pretrained).name}, zero-shot (not trained in this run)"
    return "random initialisation (untrained: no checkpoint in this run, no pretrained weights)"


def _str_array(values) -> np.ndarray:
    return np.asarray(["" if v is None else str(v) for v in values], dtype=str)


def save_features(path: Path, rset: RetrievalSet, query_features: np.ndarray, gallery_features: np.ndarray) -> Path:
    """features.npz (run_folder.write_features) of a retrieval set: ids '' where unknown, names and paths."""
    return write_features(path, {
        "query_features": query_features, "gallery_features": gallery_features,
        "query_ids": _str_array(rset.query_ids), "gallery_ids": _str_array(rset.gallery_ids),
        "query_names": _str_array(q.name for q in rset.queries),
        "gallery_names": _str_array(g.name for g in rset.gallery),
        "query_paths": _str_array(q.path for q in rset.queries),
        "gallery_paths": _str_array(g.path for g in rset.gallery)})


def read_ground_truth(path: Path, rset: RetrievalSet) -> tuple[list[str], list[str]]:
    """Challenge ground truth (query_name, gallery_name) as ids for the metric: a query's id is its gallery name."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"query_name", "gallery_name"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a CSV with columns query_name,gallery_name")
    truth = {r["query_name"]: r["gallery_name"] for r in rows}
    missing = [q.name for q in rset.queries if q.name not in truth]
    if missing:
        raise ValueError(f"{path}: {len(missing)} challenge queries have no ground truth (first: {missing[0]})")
    return [truth[q.name] for q in rset.queries], [g.name for g in rset.gallery]


class _Embedder:
    """One model's towers with the run's evaluation settings and the feature cache."""

    def __init__(self, cfg, model, transforms, device, progress: bool):
        self.cfg, self.model, self.transforms, self.device, self.progress = cfg, model, transforms, device, progress
        self.key = f"{model.config}|{state_dict_hash(model)}"

    def __call__(self, items: Sequence[ImageItem], view: str, tag: str, merged: Optional[Path] = None) -> np.ndarray:
        """The features of `items`: those `python -m vici_utils.embed` merged into `merged` (the retrieval folder)
        when they were embedded with these weights and settings (memory-mapped), else computed or read from the cache."""
        if merged is not None:
            key = tower_features_key(self.key, view, self.transforms[view], items, self.cfg.flip_tta,
                                     resolve_precision(self.cfg.precision, self.device))
            found = read_merged(merged, "query" if view == "street" else "gallery", key)
            if found is not None:
                if self.progress:
                    print(f"{tag}: {len(found):,} features read from the sharded embedding in {merged}")
                return found
        fn = self.model.encode_street if view == "street" else self.model.encode_satellite
        return cached_features(fn, items, self.transforms[view], model_key=f"{self.key}|{view}", tag=tag,
                               batch_size=self.cfg.eval_batch_size, device=self.device, flip_tta=self.cfg.flip_tta,
                               precision=self.cfg.precision, num_workers=self.cfg.num_workers,
                               progress=self.progress)


def _top_k(rset: RetrievalSet, qf: np.ndarray, gf: np.ndarray, cfg, folder: Optional[Path] = None):
    """Top-k (k = 10, or the whole gallery if smaller) with the run's index (search.top_k): scores, indices, names."""
    scores, indices = search.top_k(qf, gf, TOP_K, cfg.faiss_index, nprobe=cfg.faiss_nprobe,
                                   rescore_k=cfg.faiss_rescore_k, folder=folder)
    names = answers.names_from_indices(indices, [g.name for g in rset.gallery])
    return scores, indices, names


class LazyScores:
    """Cosine scores computed when indexed ([qi, gi] or [np.ix_(rows, cols)]): a gallery past a few thousand
    tiles never has its query x gallery matrix held (2,579 x 1M float32 would be 10 GB)."""

    def __init__(self, qf, gf):
        self.qf, self.gf = qf, gf
        self.shape = (len(qf), len(gf))

    def __getitem__(self, key):
        rows, cols = (np.asarray(k) for k in key)
        q = np.asarray(self.qf[rows.ravel()], np.float32)
        g = np.asarray(self.gf[cols.ravel()], np.float32)
        if rows.ndim == 0 and cols.ndim == 0:
            return np.float32(q[0] @ g[0])
        return (q @ g.T).reshape(rows.shape[0], cols.shape[-1])


def _scores(qf, gf):
    return qf @ np.asarray(gf).T if len(qf) * len(gf) <= 1 << 24 else LazyScores(qf, gf)


def answer_challenge(ds, embed: _Embedder, out_dir: Path, cfg) -> dict:
    """Embed the masked challenge set, write answer.txt + answer.zip, and score it where ground truth exists."""
    rset = ds.challenge
    qf = embed(rset.queries, "street", "challenge-queries")
    gf = embed(rset.gallery, "satellite", "challenge-gallery")
    save_features(out_dir / FEATURES, rset, qf, gf)
    _, indices, names = _top_k(rset, qf, gf, cfg, out_dir)
    txt, zip_path = answers.write_challenge(out_dir, names, k=indices.shape[1])
    info = {"answer_txt": str(txt), "answer_zip": str(zip_path), "n_query": len(rset.queries),
            "n_gallery": len(rset.gallery), "scored": False}
    truth = Path(ds.root) / "test" / GROUND_TRUTH
    if truth.is_file():
        qids, gids = read_ground_truth(truth, rset)
        info.update(metrics.scalars(metrics.evaluate(qf, gf, qids, gids)), scored=True, ground_truth=str(truth))
    return info


def _validation(cfg, ds, embed: _Embedder, out_dir: Path) -> Optional[dict]:
    """Embed the held-out validation buildings (the run's own split) into val_features.npz, where stage 2 chooses
    its fusion rule without looking at the test set; their metrics go into metrics.json. None without a split."""
    _, val_ids = ds.split_buildings(cfg.val_fraction, cfg.seed)
    path = out_dir / VAL_FEATURES
    path.unlink(missing_ok=True)  # a split that no longer exists must not leave an older run's features behind
    if not val_ids:
        return None
    val = ds.val_set(val_ids)
    qf = embed(val.queries, "street", "val-queries")
    gf = embed(val.gallery, "satellite", "val-gallery")
    save_features(path, val, qf, gf)
    return {"buildings": len(val_ids), "queries": len(val.queries),
            **metrics.scalars(metrics.evaluate(qf, gf, val.query_ids, val.gallery_ids))}


def evaluate(cfg, progress: bool = True, challenge: bool = True) -> RetrievalResult:
    """Evaluate the run's model on the test split (and the challenge set when the data has one)."""
    start = time.time()
    ds = open_dataset(cfg, progress=progress)
    folder = run_dir(cfg.run_name)
    out_dir = folder / RETRIEVAL
    weights = weights_source(cfg, folder)
    training = training_state(folder / TRAIN, cfg.run_name, cfg.epochs)
    if training and not training["finished"]:
        warnings.warn(f"evaluating an unfinished training: {weights}", UnfinishedTraining, stacklevel=2)
    torch.manual_seed(cfg.seed)  # an untrained model is then the same on every run (and its features cacheable)
    model, transforms = load_model_for_eval(cfg, folder)
    device = resolve_device(cfg.device)
    embed = _Embedder(cfg, model, transforms, device, progress)  # hash the weights before moving them
    model.to(device)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)

    test = with_extra_tiles(cfg, ds.test, progress)
    qf = embed(test.queries, "street", "test-queries", merged=out_dir)
    gf = embed(test.gallery, "satellite", "test-gallery", merged=out_dir)
    official = metrics.evaluate(qf, gf, test.query_ids, test.gallery_ids)
    dropped = metrics.evaluate(qf, gf, test.query_ids, test.gallery_ids, protocol="distractors_dropped")

    save_features(out_dir / FEATURES, test, qf, gf)
    validation = _validation(cfg, ds, embed, out_dir)
    top_scores, top_idx, names = _top_k(test, qf, gf, cfg, out_dir)
    answers.write_answer_txt(out_dir / ANSWER, names, k=top_idx.shape[1])
    answers.write_topk_csv(out_dir / TOPK, [q.name for q in test.queries], [g.name for g in test.gallery],
                           top_idx, top_scores)
    chal = answer_challenge(ds, embed, out_dir / "challenge", cfg) if challenge and ds.challenge else None

    summary = {
        **metrics.scalars(official),
        "split": "test (street -> satellite)",
        "distractors_dropped": metrics.scalars(dropped),
        "challenge": chal,
        "data": describe_data(cfg),
        "data_root": str(ds.root),
        "model": describe_model(cfg),
        "weights": weights,
        "training": training,  # None: no training in this run; else finished, or how far it got and how to finish
        "model_selection": describe_selection(cfg),
        "validation": validation,
        "embedding_dim": int(qf.shape[1]),
        "flip_tta": cfg.flip_tta,
        "faiss_index": cfg.faiss_index,
        **({"faiss_nprobe": cfg.faiss_nprobe, "faiss_rescore_k": cfg.faiss_rescore_k}
           if cfg.faiss_index not in search.BASIC else {}),
        "n_extra_distractors": len(test.gallery) - len(ds.test.gallery),
        "extra_gallery": [str(f) for f in cfg.extra_gallery],
        "world_extra_distractors": cfg.world_extra_distractors,
        "run_name": cfg.run_name,
        "seconds": round(time.time() - start, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / METRICS, summary)
    model.to("cpu")
    return RetrievalResult(cfg, out_dir, test, qf, gf, _scores(qf, gf), top_idx, top_scores, official, dropped, weights,
                           chal, summary)

