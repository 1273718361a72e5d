"""An executed run as small HTML pages, for readers who run nothing (`make docs` -> docs/rendered/; for any executed
notebooks: `python -m vici_utils render NOTEBOOK... OUT_DIR`).

Figures are stored in the notebooks as PNG at full size; here they are re-encoded as JPEG and scaled down to a
page's width, which makes the pages several times smaller without making a figure hard to read.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from PIL import Image

MAX_WIDTH = 1100   # px: wider than a page column is wasted
JPEG_QUALITY = 80


def _shrink(png_b64: str) -> str:
    image = Image.open(io.BytesIO(base64.b64decode(png_b64))).convert("RGB")
    if image.width > MAX_WIDTH:
        image = image.resize((MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)), Image.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return base64.b64encode(out.getvalue()).decode()


def render(notebooks: list[Path], out_dir: Path) -> list[Path]:
    """One HTML page per executed notebook, figures as scaled-down JPEGs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                if "image/png" in data:
                    data["image/jpeg"] = _shrink(data.pop("image/png"))
        html, _ = HTMLExporter(template_name="basic").from_notebook_node(nb)  # no 1,800-line stylesheet per page
        target = out_dir / (Path(path).stem + ".html")
        target.write_text(html)
        written.append(target)
    return written
