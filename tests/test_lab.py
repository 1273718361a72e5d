"""`make lab`: JupyterLab starts headless (as root too), serves the notebooks, and lists the kernel they ask for."""
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from vici_utils.paths import NOTEBOOKS_DIR, REPO_ROOT

TOKEN = "lab-test-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def test_lab_serves_the_notebooks_and_lists_their_kernel(tmp_path):
    from vici_utils.kernel import NAME as kernel

    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "-m vici_utils kernel" in makefile and "--allow-root" in makefile, "setup registers it; lab allows root"
    assert re.search(r"JUPYTER_PATH=[^\n]*share/jupyter \S*jupyter lab", makefile), "lab finds .venv's kernel first"
    books = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    assert {json.loads(b.read_text())["metadata"]["kernelspec"]["name"] for b in books} == {kernel}

    # the Makefile's registration, into a private environment folder that JUPYTER_PATH names (as make lab does)
    env = {**os.environ, "JUPYTER_DATA_DIR": str(tmp_path / "data"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_PATH": str(tmp_path / "env/share/jupyter")}
    register = f"from vici_utils.kernel import install; install(prefix={str(tmp_path / 'env')!r})"
    subprocess.run([sys.executable, "-c", register], env=env, check=True, capture_output=True)
    port = _free_port()
    lab = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
                            "--ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={NOTEBOOKS_DIR}"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while True:
            try:
                _get(port, "/api/status")
                break
            except OSError:
                assert lab.poll() is None, f"jupyter lab exited: {lab.stderr.read().decode()[-2000:]}"
                assert time.time() < deadline, "jupyter lab did not answer within 60 s"
                time.sleep(0.5)
        served = {c["name"] for c in _get(port, "/api/contents")["content"]}
        assert {b.name for b in books} <= served
        specs = _get(port, "/api/kernelspecs")["kernelspecs"]
        assert kernel in specs
        assert Path(specs[kernel]["spec"]["argv"][0]).resolve() == Path(sys.executable).resolve()
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={TOKEN}", timeout=5).read().decode()
        assert "JupyterLab" in page
    finally:
        lab.terminate()
        lab.wait(timeout=20)


def _clone(root: Path, name: str, shared_site: str) -> Path:
    """A copy of the package and a one-cell notebook, with its own environment (a venv that sees the shared
    environment's libraries and this copy's package), as a second `git clone` + `make setup` would have."""
    import shutil

    import nbformat

    clone = root / name
    shutil.copytree(REPO_ROOT / "vici_utils", clone / "vici_utils", ignore=shutil.ignore_patterns("__pycache__"))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import vici_utils\nfrom vici_utils.paths import outputs_root\n"
                                          "outputs_root().mkdir(parents=True, exist_ok=True)\n"
                                          "(outputs_root() / 'ran_here').write_text(vici_utils.__file__)")]
    nb.metadata["kernelspec"] = json.loads((NOTEBOOKS_DIR / "01_data_exploration.ipynb").read_text())["metadata"][
        "kernelspec"]
    (clone / "notebooks").mkdir()
    nbformat.write(nb, clone / "notebooks" / "probe.ipynb")
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip",
                    str(clone / ".venv")], check=True)
    site = next((clone / ".venv" / "lib").glob("python3*/site-packages"))
    (site / "shared.pth").write_text(f"{clone}\n{shared_site}\n")
    return clone


def test_papermill_from_a_second_clone_runs_that_clone(tmp_path):
    """Issue 22.4: `make setup` registered the kernel per user, pointing at the last set-up clone, so notebooks
    of any other clone ran that clone's code and wrote into its outputs/."""
    import site

    shared_site = next(p for p in site.getsitepackages() if p.endswith("site-packages"))
    first, second = (_clone(tmp_path, n, shared_site) for n in ("first", "second"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "PYTHONPATH", "VICI_"))}
    env["HOME"] = str(tmp_path / "home")
    # an older set-up of the first clone registered its kernel per user
    subprocess.run([str(first / ".venv/bin/python"), "-m", "ipykernel", "install", "--user", "--name",
                    "vici-workbook"], env=env, check=True, capture_output=True)
    for clone in (first, second):  # make setup, in each clone
        subprocess.run([str(clone / ".venv/bin/python"), "-m", "vici_utils", "kernel"], env=env, check=True,
                       capture_output=True, cwd=clone)
    done = subprocess.run([str(second / ".venv/bin/python"), "-m", "papermill", "notebooks/probe.ipynb",
                           str(tmp_path / "out.ipynb")], env=env, cwd=second, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (second / "outputs/ran_here").read_text().startswith(str(second / "vici_utils"))
    assert not (first / "outputs").exists()
