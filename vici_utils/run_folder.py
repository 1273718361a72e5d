"""The run folder, outputs/<run_name>/ (run_dir): where each stage writes, which checkpoint a run evaluates, its
manifest, and write_atomic, which writes a whole file beside its place and renames it in (an interrupted write
never leaves a truncated file that passes for a finished one). Every file of a run folder is written that way
but for four kinds, each with its own guarantee: stage 2's result files are written into a staging folder and
moved in together (rerank/stage.py); the answer store cache.jsonl is appended to one fsynced answer at a time, so no
paid answer is lost (rerank/cache.py); the sharded embedding's per-rank row files are filled in place and merged
into one file written aside and renamed (embed.py); and papermill writes each executed notebook aside, which the
runner renames into place once it is whole (runner.py). On a full disk, where no second copy fits, the runner
rewrites run.json in place as a last resort.

    outputs/<run_name>/run.json  params.yaml  NN_name.ipynb          (runner)
                       train/      last.pt  best.pt  train_log.csv  config.yaml  result.json
                       retrieval/  features.npz  val_features.npz  metrics.json  answer.txt  topk.csv  challenge/
                       rerank/     answer_fused.txt  answer_reranker.txt  reasons.jsonl  metrics.json  cache.jsonl
                                   verifier.pt  verifier_log.csv
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Callable, Optional, Union

from .paths import outputs_root

MANIFEST = "run.json"      # the runner's record of a run: parameters, code, device, notebooks and their status
PARAMS = "params.yaml"     # the run's resolved parameters: every notebook of the run reads them
TRAIN, RETRIEVAL, RERANK = "train", "retrieval", "rerank"
# train/
BEST, LAST = "best.pt", "last.pt"          # the kept epoch's model; everything needed to resume
TRAIN_CONFIG, TRAIN_LOG, TRAIN_RESULT = "config.yaml", "train_log.csv", "result.json"
# retrieval/ (challenge/ holds its own answer.txt, answer.zip and features.npz)
FEATURES, METRICS, ANSWER, TOPK, CHALLENGE = "features.npz", "metrics.json", "answer.txt", "topk.csv", "challenge"
VAL_FEATURES = "val_features.npz"  # the held-out validation buildings', where stage 2 chooses its fusion rule
# rerank/ (metrics.json too)
ANSWER_FUSED, ANSWER_RERANKED = "answer_fused.txt", "answer_reranker.txt"  # answer_vlm.txt before
REASONS, ANSWER_CACHE = "reasons.jsonl", "cache.jsonl"
VERIFIER, VERIFIER_LOG = "verifier.pt", "verifier_log.csv"
RESULTS = "results.csv"    # a sweep's rows, in outputs/<sweep>/
CHECKPOINTS = (BEST, LAST)  # a run evaluates the first that exists
REMADE_BY = {TRAIN: "02", RETRIEVAL: "03", RERANK: "04"}  # the notebook that writes each stage's files
LOCK = ".lock"             # held (flock) by the one process running notebooks in the folder; says who it is
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder; the message names its pid and command."""


@contextlib.contextmanager
def hold(folder: Path, command: str):
    """Hold `folder` exclusively while the body runs: a second run on the same run_name would otherwise read the
    first one's params.yaml midway. The lock is the kernel's (flock), so a killed process never leaves it held."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "a process that did not say"
            raise RunFolderBusy(f"{folder} is in use by another run ({holder}); wait for it to end, or give this run "
                                "another run_name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, command `{command}`".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_FULL


class RunFileError(ValueError):
    """A run file that cannot be read back; the message names it and the command that remakes it."""


def remake(run_name: str, stage: str, extra: str = "") -> str:
    """The command that writes a stage's files again."""
    return (f"python -m vici_utils run <its params file> --set run_name={run_name}{extra} "
            f"--only {REMADE_BY[stage]}")


def _unreadable(path: Path, why: str, run_name: str, stage: str) -> RunFileError:
    return RunFileError(f"{path}: {why}; remake it with {remake(run_name, stage)}")


def run_dir(run_name: str) -> Path:
    """outputs/<run_name>: the run's folder."""
    return outputs_root() / run_name


