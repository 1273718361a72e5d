"""The run folder, outputs/<run_name>/: where each stage writes, which checkpoint a run evaluates, its manifest,
and the one way every file of the workbook is written (atomically: an interrupted write never leaves a
truncated file that passes for a finished one).

    outputs/<run_name>/run.json  params.yaml  NN_name.ipynb          (runner)
                       train/      last.pt  best.pt  train_log.csv  config.yaml  result.json
                       retrieval/  features.npz  metrics.json  answer.txt  topk.csv  challenge/
                       rerank/     answer_fused.txt  answer_vlm.txt  reasons.jsonl  metrics.json  cache.jsonl
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

from .paths import run_dir

MANIFEST = "run.json"      # the runner's record of a run: parameters, code, device, notebooks and their status
PARAMS = "params.yaml"     # the run's resolved parameters: every notebook of the run reads them
TRAIN, RETRIEVAL, RERANK = "train", "retrieval", "rerank"
CHECKPOINTS = ("best.pt", "last.pt")  # a run evaluates the first that exists
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


def stage_dir(run_name: str, stage: str) -> Path:
    """outputs/<run_name>/<stage> for stage in (TRAIN, RETRIEVAL, RERANK)."""
    return run_dir(run_name) / stage


def trained_checkpoint(train_dir: Path) -> Optional[Path]:
    """The checkpoint a run evaluates: best.pt (the selected epoch), else last.pt (an unfinished run), else None."""
    return next((Path(train_dir) / name for name in CHECKPOINTS if (Path(train_dir) / name).is_file()), None)


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
