"""Execute a workbook notebook headlessly, as the runner does, and read back what it showed."""
import nbformat
import papermill

from vici_utils.paths import NOTEBOOKS_DIR

SHOWN = ("text/plain", "text/html", "text/markdown")


def execute(name: str, out_path, **parameters) -> tuple[str, int]:
    """Run notebooks/<name> with `parameters` into out_path; returns (all text it showed, number of figures).
    A cell that raises fails the test through papermill's error, which names the cell."""
    papermill.execute_notebook(str(NOTEBOOKS_DIR / name), str(out_path), parameters=parameters,
                               kernel_name="python3", cwd=str(NOTEBOOKS_DIR), progress_bar=False)
    nb = nbformat.read(out_path, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") + "".join(o.get("data", {}).get(k, "") for k in SHOWN) for o in outputs)
    return text, sum("image/png" in o.get("data", {}) for o in outputs)
