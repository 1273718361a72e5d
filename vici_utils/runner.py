"""Run the numbered notebooks headlessly with papermill and write a manifest of the run.

    python -m vici_utils run params/default.yaml [--only 01,03] [--set key=value]...

Each notebook receives the resolved parameters it declares in its `parameters` cell, runs with the
notebooks folder as its working directory (as JupyterLab does), and is saved executed to
outputs/<run_name>/NN_name.ipynb. outputs/<run_name>/run.json records the parameters, code and library
versions, the device, and each notebook's last status and duration (notebooks not run this time keep theirs),
and is rewritten after every notebook so an interrupted run still says how far it got. Statuses: running, ok,
failed, interrupted, and waiting (a batch re-ranking job still running on the server; not a failure: the same
command collects it later).

What holds: the data root's layout and the backbone's name are checked before anything runs; one run at a
time holds a run folder (a second on the same run_name is refused, naming the first's pid and command); an
executed notebook is written beside its place and renamed into it, so it is never half-written, and a failed
rerun leaves the last good one in place (the failed one beside it, NN_name.failed.ipynb); a full disk ends the
run with one sentence naming the folder, recorded in run.json.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from .params import Params, ParamsError, to_yaml
from .paths import NOTEBOOKS_DIR, REPO_ROOT
from .run_folder import (MANIFEST, PARAMS, RunFolderBusy, hold, is_disk_full, read_manifest, run_dir, write_atomic,
                         write_json)

KERNEL = "python3"  # jupyter_client maps this to sys.executable: the runner's own environment

# --- batch re-ranking (issue 23): a notebook may end early on purpose, its work going on elsewhere ---------------
# Notebook 04 in vlm_mode: batch raises rerank.batch.BatchPending while its Batch API job runs on the server. The
# run then ends with status WAITING (run.json), not "failed": rerunning the same command collects the answers.
WAITING = "waiting"
WAITING_ERRORS = {"BatchPending"}  # exception names (the runner imports nothing of the notebooks' code)


class RunFailed(RuntimeError):
    """A notebook failed; the message names it, the cell and the error."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what is saved and how to resume."""


class _StoppedKernelNoise(logging.Filter):
    """What a stopped kernel leaves behind, said better by RunFailed / RunInterrupted: after Ctrl-C asyncio prints
    the abandoned cell's error (a screen of coloured traceback) when the process exits, and nbclient logs that the
    kernel died while the cell waited."""

    def filter(self, record: logging.LogRecord) -> bool:
        from nbclient.exceptions import CellExecutionError, DeadKernelError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (CellExecutionError, DeadKernelError)):
            return False
        return not record.getMessage().startswith("Kernel died while waiting for execute reply")


def _quiet_stopped_kernels() -> None:
    for name in ("asyncio", "papermill"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _StoppedKernelNoise) for f in logger.filters):
            logger.addFilter(_StoppedKernelNoise())


def discover_notebooks(only: Optional[list[str]] = None, folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    books = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {o.strip().zfill(2) for o in only if o.strip()}
        unknown = wanted - {b.name[:2] for b in books}
        if unknown:
            raise ParamsError(f"--only {','.join(sorted(unknown))}: no such notebook in {folder} "
                              f"(have: {', '.join(b.name for b in books)})")
        books = [b for b in books if b.name[:2] in wanted]
    return books


def declared_parameters(notebook: Path) -> list[str]:
    import papermill

    return list(papermill.inspect_notebook(str(notebook)))


def _git() -> dict:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=20)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {"commit": commit or None, "dirty": bool(git("status", "--porcelain")) if commit else None}


def environment() -> dict:
    """Library versions and the device: what a reader needs to reproduce or compare a run."""
    import faiss
    import timm
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "faiss": faiss.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": cuda,
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} cores)",
    }


class _LogStream:
    """File-like sink for a kernel's stdout/stderr. Progress bars rewrite their line with carriage returns,
    one message per refresh; the log gets a line when a line ends, or the bar's latest state at most once
    every `every` seconds, prefixed with the notebook."""

    def __init__(self, prefix: str, log: Callable[[str], None], every: float = 15.0):
        self.prefix, self.log, self.every = prefix, log, every
        self.pending, self.last = "", time.monotonic()

    def _emit(self, line: str) -> None:
        line = line.rstrip()
        if line:
            self.log(f"  [{self.prefix}] {line}")
        self.last = time.monotonic()

    def write(self, text: str) -> int:
        *done, self.pending = (self.pending + text).split("\n")
        for line in done:
            self._emit(line.rsplit("\r", 1)[-1])
        self.pending = self.pending.rsplit("\r", 1)[-1] if "\r" in self.pending else self.pending
        if self.pending and time.monotonic() - self.last > self.every:
            self._emit(self.pending)
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._emit(self.pending)
        self.pending = ""


