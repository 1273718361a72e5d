"""Project hygiene: one source of dependencies, clean notebooks with one parameters cell, CI = README."""
import ast
import re
import tomllib

import nbformat
import pytest
import yaml

from vici_utils.params import Params
from vici_utils.paths import NOTEBOOKS_DIR, REPO_ROOT

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {r for r in pip if not r.startswith("-e")}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"
    assert "-e ." in pip, "environment.yml must install the project itself"
    assert {_name(r) for r in wanted} >= {"torch", "timm", "faiss-cpu", "google-genai", "papermill", "jupyterlab"}


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make workbook" in readme and "make test" in readme
    assert re.search(r"^make test$", (REPO_ROOT / ".ci/run").read_text(), re.M)


def test_notebooks_exist_in_order():
    assert [n.name[:2] for n in NOTEBOOKS] == [f"{i:02d}" for i in range(1, len(NOTEBOOKS) + 1)]
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_with_one_parameters_cell_of_defaults(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    defaults = Params().model_dump()
    assigned = {}
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.Assign), "the parameters cell holds plain assignments only"
        assigned[node.targets[0].id] = ast.literal_eval(node.value)
    unknown = set(assigned) - set(defaults)
    assert not unknown, f"parameters that Params does not know: {unknown}"
    differ = {k: (v, defaults[k]) for k, v in assigned.items() if v != defaults[k]}
    assert not differ, f"parameters cell values must equal params defaults: {differ}"
    assert "run_name" in assigned
