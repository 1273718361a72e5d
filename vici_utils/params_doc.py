"""docs/parameters.md, generated from the fields of params.Params and the registries (python -m vici_utils params-doc).

Each parameter's allowed values come from its type and bounds, or, for a key that takes a registry's names, from
the registry as it is now; every registered name is listed with what its object says it does.
"""
from __future__ import annotations

import inspect
import re
import typing
from typing import Any, Literal, Union

from . import registry
from .params import DATA_KEYS, MODEL_KEYS, REGISTERED, RENAMED, TRAIN_KEYS, Params, allowed_names
from .paths import REPO_ROOT

PARAMETERS_DOC = REPO_ROOT / "docs" / "parameters.md"
# every registry, under the key that takes its names
REGISTRIES = (("reranker", registry.RERANKERS), ("reranker with vlm_mode: batch", registry.BATCH_RERANKERS),
              ("fusion", registry.FUSIONS), ("loss", registry.LOSSES), ("a sweep file's table", registry.TABLE_KINDS))


def _sections() -> list[tuple[str, list[str]]]:
    """Params' fields grouped as the `# --- title ---` comments of its class body group them."""
    sections: list[tuple[str, list[str]]] = []
    for line in inspect.getsource(Params).splitlines():
        title = re.match(r"\s*# --- (.+?) -+$", line)
        field = re.match(r" {4}(\w+):", line)
        if title:
            sections.append((title.group(1), []))
        elif field and field.group(1) in Params.model_fields:
            sections[-1][1].append(field.group(1))
    return sections


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a bar would end the table cell


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _allowed(key: str) -> str:
    """The values a field takes, from the registry or its type and bounds: 'auto \\| cpu \\| cuda',
    'integer >= 1, or null'."""
    if key in REGISTERED:
        return " \\| ".join(allowed_names(key))
    field = Params.model_fields[key]
    kinds = {bool: "true \\| false", int: "integer", float: "number", str: "text"}
    args = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is Union else (field.annotation,)
    parts = []
    for t in args:
        if t is type(None):
            continue
        if typing.get_origin(t) is Literal:
            parts.append(" \\| ".join(_yaml_value(v) for v in typing.get_args(t)))
        else:
            parts.append(kinds.get(t, getattr(t, "__name__", str(t))))
    bounds = [f"{op} {_yaml_value(getattr(m, name))}" for m in field.metadata
              for name, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if hasattr(m, name)]
    text = ", or ".join(parts) + (" " + ", ".join(bounds) if bounds else "")
    return text + (", or null" if type(None) in args else "")


def what_it_is(obj) -> str:
    """A registered object's own one line: its label (a fusion rule, a loss, a re-ranker) or title (a table)."""
    return getattr(obj, "label", None) or getattr(obj, "title", None) or ""


def registered_markdown() -> list[str]:
    lines = ["## Registered names", "",
             "The names a registry holds (vici_utils/registry.py), under the key that takes them, each with what its "
             "object says it is. A new name is one line there and its object (docs/architecture.md, \"How to add\").",
             ""]
    for key, names in REGISTRIES:
        lines += [f"### {key}", "", "| name | what it is | object |", "|---|---|---|"]
        for name, obj in names.load_all().items():
            shown = f"`{name}`" if name else "'' (no `table:`)"
            lines.append(f"| {shown} | {_cell(what_it_is(obj))} | `{names[name]}` |")
        lines.append("")
    return lines


def earlier_names_markdown() -> list[str]:
    """The names of earlier versions that are still read (params.RENAMED, the registries' aliases)."""
    renamed = [f"`{old}` is now `{new}`" for old, new in RENAMED.items()]
    renamed += [f"`{key}: {old}` is now `{key}: {new}`" for key, names in REGISTRIES if key in REGISTERED
                for old, new in names.aliases.items()]
    return ["## Earlier names", "",
            "Still read from parameters files, `--set`, sweep files and stored run folders, each with a deprecation "
            "warning: " + "; ".join(renamed) + ".", ""]


def parameters_markdown() -> str:
    """docs/parameters.md: every parameter with its default, allowed values and description, grouped as in Params;
    then every registry's names."""
    lines = ["# Parameters", "",
             "<!-- Generated from the field descriptions in vici_utils/params.py and the registries in "
             "vici_utils/registry.py by `python -m vici_utils params-doc`; edit those, not this file. -->", "",
             "Every key of a parameters file (`params/*.yaml`) and of `--set key=value`. The defaults are the "
             "embedded workbook (`params/default.yaml`); `params/paper.yaml` switches to University-1652 with VICI's "
             "recipe. `null` in a file is None in the descriptions. Secrets (API keys) are never parameters: they "
             "come from the environment.", ""]
    for title, keys in _sections():
        lines += [f"## {title[0].upper()}{title[1:]}", "", "| key | default | allowed | description |",
                  "|---|---|---|---|"]
        for key in keys:
            f = Params.model_fields[key]
            lines.append(f"| `{key}` | `{_yaml_value(f.default)}` | {_allowed(key)} | "
                         f"{_cell(f.description or '')} |")
        lines.append("")
    lines += ["## What a trained model depends on", "",
              "Evaluation checks these keys against a checkpoint's own (a model trained on other data or with "
              "another architecture is refused):", "", ", ".join(f"`{k}`" for k in (*DATA_KEYS, *MODEL_KEYS)), "",
              "Resuming training checks all of these; change one and use another `run_name`, or `resume: false`:", "",
              ", ".join(f"`{k}`" for k in TRAIN_KEYS), "", *registered_markdown(), *earlier_names_markdown()]
    return "\n".join(lines)
