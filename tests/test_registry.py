"""The registries (vici_utils/registry.py): every name of a re-ranker, fusion rule, loss and table kind is typed there
and nowhere else, and a new entry is picked up by the parameters, their page, the stages and the notebooks with no
other edit."""
import ast
import subprocess
import sys
import textwrap

import nbformat
import numpy as np
import pandas as pd
import pytest

from tests.fake_vlm_servers import write_tiny_run
from vici_utils import registry, results, sweep
from vici_utils.params import ParamsError, validate
from vici_utils.params_doc import parameters_markdown
from vici_utils.paths import REPO_ROOT
from vici_utils.registry import FUSIONS, RERANKERS, VALIDATION
from vici_utils.rerank import fusion, report, rerank

REGISTRIES = {"RERANKERS": registry.RERANKERS, "BATCH_RERANKERS": registry.BATCH_RERANKERS,
              "FUSIONS": registry.FUSIONS, "LOSSES": registry.LOSSES, "TABLE_KINDS": registry.TABLE_KINDS}
# Names too common to police: a literal equal to one of them usually means something else.
COMMON = {
    "": "the empty string",
    "none": "also YAML's and matplotlib's word for nothing",
    "reranker": "also the parameter of that name (and the re-ranker's column of a table)",
    "drone_rate": "also the parameter of that name and the column of its values",
}
# In the notebooks, table kinds may be named: notebook 05 has one narrated section per table of the paper, and
# notebook 04 one beside the re-ranking sweep; a kind without a section of its own is shown by 05's last section,
# which reads the registry (results.kinds_beyond_paper).
NAMED_IN_NOTEBOOKS = set(registry.TABLE_KINDS)


def _policed(exempt=frozenset()) -> dict[str, str]:
    """name -> its registry, for every distinctive name."""
    return {name: what for what, names in REGISTRIES.items() for name in names
            if name not in COMMON and name not in exempt}


def _literals(source: str) -> list[tuple[int, str]]:
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_no_registry_name_is_typed_outside_its_registry():
    """A string literal equal to a registered name, in the package or a notebook's code, re-types the registry: a
    branch on it, a dict keyed by it or a list of names goes stale when an entry is added. Read the registry, or
    give the object the attribute the branch needs. Parameters cells are exempt: they hold values (test_project
    checks they equal the defaults, which params.py takes from the registry)."""
    found = []
    policed = _policed()
    for path in sorted((REPO_ROOT / "vici_utils").rglob("*.py")):
        if path.name == "registry.py":
            continue
        found += [f"{path.relative_to(REPO_ROOT)}:{line}: {value!r} ({policed[value]})"
                  for line, value in _literals(path.read_text()) if value in policed]
    policed = _policed(NAMED_IN_NOTEBOOKS)
    for path in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []):
                continue
            source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
            found += [f"{path.name} [{i}]: {value!r} ({policed[value]})"
                      for _, value in _literals(source) if value in policed]
    assert not found, "registry names typed outside vici_utils/registry.py:\n" + "\n".join(found)


def test_the_policing_sees_a_typed_name():
    assert [v for _, v in _literals('if cfg.reranker == "kreciprocal":\n    pass\n') if v in _policed()] \
        == ["kreciprocal"]
    assert not [v for _, v in _literals('"""k-reciprocal: see kreciprocal"""') if v in _policed()]


def test_every_entry_resolves_and_an_unknown_name_says_what_is_known():
    for names in REGISTRIES.values():
        for name, obj in names.load_all().items():
            assert getattr(obj, "label", None), f"{names.what} {name!r} ({names[name]}) has no label"
    with pytest.raises(registry.UnknownName, match=r"loss 'nonesuch' is not registered.*'infonce', 'ntxent'"):
        registry.LOSSES.load("nonesuch")


# --- a new fusion rule, re-ranker and table kind from a module of their own ------------------------------------

EXTENSION = '''
import numpy as np
import pandas as pd

from vici_utils.registry import labelled
from vici_utils.rerank.rerankers import Reranked, outcomes_from_orders
from vici_utils.results.paper_tables import table_kind


@labelled("fused: the better of the two ranks")
def best_of_both(reranker_rank, retrieval_rank):
    return np.minimum(reranker_rank, retrieval_rank) + retrieval_rank / 100


class SwapTopTwo:
    """Swaps each query's first two candidates."""
    label = "the first two candidates swapped (a test re-ranker)"

    def __init__(self, cfg):
        self.cfg = cfg

    @staticmethod
    def describe(cfg):
        return "swap-top-two"

    def check(self, job):
        pass

    def rerank(self, job):
        orders = [[1, 0, *range(2, job.k)] for _ in range(len(job.ranking))]
        notes = ["swapped"] * len(job.ranking)
        return Reranked(outcomes_from_orders(job, orders, notes, "swap"), "swap")


@table_kind("Seeds against seeds")
def seed_rows(variants: pd.DataFrame) -> list[dict]:
    return [{"row": r["label"], "stage": "retrieval", "variant": r["variant"], "n": r.get("n")}
            for _, r in variants.iterrows()]
'''


