"""Answer files: answer.txt (the challenge format), topk.csv, and the challenge answer.zip.

answer.txt: one line per query, in query order; on each line the top-k gallery names, best first, separated by
tabs. For the ACM MM 2025 UAV workshop challenge the order is that of query_street_name.txt, k is 10 and the
names are the 16-character gallery file names without extension; answer.zip holds answer.txt at its root.
"""
from __future__ import annotations

import csv
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .run_folder import ANSWER, write_atomic

CHALLENGE_K = 10
CHALLENGE_NAME_LENGTH = 16


class AnswerError(ValueError):
    """An answer that does not follow the format; the message names the file or line and what was expected."""


def validate_answer(names_per_query: Sequence[Sequence[str]], k: Optional[int] = CHALLENGE_K,
                    name_length: Optional[int] = None, where: str = "answer") -> None:
    """Every line has exactly k names (k=None: any same number), no duplicates, no tabs or line breaks in names,
    and (name_length) names of that length."""
    if len(names_per_query) == 0:
        raise AnswerError(f"{where}: no queries")
    want = len(names_per_query[0]) if k is None else k
    for i, names in enumerate(names_per_query, start=1):
        if isinstance(names, str):
            raise AnswerError(f"{where}, query {i}: expected a list of gallery names, got the string {names!r}")
        if len(names) != want:
            raise AnswerError(f"{where}, query {i}: expected {want} gallery names, got {len(names)}")
        if len(set(names)) != len(names):
            dup = next(n for n in names if list(names).count(n) > 1)
            raise AnswerError(f"{where}, query {i}: gallery name {dup!r} appears more than once")
        for n in names:
            if not isinstance(n, str) or not n or any(c in n for c in "\t\r\n"):
                raise AnswerError(f"{where}, query {i}: invalid gallery name {n!r} (non-empty, no tabs or newlines)")
            if name_length is not None and len(n) != name_length:
                raise AnswerError(f"{where}, query {i}: gallery name {n!r} has {len(n)} characters, the challenge "
                                  f"expects {name_length} (the file name without extension)")


def write_answer_txt(path, names_per_query: Sequence[Sequence[str]], k: Optional[int] = CHALLENGE_K,
                     name_length: Optional[int] = None) -> Path:
    """Write one tab-separated line of gallery names per query (best first), after validating them."""
    path = Path(path)
    validate_answer(names_per_query, k, name_length, where=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, "".join("\t".join(names) + "\n" for names in names_per_query))


def read_answer_txt(path, k: Optional[int] = CHALLENGE_K) -> list[list[str]]:
    """The names per query of an answer.txt, validated (k=None accepts any same number of names per line)."""
    path = Path(path)
    if not path.is_file():
        raise AnswerError(f"{path}: answer file not found")
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.split("\t") for line in lines]
    validate_answer(names, k, where=str(path))
    return names


def names_from_indices(indices, gallery_names: Sequence[str]) -> list[list[str]]:
    """Gallery names of index rows [nq, k]."""
    lookup = np.asarray(gallery_names, dtype=object)
    return lookup[np.asarray(indices)].tolist()


def write_topk_csv(path, query_names: Sequence[str], gallery_names: Sequence[str], indices, scores) -> Path:
    """A long table: query, rank (1-based), gallery, score, one row per (query, candidate)."""
    path = Path(path)
    indices, scores = np.asarray(indices), np.asarray(scores)
    if indices.shape != scores.shape or indices.ndim != 2 or len(indices) != len(query_names):
        raise AnswerError(f"{path}: indices {indices.shape} and scores {scores.shape} must both be "
                          f"[n_query={len(query_names)}, k]")
    gallery = names_from_indices(indices, gallery_names)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["query", "rank", "gallery", "score"])
            for q, names, row in zip(query_names, gallery, scores):
                for rank, (g, s) in enumerate(zip(names, row), start=1):
                    w.writerow([q, rank, g, f"{s:.6f}"])

    return write_atomic(path, write)


def write_challenge(out_dir, names_per_query: Sequence[Sequence[str]], k: int = CHALLENGE_K) -> tuple[Path, Path]:
    """answer.txt in the exact challenge format (10 names of 16 characters per line) and answer.zip holding it at
    its root. Queries must already be in query_street_name.txt order (u1652 keeps that order). A smaller k is
    only for galleries of fewer than 10 images (tiny embedded worlds)."""
    out_dir = Path(out_dir)
    txt = write_answer_txt(out_dir / ANSWER, names_per_query, k, CHALLENGE_NAME_LENGTH)
    zip_path = out_dir / "answer.zip"

    def zip_answer(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.write(txt, arcname="answer.txt")

    write_atomic(zip_path, zip_answer)
    return txt, zip_path
