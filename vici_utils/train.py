"""Stage 1: train the two towers with a contrastive loss (InfoNCE or NT-Xent), drone mixing, validation and exact resume.

    train(cfg) -> TrainResult                                   (from a notebook)
    torchrun --nproc_per_node N -m vici_utils.train params/X.yaml [--set key=value ...]

Writes outputs/<run>/train/: last.pt (everything needed to resume), best.pt (the kept epoch's model: the last,
or the best validation R@1 under select_epoch: best), train_log.csv (one row per epoch), config.yaml (the resolved
parameters) and result.json (written when training completes, with the kept epoch; a rerun then returns at once).
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .checkpoints import WeightsError, read_checkpoint
from .datasets import PairBatchSampler, PairDataset
from .device import autocast, data_workers, resolve_device, resolve_precision, tune_for_training
from .losses import ContrastiveLoss
from .metrics import METRICS
from .models import TOWERS, build_model
from .params import TRAIN_KEYS, Params, as_stored, config_differences, from_command_line, read_yaml, to_yaml
from .transforms import model_transforms
from .u1652 import VIEWS, open_dataset
from .run_folder import BEST, LAST, TRAIN, TRAIN_CONFIG, TRAIN_LOG, TRAIN_RESULT, read_json, stage_dir, write_atomic
from .progress import progress as progress_bar

CHECKPOINT_FORMAT = "vici-train/1"
LOG_COLUMNS = ("epoch", "step", "loss", "lr", "temperature", "drone_rate", "eval_set", *METRICS, "seconds")


class TrainConfigError(ValueError):
    """A stored run that does not match the parameters; the message names the differing keys."""


@dataclass
class TrainResult:
    train_dir: Path
    log: pd.DataFrame
    best_epoch: Optional[int]
    best: dict = field(default_factory=dict)  # metrics of the selected checkpoint (% ), empty if none
    eval_set: str = "val"                     # what selected it: 'val' (held-out train buildings) or 'test'
    seconds: float = 0.0                      # training time, all sessions of this run together
    epochs_now: int = 0                       # epochs trained by this call (0: the stored result)


# --- small helpers -----------------------------------------------------------------------------------
def _save_atomic(obj, path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
            "torch": torch.random.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.random.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, steps_per_epoch: int, cfg: Params) -> float:
    """Linear warmup, then cosine to zero or VICI's per-epoch exponential decay (lr_gamma ** epoch)."""
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "exponential":
        return cfg.lr_gamma ** ((step - warm) // steps_per_epoch)
    total = max(cfg.epochs * steps_per_epoch - warm, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, total) / total))