def _failed_cell_source(notebook: Path, exec_count: int) -> str:
    """First line of the failing cell, found by execution count (papermill adds banner cells on failure)."""
    try:
        import nbformat

        cells = nbformat.read(notebook, as_version=4).cells
        cell = next(c for c in cells if c.cell_type == "code" and c.get("execution_count") == exec_count)
        return cell.source.strip().splitlines()[0][:80]
    except Exception:  # the message is still useful without the source line
        return "?"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def preflight(params: Params) -> None:
    """What the notebooks would find out seconds in, checked before anything runs: the data root's layout and
    the backbone's name."""
    from .checkpoints import WeightsError
    from .models import check_backbone_name
    from .u1652 import DatasetError, check_root

    try:
        if not params.is_embedded:
            check_root(params.data_root)
        check_backbone_name(params.backbone)
    except (DatasetError, WeightsError) as e:
        raise ParamsError(f"{'data_root' if isinstance(e, DatasetError) else 'backbone'}: {e}") from None


def disk_full(folder: Path, error: str) -> str:
    return (f"disk full: cannot write in {folder} ({error}); free space there (or set VICI_OUTPUTS to a folder with "
            "room) and run the same command again (finished notebooks, checkpoints and stored answers are kept)")


def _ran_out_of_space(e) -> bool:
    """A notebook's own error that is a full disk (the kernel reports it as text)."""
    return e.ename in ("OSError", "IOError") and any(m in str(e.evalue) for m in ("[Errno 28]", "[Errno 122]",
                                                                                   "No space left on device"))


def _record(path: Path, manifest: dict) -> None:
    """Write the manifest; on a full disk, over the old one in place (its blocks are already there)."""
    try:
        write_json(path, manifest)
    except OSError as e:
        if not is_disk_full(e):
            raise
        try:
            with open(path, "r+b") as f:
                f.write((json.dumps(manifest, indent=2, default=str) + "\n").encode())
                f.truncate()
        except OSError:
            pass  # nothing more can be written: the message still says what happened


def _settle(running: Path, target: Path, keep_target: bool) -> Optional[Path]:
    """Where a notebook that did not finish is kept: in its place, or beside the last good one
    (NN_name.failed.ipynb); None when what papermill wrote is not a whole notebook (a full disk)."""
    try:
        json.loads(running.read_text())
    except (OSError, ValueError):
        running.unlink(missing_ok=True)
        return None
    dest = target.with_name(f"{target.stem}.failed{target.suffix}") if keep_target else target
    os.replace(running, dest)
    return dest


def run(params: Params, only: Optional[list[str]] = None, log: Callable[[str], None] = print,
        notebooks_dir: Path = NOTEBOOKS_DIR) -> dict:
    """Execute the notebooks in order; returns the manifest. Raises RunFailed on the first failing one, when
    another process holds the run folder, or when the disk is full."""
    books = discover_notebooks(only, notebooks_dir)
    preflight(params)
    out = run_dir(params.run_name)
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    try:
        with hold(out, command):
            return _run(params, books, out, command, log, notebooks_dir)
    except RunFolderBusy as e:
        raise RunFailed(str(e)) from None
    except OSError as e:
        if is_disk_full(e):
            raise RunFailed(disk_full(out, e.strerror or str(e))) from None
        raise


