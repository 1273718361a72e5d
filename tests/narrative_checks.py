"""Checks of the prose of executed and source notebooks (used by tests/test_prose.py).

- `sentence_problems(nb, run_folder)`: every sentence a notebook showed with `narrative.show` prints exactly its
  template filled with its facts, and every fact equals its source: a value of a file in the run folder, or an
  expression of the sentence's other facts.
- `markdown_numbers(nb)`: the numbers in markdown cells that look measured (a decimal, a percentage, a ±), with
  the exceptions of MARKDOWN_RULE.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from vici_utils.narrative import MIME

TEMPLATE_FIELD = re.compile(r"\{[A-Za-z_]\w*\}")
DECIMAL = re.compile(r"\d+\.\d+")


def sentences(nb) -> list[tuple[int, dict, str]]:
    """(cell index, facts bundle, text shown) of every sentence shown with narrative.show."""
    out = []
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = o.get("data", {})
            if MIME in data:
                out.append((i, data[MIME], data.get("text/plain", "")))
    return out


def resolve(source: str, folder: Path) -> float:
    """The value a file source names: "<file>:<key>" of a JSON file, "<file>:<column>[<column>=<value>]" of a
    CSV file (the row where that column holds that value)."""
    name, _, key = source.partition(":")
    path = folder / name
    if path.suffix == ".json":
        return float(json.loads(path.read_text())[key])
    column, where = re.fullmatch(r"(.+?)\[(.+)\]", key).groups()
    col, value = where.split("=", 1)
    table = pd.read_csv(path)
    rows = table[table[col].astype(str) == value] if table[col].dtype == object else table[table[col] == float(value)]
    assert len(rows) == 1, f"{source}: {len(rows)} rows where {col} = {value}"
    return float(rows[column].iloc[0])


def sentence_problems(nb, folder: Path, where: str) -> list[str]:
    problems = []
    for cell, bundle, shown in sentences(nb):
        facts = bundle["facts"]
        at = f"{where} cell {cell}"
        texts = {k: format(f["value"], f["fmt"]) for k, f in facts.items()}
        if bundle["template"].format(**texts) != shown:
            problems.append(f"{at}: the shown text is not its template filled with its facts: {shown!r}")
        literal = TEMPLATE_FIELD.sub("", bundle["template"])
        if DECIMAL.search(literal):
            problems.append(f"{at}: a number is written into the template instead of a fact: {literal!r}")
        values = {k: f["value"] for k, f in facts.items()}
        for k, f in facts.items():
            source = f["source"]
            if not source:
                continue
            if source.startswith("="):
                expected = eval(source[1:], {"__builtins__": {}, "log": math.log, "min": min, "max": max, "abs": abs},
                                values)
            else:
                expected = resolve(source, folder)
            if not math.isclose(f["value"], expected, rel_tol=1e-6, abs_tol=1e-9):
                problems.append(f"{at}: '{k}' is {f['value']!r} but its source ({source}) gives {expected!r}: {shown!r}")
    return problems


# --- markdown ---------------------------------------------------------------------------------------------------

MARKDOWN_RULE = """A markdown cell states no measured number: a decimal, a percentage or a ± outside code and math is
allowed only (a) in a sentence that quotes its source (the paper, VICI, University-1652), (b) right after '=' or
'≈' (a worked computation or a setting, e.g. `P = 0.3`, 100 / 150 = 0.67 %), (c) before a unit of a design fact
(px, m, °, GB, GPUs, ...) or as "95 %" of a confidence interval, (d) as the version in a name (Gemini 2.5).
Measured numbers belong in printed sentences."""

CODE_OR_MATH = re.compile(r"```.*?```|`[^`]*`|\$\$.*?\$\$|\$[^$]*\$|<[^>]+>|\]\([^)]*\)", re.S)
MEASURED = re.compile(r"±\s*\d+(?:\.\d+)?|(?P<before>[=≈]\s*)?[+\-−]?\d[\d,]*(?:\.\d+)?\s*(?:%|±)|(?P<before2>[=≈]\s*)?[+\-−]?\d+\.\d+"
                      r"(?P<unit>\s*(?:-\s*\d+(?:\.\d+)?\s*)?(?:px|m\b|°|GB|MB|GPUs?|s\b|min\b|x\b))?")
QUOTED = re.compile(r"\bpaper\b|\bVICI\b|University-1652|\breports?\b", re.I)
FIXED = re.compile(r"95\s*%\s*(?:confidence|interval)")
NAME = re.compile(r"[A-Z][\w-]*\s$")   # the word before a version number: Gemini 2.5


def markdown_numbers(nb) -> list[tuple[int, str, str]]:
    """(cell index, number, sentence) for every measured-looking number in a markdown cell."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        text = CODE_OR_MATH.sub(" ", cell.source)
        for sentence in re.split(r"(?<=[.!?:])\s+(?=[A-Z*(])|\n\s*\n|\n\s*(?:\d+\.|[-*])\s", text):
            if QUOTED.search(sentence):
                continue
            for m in MEASURED.finditer(sentence):
                if m.group("before") or m.group("before2") or m.group("unit"):
                    continue
                if FIXED.match(sentence, m.start()) or NAME.search(sentence[:m.start()]):
                    continue
                found.append((i, m.group(0).strip(), " ".join(sentence.split())[:160]))
    return found
