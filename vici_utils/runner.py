"""Run the numbered notebooks headlessly with papermill and write a manifest of the run.

    python -m vici_utils run params/default.yaml [--only 01,03] [--set key=value]...

Each notebook receives the resolved parameters it declares in its `parameters` cell, runs with the
notebooks folder as its working directory (as JupyterLab does), and is saved executed to
outputs/<run_name>/NN_name.ipynb. outputs/<run_name>/run.json records the parameters, code and library
versions, the device, and each notebook's status and duration, and is rewritten after every notebook so an
interrupted run still says how far it got. Statuses: running, ok, failed, interrupted, and waiting (a batch
re-ranking job still running on the server; not a failure: the same command collects it later).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from .params import Params, ParamsError, to_yaml
from .paths import NOTEBOOKS_DIR, REPO_ROOT, run_dir
from .run_folder import MANIFEST, PARAMS, write_atomic, write_json

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


def run(params: Params, only: Optional[list[str]] = None, log: Callable[[str], None] = print,
        notebooks_dir: Path = NOTEBOOKS_DIR) -> dict:
    """Execute the notebooks in order; returns the manifest. Raises RunFailed on the first failing one."""
    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    books = discover_notebooks(only, notebooks_dir)
    out = run_dir(params.run_name)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / PARAMS, to_yaml(params))
    manifest = {
        "run_name": params.run_name,
        "status": "running",
        "started": _now(),
        "ended": None,
        "params": params.model_dump(),
        "git": _git(),
        "environment": environment(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "notebooks": [{"name": b.name, "status": "pending", "duration_s": None} for b in books],
    }
    manifest_path = out / MANIFEST
    write_json(manifest_path, manifest)
    log(f"run '{params.run_name}' -> {out}  ({len(books)} notebooks, {manifest['environment']['device']})")

    # The kernel inherits this environment: headless progress bars, and the outputs root we resolved.
    os.environ["VICI_HEADLESS"] = "1"
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    _quiet_stopped_kernels()
    t_run = time.time()
    for book, entry in zip(books, manifest["notebooks"]):
        declared = declared_parameters(book)
        inject = params.subset(k for k in declared if k in Params.model_fields)
        target = out / book.name
        entry.update(status="running", started=_now(), output=str(target))
        write_json(manifest_path, manifest)
        log(f"> {book.name}")
        t0 = time.time()
        out_sink, err_sink = _LogStream(book.name[:2], log), _LogStream(book.name[:2], log)
        try:
            papermill.execute_notebook(
                str(book), str(target), parameters=inject, kernel_name=KERNEL, cwd=str(notebooks_dir),
                progress_bar=False, stdout_file=out_sink, stderr_file=err_sink, coalesce_streams=True,
                # the kernel's own log is not the notebook's output (cell output and errors still are): its
                # start-up warning that the loopback link is not encrypted, repeated for every notebook, and the
                # errors it logs when shut down mid-cell (Ctrl-C) or interrupted while idle (at every shutdown)
                extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
            )
        except PapermillExecutionError as e:
            out_sink.close(), err_sink.close()
            if e.ename in WAITING_ERRORS:
                entry.update(status=WAITING, duration_s=round(time.time() - t0, 1), waiting=e.evalue)
                manifest.update(status=WAITING, ended=_now(), duration_s=round(time.time() - t_run, 1))
                write_json(manifest_path, manifest)
                log(f"  {book.name} waiting: {e.evalue}")
                log(f"run '{params.run_name}' is waiting (run.json status '{WAITING}'); run the same command again "
                    "to go on")
                return manifest
            entry.update(status="failed", duration_s=round(time.time() - t0, 1),
                         error={"cell": e.cell_index, "execution_count": e.exec_count,
                                "ename": e.ename, "evalue": e.evalue})
            manifest.update(status="failed", ended=_now(), duration_s=round(time.time() - t_run, 1))
            write_json(manifest_path, manifest)
            raise RunFailed(f"{book.name} failed in the cell run as [{e.exec_count}] "
                            f"(`{_failed_cell_source(target, e.exec_count)}`): {e.ename}: {e.evalue}\n"
                            f"The executed notebook, with the traceback, is {target}") from None
        except BaseException as e:  # kernel died, Ctrl-C: record it, then say what happened in one sentence
            entry.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                         duration_s=round(time.time() - t0, 1), error={"ename": type(e).__name__, "evalue": str(e)})
            manifest.update(status=entry["status"], ended=_now(), duration_s=round(time.time() - t_run, 1))
            write_json(manifest_path, manifest)
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
                    f"batch_size=32). The notebook as far as it ran is {target}") from None
            raise
        out_sink.close(), err_sink.close()
        entry.update(status="ok", duration_s=round(time.time() - t0, 1))
        write_json(manifest_path, manifest)
        log(f"  {book.name} ok in {entry['duration_s']:.1f} s")
    manifest.update(status="ok", ended=_now(), duration_s=round(time.time() - t_run, 1))
    write_json(manifest_path, manifest)
    log(f"run '{params.run_name}' finished in {manifest['duration_s']:.0f} s; manifest {manifest_path}")
    return manifest