def _param_groups(modules, weight_decay: float, decay_all: bool = False) -> list[dict]:
    """No weight decay on biases, norms and the temperature (1-D or scalar parameters), unless decay_all."""
    decay, no_decay = [], []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad:
                (decay if decay_all or p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _setup_distributed(cfg: Params) -> tuple[int, int, torch.device]:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        use_cuda = cfg.device != "cpu" and torch.cuda.is_available()
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    device = resolve_device(cfg.device)
    tune_for_training(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    return rank, world, device


def pair_data(cfg: Params, model, dataset, train_ids=None, rank: int = 0, world: int = 1):
    """The training pairs (with the model's training transforms) and the batch sampler that plans epochs."""
    if train_ids is None:
        train_ids, _ = dataset.split_buildings(cfg.val_fraction, cfg.seed)
    pairs = PairDataset(train_ids, dataset.train, *(model_transforms(cfg, model, True, v) for v in VIEWS))
    sampler = PairBatchSampler(*pairs.counts(), cfg.batch_size, cfg.seed, cfg.drone_rate, cfg.drone_high_only,
                               cfg.street_sampling, rank, world)
    return pairs, sampler


# --- validation --------------------------------------------------------------------------------------
def evaluate_model(model, retrieval_set, cfg: Params, device: torch.device) -> dict:
    """Street -> satellite metrics of a RetrievalSet with the official evaluator."""
    from .embed import extract_features
    from .metrics import evaluate

    tf = {v: model_transforms(cfg, model, train=False, view=v) for v in TOWERS}
    common = dict(batch_size=cfg.eval_batch_size, device=device, precision=cfg.precision, progress=False)
    q = extract_features(model.encode_street, retrieval_set.queries, tf["street"], **common)
    g = extract_features(model.encode_satellite, retrieval_set.gallery, tf["satellite"], **common)
    m = evaluate(q, g, retrieval_set.query_ids, retrieval_set.gallery_ids)
    return {k: float(m[k]) for k in METRICS}


# --- stored results ----------------------------------------------------------------------------------
def read_log(train_dir: Path) -> pd.DataFrame:
    path = train_dir / TRAIN_LOG
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=list(LOG_COLUMNS))


def stored_result(train_dir: Path) -> Optional[TrainResult]:
    r = read_json(train_dir / TRAIN_RESULT, train_dir.parent.name, TRAIN)
    if r is None:
        return None
    return TrainResult(train_dir, read_log(train_dir), r["best_epoch"], r["best"], r["eval_set"], r["seconds"], 0)


def _check_stored_config(stored: dict, cfg: Params, where: Path) -> None:
    # which epoch is kept changes no step of training: a run that kept its best epoch can keep its last instead
    keys = [k for k in TRAIN_KEYS if not (k == "select_epoch" and cfg.select_epoch == "last")]
    diff = config_differences(stored, cfg, keys)
    if diff:
        raise TrainConfigError(f"{where} was trained with other parameters: {', '.join(diff)}. "
                               "Use another run_name, or resume: false to train this run again from scratch.")


# --- training ----------------------------------------------------------------------------------------
def train_step(fwd, loss_fn, opt, street: torch.Tensor, tile: torch.Tensor, device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
    """One optimiser step on a batch of (street, tile) pairs: forward under autocast, the loss, backward, step.
    Returns the loss tensor (reading it with .item() waits for the device)."""
    street = street.to(device, non_blocking=True, memory_format=torch.channels_last)
    tile = tile.to(device, non_blocking=True, memory_format=torch.channels_last)
    with autocast(device, dtype):
        s, g = fwd(street, tile)
    loss = loss_fn(s, g)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def _keep_last_epoch(train_dir: Path, cfg: Params) -> TrainResult:
    """A finished run that kept its best epoch, now asked for its last: best.pt, result.json and config.yaml are
    rewritten from last.pt (saved at the final epoch with everything in it), without training a step."""
    last = read_checkpoint(train_dir / LAST, "resume checkpoint")
    log = read_log(train_dir)
    final = log[log["epoch"] == cfg.epochs].iloc[-1]
    metrics = {k: float(final[k]) for k in METRICS}
    _save_atomic({k: last[k] for k in ("format", "model_config", "epoch", "model")}
                 | {"config": cfg.model_dump(), "eval_set": cfg.select_on, "metrics": metrics}, train_dir / BEST)
    r = json.loads((train_dir / TRAIN_RESULT).read_text())
    write_atomic(train_dir / TRAIN_RESULT, json.dumps(r | {"best_epoch": cfg.epochs, "best": metrics}, indent=1))
    write_atomic(train_dir / TRAIN_CONFIG, to_yaml(cfg))
    return stored_result(train_dir)


def train(cfg: Params, progress: bool = True, stop_after_epoch: Optional[int] = None) -> TrainResult:
    """Train (or resume, or return the stored result of) the run `cfg.run_name`.

    stop_after_epoch ends this call once that many epochs are done, as an interruption would; the next
    call resumes from last.pt and ends with the same weights as an uninterrupted run (on the CPU).
    """
    train_dir = stage_dir(cfg.run_name, TRAIN)
    rank, world, device = _setup_distributed(cfg)
    main = rank == 0
    last_path = train_dir / LAST

    if cfg.epochs == 0:  # nothing to train: evaluation uses init_checkpoint or the bare backbone
        return TrainResult(train_dir, read_log(train_dir).iloc[0:0], None, {}, cfg.select_on)
    if cfg.resume:
        done = stored_result(train_dir)
        if done is not None and last_path.is_file():
            stored = read_yaml(train_dir / TRAIN_CONFIG)
            _check_stored_config(stored, cfg, train_dir)
            if as_stored(stored)["select_epoch"] != cfg.select_epoch and rank == 0:
                done = _keep_last_epoch(train_dir, cfg)
            return done
    ckpt = None
    if cfg.resume and last_path.is_file():
        try:
            ckpt = read_checkpoint(last_path, "resume checkpoint")
        except WeightsError as e:  # truncated by a full disk, say: name it and the two ways on
            raise WeightsError(f"{e}. Delete {last_path} to start this run again, or set resume: false") from None
        _check_stored_config(ckpt["config"], cfg, last_path)

    if main:  # rank 0 generates the embedded world (once); the other ranks then read it
        dataset = open_dataset(cfg, progress=progress)
    if world > 1:
        dist.barrier()
    if not main:
        dataset = open_dataset(cfg, progress=False)
    train_ids, val_ids = dataset.split_buildings(cfg.val_fraction, cfg.seed)
    eval_set = cfg.select_on
    selection_set = dataset.test if eval_set == "test" else (dataset.val_set(val_ids) if val_ids else None)

    seed_everything(cfg.seed)
    model = build_model(cfg)
    dtype = resolve_precision(cfg.precision, device)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device, memory_format=torch.channels_last)
    loss_fn = ContrastiveLoss(cfg.temperature, cfg.learnable_temperature, cfg.loss).to(device)

    pairs, sampler = pair_data(cfg, model, dataset, train_ids, rank, world)
    workers = data_workers(device, persistent=True) if cfg.num_workers is None else cfg.num_workers
    loader = DataLoader(pairs, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    steps_per_epoch = max(len(sampler), 1)

    # fused AdamW: one kernel for all parameters, on the GPU and (5x cheaper than foreach) on the CPU
    opt = torch.optim.AdamW(_param_groups([model, loss_fn], cfg.weight_decay, cfg.decay_norms_and_biases), lr=cfg.lr, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps_per_epoch, cfg))

    start_epoch, step, rows, best, seconds = 0, 0, [], {"epoch": None, "metrics": {}}, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        loss_fn.load_state_dict(ckpt["loss"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, step, rows, best, seconds = (ckpt["epoch"], ckpt["step"], ckpt["log"], ckpt["best"],
                                                  ckpt["seconds"])
        _set_rng_state(ckpt["rng"])
        if main and ckpt["best"]["epoch"] == ckpt["epoch"]:  # last.pt is saved first: redo a best.pt save a stop cut
            _save_atomic({"format": CHECKPOINT_FORMAT, "model_config": model.config, "config": ckpt["config"],
                          "epoch": ckpt["epoch"], "model": ckpt["model"], "eval_set": cfg.select_on,
                          "metrics": ckpt["best"]["metrics"]}, train_dir / BEST)
        del ckpt

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    fwd = torch.compile(net) if cfg.compile else net

    if main:
        train_dir.mkdir(parents=True, exist_ok=True)
        if start_epoch == 0:  # a fresh start: files of an earlier attempt must not pass for this run's
            for name in (TRAIN_RESULT, BEST, LAST, TRAIN_LOG):
                (train_dir / name).unlink(missing_ok=True)
        write_atomic(train_dir / TRAIN_CONFIG, to_yaml(cfg))
    end_epoch = cfg.epochs if stop_after_epoch is None else min(cfg.epochs, stop_after_epoch)
    bar = progress_bar(total=cfg.epochs * steps_per_epoch, initial=step, unit="step",
                       disable=not (progress and main), desc=f"epoch {start_epoch + 1}/{cfg.epochs}")
    t0 = time.perf_counter()
    for epoch in range(start_epoch, end_epoch):
        bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
        sampler.set_epoch(epoch)
        model.train()
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, drone count, pair count
        n_batches = 0
        for street, tile, _, is_drone in loader:
            loss = train_step(fwd, loss_fn, opt, street, tile, device, dtype)
            sched.step()
            step += 1
            n_batches += 1
            totals += torch.tensor([loss.item(), is_drone.sum().item(), len(is_drone)], dtype=torch.float64)
            bar.update(1)
        if world > 1:
            dist.all_reduce(totals)
            totals[0] /= world  # every rank holds the same global loss
        row = {"epoch": epoch + 1, "step": step, "loss": totals[0].item() / max(n_batches, 1),
               "lr": opt.param_groups[0]["lr"], "temperature": loss_fn.temperature,
               "drone_rate": totals[1].item() / max(totals[2].item(), 1), "eval_set": eval_set,
               **{k: float("nan") for k in METRICS}}
        validate = (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs
        keep = epoch + 1 == cfg.epochs  # select_epoch: last, or nothing to choose with
        if main and selection_set is not None and validate:
            row.update(evaluate_model(model, selection_set, cfg, device))
            if cfg.select_epoch == "best":
                keep = best["epoch"] is None or row["R@1"] > best["metrics"]["R@1"]
        seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        row["seconds"] = round(seconds, 2)
        rows.append(row)
        bar.set_postfix({"loss": f"{row['loss']:.3f}",
                         **({f"{eval_set} R@1": f"{row['R@1']:.1f}"} if not math.isnan(row["R@1"]) else {})})
        if main:
            header = {"format": CHECKPOINT_FORMAT, "model_config": model.config, "config": cfg.model_dump(),
                     "epoch": epoch + 1}
            # last.pt first: a stop between the two saves keeps the resume point, and resuming redoes best.pt
            if keep:
                best = {"epoch": epoch + 1, "metrics": {k: row[k] for k in METRICS}}
            if validate or epoch + 1 == end_epoch:  # not every epoch: for DINOv2-L, weights + AdamW state are ~7 GB a save
                _save_atomic({**header, "model": model.state_dict(), "loss": loss_fn.state_dict(),
                              "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
                              "log": rows, "best": best, "seconds": seconds, "rng": _rng_state()}, last_path)
            if best["epoch"] == epoch + 1:
                _save_atomic({**header, "model": model.state_dict(), "eval_set": eval_set, "metrics": best["metrics"]},
                             train_dir / BEST)
            write_atomic(train_dir / TRAIN_LOG, pd.DataFrame(rows, columns=list(LOG_COLUMNS)).to_csv(index=False))
        if world > 1:
            dist.barrier()
    bar.close()

    epochs_now = max(end_epoch - start_epoch, 0)
    result = TrainResult(train_dir, pd.DataFrame(rows, columns=list(LOG_COLUMNS)), best["epoch"], best["metrics"],
                         eval_set, seconds, epochs_now)
    if main and end_epoch == cfg.epochs and cfg.epochs > 0:
        write_atomic(train_dir / TRAIN_RESULT, json.dumps(
            {"best_epoch": best["epoch"], "best": best["metrics"], "eval_set": eval_set, "seconds": seconds,
             "epochs": cfg.epochs}, indent=1))
    return result


def main(argv=None) -> None:
    cfg = from_command_line(argv, "python -m vici_utils.train", __doc__.splitlines()[0])
    try:
        r = train(cfg, progress=True)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        best = ", ".join(f"{k} {v:.2f}" for k, v in r.best.items())
        print(f"{r.train_dir}: kept epoch {r.best_epoch} ({cfg.select_epoch}) on {r.eval_set} ({best}); "
              f"{r.seconds:.0f} s of training")


if __name__ == "__main__":
    main()
