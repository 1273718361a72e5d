"""make docs: executed notebooks become small HTML pages, figures as scaled-down JPEGs."""
import base64
import io

import nbformat
import numpy as np
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
