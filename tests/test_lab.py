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
    makefile = (REPO_ROOT / "Makefile").read_text()
    install = re.search(r"ipykernel install --user (--name (\S+) --display-name \"([^\"]+)\")", makefile)
    assert install and "--allow-root" in makefile, "make setup registers the kernel; make lab allows root"
    kernel = install.group(2)
    books = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    assert {json.loads(b.read_text())["metadata"]["kernelspec"]["name"] for b in books} == {kernel}

    # the Makefile's registration, into a private Jupyter data folder
    env = {**os.environ, "JUPYTER_DATA_DIR": str(tmp_path / "data"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_PATH": str(tmp_path / "data")}
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user", "--name", kernel,
                    "--display-name", install.group(3)], env=env, check=True, capture_output=True)
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