@pytest.fixture
def extended(tmp_path, monkeypatch):
    """A module outside the package registering one fusion rule, one re-ranker and one table kind: the registry
    lines are the only edit."""
    (tmp_path / "my_extension.py").write_text(textwrap.dedent(EXTENSION))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.FUSIONS, "best_of_both", "my_extension:best_of_both")
    monkeypatch.setitem(registry.RERANKERS, "swap", "my_extension:SwapTopTwo")
    monkeypatch.setitem(registry.TABLE_KINDS, "seeds", "my_extension:seed_rows")


def test_new_entries_are_parameters_and_listed_on_the_parameters_page(extended):
    cfg = validate({"fusion": "best_of_both", "reranker": "swap"})
    assert (cfg.fusion, cfg.reranker) == ("best_of_both", "swap")
    with pytest.raises(ParamsError, match=r"fusion = 'nonesuch'.*'rrf', 'best_of_both' or 'validation'"):
        validate({"fusion": "nonesuch"})
    page = parameters_markdown()
    for row in ("| `best_of_both` | fused: the better of the two ranks | `my_extension:best_of_both` |",
                "| `swap` | the first two candidates swapped (a test re-ranker) | `my_extension:SwapTopTwo` |",
                "| `seeds` | Seeds against seeds | `my_extension:seed_rows` |"):
        assert row in page
    assert "| weighted \\| reranker \\| rrf \\| best_of_both \\| validation |" in page  # fusion: allowed values


def test_a_new_rule_and_reranker_run_and_reach_notebook_04(extended, outputs):
    reranker_rank = np.array([[3, 1, 2]])
    assert fusion.fuse(reranker_rank, "best_of_both").tolist() == [[0, 1, 2]]  # scores 1.01, 1.02, 2.03
    write_tiny_run(outputs, "t", buildings=6, queries_per_building=1)
    cfg = validate({"run_name": "t", "reranker": "swap", "fusion": "best_of_both", "rerank_top_k": 4})
    result = rerank(cfg, show_progress=False)
    assert (result.fused["reranker"][:, :2] == result.ranking[:, 1::-1]).all()
    assert result.metrics["headline"] == "best_of_both" and "best_of_both" in result.metrics
    # what notebook 04 shows: the rows of "Before and after", the chosen rule, the re-ranker's line
    table = report.before_after(result, cfg)
    assert "fused: the better of the two ranks *" in table["ranking"].tolist()
    assert "best_of_both" in report.chosen_rule(result.metrics)
    assert report.describe_reranker(cfg) == "swap-top-two"


def test_a_sweep_of_a_new_table_kind_validates_and_reaches_notebook_05(extended, tmp_path):
    (tmp_path / "base.yaml").write_text("epochs: 0\n")
    f = tmp_path / "s.yaml"
    f.write_text("sweep: mine\ntable: seeds\nbase: base.yaml\nvariants:\n  - {name: a}\n  - {name: b}\n")
    assert sweep.load(f).spec.table == "seeds"
    f.write_text("sweep: mine\ntable: nonesuch\nbase: base.yaml\nvariants:\n  - {name: a}\n")
    with pytest.raises(ParamsError, match=r"table 'nonesuch' is not a registered kind.*'seeds'"):
        sweep.load(f)
    assert results.kinds_beyond_paper() == ["", "seeds"]  # notebook 05's last section
    rows = pd.DataFrame([{"sweep": "mine", "table": "seeds", "variant": v, "run": f"mine/{v}", "seed": 0,
                          "label": v, "status": "ok", "R@1": 1.0} for v in ("a", "b")])
    table = results.build_table(rows)
    assert table.title == "Seeds against seeds" and table.rows["row"].tolist() == ["a", "b"]


def test_params_take_their_choices_from_the_registries():
    for key, names in (("reranker", [*RERANKERS]), ("fusion", [*FUSIONS, VALIDATION])):
        assert [getattr(validate({key: n, "fusion": "weighted"} if key == "reranker" else {key: n}), key)
                for n in names] == names
        with pytest.raises(ParamsError, match=f"{key} = 'nonesuch'.*" + ".*".join(repr(n) for n in names)):
            validate({key: "nonesuch"})


def test_params_import_no_stage():
    """The parameters stand on the ground floor: they read the registry, never a re-ranker, a loss or torch."""
    code = ("import sys, vici_utils.params; "
            "assert not [m for m in sys.modules if m.startswith(('google', 'httpx', 'torch', 'vici_utils.rerank', "
            "'vici_utils.losses'))], sorted(sys.modules); "
            "import vici_utils.rerank.backends, vici_utils.rerank.kreciprocal")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
    code = ("import sys, vici_utils.rerank.rerankers, vici_utils.rerank.fusion; "
            "assert 'vici_utils.params' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
