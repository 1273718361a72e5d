"""Prose that cannot go stale: every number a notebook prints in a sentence about results equals its source, and no
markdown cell states a measured number (tests/narrative_checks.py says how, MARKDOWN_RULE what is allowed)."""
from __future__ import annotations

import json
import re

import nbformat
import pandas as pd
import pytest

from tests.conftest import TINY_MODEL, TINY_WORLD
from tests.narrative_checks import MARKDOWN_RULE, markdown_numbers, sentence_problems, sentences
from vici_utils import narrative
from vici_utils.narrative import Fact, Sentence
from vici_utils.paths import NOTEBOOKS_DIR

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
# sentences each executed notebook shows at least, so the check below cannot pass on a notebook that shows none
AT_LEAST = {"01": 1, "02": 4, "03": 2}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_no_markdown_cell_states_a_measured_number(path):
    found = markdown_numbers(nbformat.read(path, as_version=4))
    assert not found, (f"{path.name}: measured-looking numbers in markdown (print them from the run instead).\n"
                       f"Rule: {MARKDOWN_RULE}\n" + "\n".join(f"  cell {i}: {n!r} in: {s}" for i, n, s in found))


def test_markdown_rule_tells_measurements_from_quotes_settings_and_design_facts():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(
        "Our model reached R@1 25.7 % on the test set. The paper reports 27.5 % with drone mixing. "
        "We train at `image_size` 96 px with P = 0.3 and T = 0.1; chance is 100 / 150 = 0.67 %. Cameras stand "
        "1.7-2.5 m high. The interval is a 95 % confidence interval. Gemini 2.5 Flash answers.\n\n"
        "1. It improved by +1.07 points.\n2. A spread of ± 2 points.")]
    found = [n for _, n, _ in markdown_numbers(nb)]
    assert found == ["25.7 %", "+1.07", "± 2"], found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_notebooks_show_narrative_sentences_rather_than_print_them(path):
    """print() would drop a sentence's facts, and the check of the executed workbook would not see it."""
    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert not re.search(r"print\(\s*narrative\.", code), f"{path.name}: use narrative.show(...), not print(...)"


def test_sentence_checks_catch_a_number_that_is_not_its_source(tmp_path):
    (tmp_path / "retrieval").mkdir()
    (tmp_path / "retrieval" / "metrics.json").write_text(json.dumps({"R@1": 25.69, "n_gallery": 200}))
    pd.DataFrame({"epoch": [1, 2], "loss": [4.0, 3.0]}).to_csv(tmp_path / "log.csv", index=False)

    def shown(sentence):
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell("")
        cell.outputs = [nbformat.v4.new_output("display_data", data=sentence._repr_mimebundle_())]
        nb.cells = [cell]
        return nb

    good = Sentence("R@1 {r} % of {n} tiles, loss {l}, chance {c} %", r=Fact(25.69, ".1f", "retrieval/metrics.json:R@1"),
                    n=Fact(200, "d", "retrieval/metrics.json:n_gallery"), l=Fact(3.0, ".2f", "log.csv:loss[epoch=2]"),
                    c=Fact(0.5, ".1f", "= 100 / n"))
    assert sentence_problems(shown(good), tmp_path, "x") == []
    wrong = Sentence("R@1 {r} %", r=Fact(24.95, ".1f", "retrieval/metrics.json:R@1"))
    assert "gives 25.69" in sentence_problems(shown(wrong), tmp_path, "x")[0]
    derived = Sentence("{a} and {b}", a=Fact(2.0, "g"), b=Fact(5.0, "g", "= a * 2"))
    assert "(= a * 2) gives 4.0" in sentence_problems(shown(derived), tmp_path, "x")[0]
    literal = Sentence("R@1 was 25.7 %, now {r} %", r=Fact(25.69, ".1f", "retrieval/metrics.json:R@1"))
    assert "written into the template" in sentence_problems(shown(literal), tmp_path, "x")[0]
    bundle = good._repr_mimebundle_()
    bundle["text/plain"] = bundle["text/plain"].replace("25.7", "25.9")   # text edited after the fact
    nb = shown(good)
    nb.cells[0].outputs[0]["data"] = bundle
    assert "not its template filled" in sentence_problems(nb, tmp_path, "x")[0]


def test_every_sentence_of_the_miniature_workbook_matches_its_source(outputs):
    """The default workbook (all five notebooks) on a tiny world and model: each sentence shown equals its template
    filled with its facts, and each fact equals the run's file or the expression it names."""
    from vici_utils.params import load
    from vici_utils.run_folder import run_dir
    from vici_utils.runner import run

    cfg = load("params/default.yaml", {**TINY_WORLD, **TINY_MODEL, "run_name": "prose", "epochs": 3, "val_every": 1,
                                       "batch_size": 4, "device": "cpu"})
    run(cfg, log=lambda line: None)
    folder = run_dir("prose")
    problems, counts = [], {}
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        counts[path.name[:2]] = len(sentences(nb))
        problems += sentence_problems(nb, folder, path.name)
    assert not problems, "\n".join(problems)
    for number, least in AT_LEAST.items():
        assert counts.get(number, 0) >= least, f"notebook {number} showed {counts.get(number, 0)} sentences"


def test_sentences_join_and_keep_their_facts():
    s = Sentence.join([Sentence("loss {a}", a=Fact(1.234, ".2f")), " and {literal braces} ", Sentence("{b} %", b=Fact(3.0))])
    assert s == "loss 1.23 and {literal braces} 3.0 %" and set(s.facts) == {"a", "b"}
    assert s.template.format(**{k: f.text for k, f in s.facts.items()}) == s
    with pytest.raises(ValueError, match="used twice"):
        Sentence.join([Sentence("{a}", a=Fact(1)), Sentence("{a}", a=Fact(2))])
    assert narrative.MIME in s._repr_mimebundle_()