def stage_dir(run_name: str, stage: str) -> Path:
    """outputs/<run_name>/<stage> for stage in (TRAIN, RETRIEVAL, RERANK)."""
    return run_dir(run_name) / stage


def trained_checkpoint(train_dir: Path) -> Optional[Path]:
    """The checkpoint a run evaluates: best.pt (the kept epoch), else last.pt (an unfinished run), else None."""
    return next((Path(train_dir) / name for name in CHECKPOINTS if (Path(train_dir) / name).is_file()), None)


def training_state(train_dir: Path, run_name: str, epochs: int) -> Optional[dict]:
    """Whether the training a run evaluates finished: None when there is no trained checkpoint; else finished
    (result.json is written only then), the last epoch trained (train_log.csv; None if unknown), and the command
    that finishes it."""
    import csv

    train_dir = Path(train_dir)
    if trained_checkpoint(train_dir) is None:
        return None
    if (train_dir / TRAIN_RESULT).is_file():
        return {"finished": True, "epochs": epochs}
    done = None  # unknown without a train log (a checkpoint put there by hand)
    try:
        with open(train_dir / TRAIN_LOG, newline="") as f:
            done = max((int(float(row["epoch"])) for row in csv.DictReader(f) if row.get("epoch")), default=None)
    except (OSError, ValueError, KeyError):
        pass
    return {"finished": False, "epoch": done, "epochs": epochs, "finish": remake(run_name, TRAIN)}


def read_manifest(folder: Path) -> Optional[dict]:
    """A run folder's manifest, or None when it has none (or one that is not JSON)."""
    try:
        return json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def write_atomic(path: Path, content: Union[str, bytes, Callable[[Path], None]]) -> Path:
    """Write `content` (text, bytes, or a function that writes the path it is given, e.g. torch.save) to a hidden
    temporary file beside `path`, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        if callable(content):
            content(tmp)
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: Path, data: dict) -> Path:
    return write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path, run_name: str, stage: str) -> Optional[dict]:
    """A JSON object the run wrote (metrics.json, result.json), None when absent; a corrupt one names itself
    and the command that remakes it."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise _unreadable(path, f"not readable JSON ({e})", run_name, stage) from None
    if not isinstance(data, dict):
        raise _unreadable(path, f"expected a JSON object, found {type(data).__name__}", run_name, stage)
    return data


# --- retrieval/features.npz: its keys, its writer and its reader ----------------------------------------------------
FEATURE_KEYS = ("query_features", "query_ids", "query_names", "query_paths",
                "gallery_features", "gallery_ids", "gallery_names", "gallery_paths")


def write_features(path: Path, arrays: dict) -> Path:
    """features.npz from the FEATURE_KEYS arrays (features float; ids, names and paths str, '' where unknown)."""
    import numpy as np

    missing = [k for k in FEATURE_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: no arrays {missing} to write")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: np.savez(tmp, **{k: arrays[k] for k in FEATURE_KEYS}))


def read_features(path: Path, run_name: str = "<run_name>") -> dict:
    """The arrays of features.npz (ids, names and paths as str, None where unknown). An absent, corrupt or pickled
    file, or one with missing or ragged arrays, names itself and the command that remakes it."""
    import zipfile

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no retrieval features. Run notebook 03_retrieval for this run_name first "
                                f"({remake(run_name, RETRIEVAL)}).")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in FEATURE_KEYS if k not in npz.files]
            if missing:
                raise _unreadable(path, f"missing arrays {missing} (expected {list(FEATURE_KEYS)})", run_name,
                                  RETRIEVAL)
            feats = {k: npz[k] for k in FEATURE_KEYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, RunFileError):
            raise
        raise _unreadable(path, f"not a features file of ours ({type(e).__name__}: {e})", run_name, RETRIEVAL) from None
    for k in FEATURE_KEYS:
        if not k.endswith("features"):
            feats[k] = [None if v in ("", "None") else str(v) for v in feats[k].tolist()]
    for side in ("query", "gallery"):
        n = len(feats[f"{side}_features"])
        bad = [k for k in FEATURE_KEYS if k.startswith(side) and len(feats[k]) != n]
        if bad:
            raise _unreadable(path, f"{bad} do not have one entry per {side} feature ({n})", run_name, RETRIEVAL)
    return feats