def _run(params: Params, books: list[Path], out: Path, command: str, log: Callable[[str], None],
         notebooks_dir: Path) -> dict:
    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    write_atomic(out / PARAMS, to_yaml(params))
    earlier = {n["name"]: n for n in (read_manifest(out) or {}).get("notebooks", []) if isinstance(n, dict)}
    entries = {b.name: {"name": b.name, "status": "pending", "duration_s": None} for b in books}
    manifest = {
        "run_name": params.run_name,
        "status": "running",
        "started": _now(),
        "ended": None,
        "params": params.model_dump(),
        "git": _git(),
        "environment": environment(),
        "command": command,
        "notebooks": sorted({**earlier, **entries}.values(), key=lambda n: n["name"]),
    }
    manifest_path = out / MANIFEST
    write_json(manifest_path, manifest)
    log(f"run '{params.run_name}' -> {out}  ({len(books)} notebooks, {manifest['environment']['device']})")

    # The kernel inherits this environment: headless progress bars, and the outputs root we resolved.
    os.environ["VICI_HEADLESS"] = "1"
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    _quiet_stopped_kernels()
    t_run = time.time()

    def stop(status: str, entry: dict, t0: float, error: dict) -> None:
        entry.update(status=status, duration_s=round(time.time() - t0, 1), error=error)
        manifest.update(status=status, ended=_now(), duration_s=round(time.time() - t_run, 1))
        _record(manifest_path, manifest)

    for book in books:
        entry = entries[book.name]
        declared = declared_parameters(book)
        inject = params.subset(k for k in declared if k in Params.model_fields)
        target = out / book.name
        running = out / f".{book.stem}.running{book.suffix}"
        keep_target = target.is_file() and earlier.get(book.name, {}).get("status") == "ok"
        entry.update(status="running", started=_now(), output=str(target))
        entry.pop("error", None)
        t0 = time.time()
        try:
            write_json(manifest_path, manifest)
            log(f"> {book.name}")
            out_sink, err_sink = _LogStream(book.name[:2], log), _LogStream(book.name[:2], log)
            try:
                papermill.execute_notebook(
                    str(book), str(running), parameters=inject, kernel_name=KERNEL, cwd=str(notebooks_dir),
                    progress_bar=False, stdout_file=out_sink, stderr_file=err_sink, coalesce_streams=True,
                    # the kernel's own log is not the notebook's output (cell output and errors still are): its
                    # start-up warning that the loopback link is not encrypted, repeated for every notebook, and the
                    # errors it logs when shut down mid-cell (Ctrl-C) or interrupted while idle (at every shutdown)
                    extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
                )
            finally:
                out_sink.close(), err_sink.close()
            os.replace(running, target)
            target.with_name(f"{target.stem}.failed{target.suffix}").unlink(missing_ok=True)
        except PapermillExecutionError as e:
            if e.ename in WAITING_ERRORS:  # the notebook said all it can until the batch job ends: keep it
                os.replace(running, target)
                entry.update(status=WAITING, duration_s=round(time.time() - t0, 1), waiting=e.evalue)
                manifest.update(status=WAITING, ended=_now(), duration_s=round(time.time() - t_run, 1))
                _record(manifest_path, manifest)
                log(f"  {book.name} waiting: {e.evalue}")
                log(f"run '{params.run_name}' is waiting (run.json status '{WAITING}'); run the same command again "
                    "to go on")
                return manifest
            kept = _settle(running, target, keep_target)
            stop("failed", entry, t0, {"cell": e.cell_index, "execution_count": e.exec_count, "ename": e.ename,
                                        "evalue": e.evalue, "notebook": str(kept)})
            if _ran_out_of_space(e):
                raise RunFailed(f"{book.name}: {disk_full(out, e.evalue)}") from None
            where = f"The executed notebook, with the traceback, is {kept}" + (
                f"; the last good one stays at {target}" if keep_target else "")
            raise RunFailed(f"{book.name} failed in the cell run as [{e.exec_count}] "
                            f"(`{_failed_cell_source(kept, e.exec_count)}`): {e.ename}: {e.evalue}\n"
                            f"{where}") from None
        except BaseException as e:  # kernel died, Ctrl-C, full disk: record it, then say what happened in one sentence
            kept = _settle(running, target, keep_target) if running.exists() else None
            stop("interrupted" if isinstance(e, KeyboardInterrupt) else "failed", entry, t0,
                 {"ename": type(e).__name__, "evalue": str(e), "notebook": str(kept)})
            if isinstance(e, KeyboardInterrupt):
                done = [n["name"] for n in manifest["notebooks"] if n["status"] == "ok"]
                raise RunInterrupted(
                    f"Interrupted during {book.name}. {out} keeps run.json and the finished notebooks "
                    f"({', '.join(done) or 'none yet'}); run the same command again to resume (the world, the saved "
                    "training checkpoints and the cached features are reused).") from None
            if isinstance(e, DeadKernelError):
                raise RunFailed(
                    f"{book.name}: the kernel died, most likely out of memory (the system stops a process that "
                    "takes too much). Try a smaller batch_size, image_size or eval_batch_size (e.g. --set "
                    f"batch_size=32). The notebook as far as it ran is {kept}") from None
            if is_disk_full(e):
                raise RunFailed(f"{book.name}: {disk_full(out, e.strerror or str(e))}") from None
            raise
        entry.update(status="ok", duration_s=round(time.time() - t0, 1))
        write_json(manifest_path, manifest)
        log(f"  {book.name} ok in {entry['duration_s']:.1f} s")
    manifest.update(status="ok", ended=_now(), duration_s=round(time.time() - t_run, 1))
    write_json(manifest_path, manifest)
    log(f"run '{params.run_name}' finished in {manifest['duration_s']:.0f} s; manifest {manifest_path}")
    return manifest
