"""make docs: executed notebooks become small HTML pages, figures as scaled-down JPEGs."""
import base64
import io
import json

import nbformat
import numpy as np
import pytest
from PIL import Image

from vici_utils.rendered import MAX_WIDTH, render


def test_pages_carry_the_figures_as_small_jpegs(tmp_path):
    noise = (np.random.default_rng(0).random((900, 2400, 3)) * 255).astype("uint8")
    png = io.BytesIO()
    Image.fromarray(noise).save(png, "PNG")
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("fig")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(png.getvalue()).decode()})]
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter"), cell]
    nbformat.write(nb, tmp_path / "01_x.ipynb")
    (page,) = render([tmp_path / "01_x.ipynb"], tmp_path / "out")
    html = page.read_text()
    assert base64.b64encode(png.getvalue()).decode()[:200] not in html  # the PNG itself is gone
    assert "A chapter" in html and "data:image/jpeg;base64," in html and png.getvalue()[:64] not in base64.b64decode(html.split("data:image/jpeg;base64,")[1].split('"')[0])
    jpeg = base64.b64decode(html.split("data:image/jpeg;base64,")[1].split('"')[0])
    assert Image.open(io.BytesIO(jpeg)).width == MAX_WIDTH and len(jpeg) < len(png.getvalue()) / 2


def test_the_command_line_renders_the_notebooks_it_is_given(tmp_path, capsys):
    from vici_utils.__main__ import main

    for name in ("01_a", "02_b"):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(f"# Chapter {name}")]
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    assert main(["render", str(tmp_path / "01_a.ipynb"), str(tmp_path / "02_b.ipynb"), str(tmp_path / "out")]) == 0
    assert "Chapter 02_b" in (tmp_path / "out" / "02_b.html").read_text()
    assert str(tmp_path / "out" / "01_a.html") in capsys.readouterr().out


def test_rendered_copy_was_made_from_the_notebooks_at_head():
    """docs/rendered/ must show the notebooks as they are: sources.json records a hash of each notebook source that
    made the pages (written by `make docs`, i.e. `python -m vici_utils headline`)."""
    from vici_utils.headline import SOURCES, notebook_hashes
    from vici_utils.paths import REPO_ROOT

    record = REPO_ROOT / "docs" / "rendered" / SOURCES
    assert record.is_file(), f"{record} is missing: the rendered copy says nothing of its sources; run `make docs`"
    made_from = json.loads(record.read_text())["notebooks"]
    stale = [name for name, digest in notebook_hashes().items() if made_from.get(name) != digest]
    assert not stale, f"docs/rendered/ was made from other versions of {', '.join(stale)}: run `make docs`"
    for name in notebook_hashes():
        assert (record.parent / name.replace(".ipynb", ".html")).is_file()


def test_headline_writes_the_readme_paragraph_and_records_the_sources(outputs, tmp_path):
    """The command in miniature (notebook 01 of a tiny world): the paragraph names the machine, its load, the code
    version and the time; the rendered pages come with the hashes of the notebooks that made them."""
    from tests.conftest import TINY_WORLD
    from vici_utils.headline import HEADLINE_END, HEADLINE_START, SOURCES, main, notebook_hashes

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\nbefore\n{HEADLINE_START}\nold numbers\n{HEADLINE_END}\nafter\n")
    sets = [f"{k}={v}" for k, v in TINY_WORLD.items()]
    assert main(["--only", "01", "--readme", str(readme), "--rendered", str(tmp_path / "rendered"),
                 *[a for s in sets for a in ("--set", s)]]) == 0
    text = readme.read_text()
    assert "old numbers" not in text and text.startswith("# x\nbefore\n") and text.endswith("after\n")
    cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    assert cpu in text and "load average" in text and "code version" in text and "notebook 01" in text
    record = json.loads((tmp_path / "rendered" / SOURCES).read_text())
    assert record["notebooks"] == {"01_data_exploration.ipynb": notebook_hashes()["01_data_exploration.ipynb"]}
    assert (tmp_path / "rendered" / "01_data_exploration.html").is_file()
