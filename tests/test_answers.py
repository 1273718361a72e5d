"""Answer files: answer.txt format, topk.csv, the challenge answer.zip, and validation messages."""
import csv
import zipfile

import numpy as np
import pytest

from vici_utils import answers


def names(n_query, k=10, length=16):
    return [[f"{q:02d}{i:0{length - 2}d}" for i in range(k)] for q in range(n_query)]


def test_answer_txt_is_tab_separated_one_line_per_query_in_order(tmp_path):
    rows = names(3)
    path = answers.write_answer_txt(tmp_path / "answer.txt", rows)
    lines = path.read_text().split("\n")
    assert lines[-1] == "" and len(lines) == 4  # newline-terminated, nothing else
    assert [line.split("\t") for line in lines[:3]] == rows
    assert all(line.count("\t") == 9 for line in lines[:3])
    assert answers.read_answer_txt(path) == rows


def test_answer_validation_names_the_query_and_the_problem(tmp_path):
    rows = names(3)
    rows[1] = rows[1][:9]
    with pytest.raises(answers.AnswerError, match=r"query 2: expected 10 gallery names, got 9"):
        answers.write_answer_txt(tmp_path / "a.txt", rows)
    rows = names(3)
    rows[2][5] = rows[2][0]
    with pytest.raises(answers.AnswerError, match=r"query 3: gallery name .* more than once"):
        answers.write_answer_txt(tmp_path / "a.txt", rows)
    with pytest.raises(answers.AnswerError, match="tabs"):
        answers.write_answer_txt(tmp_path / "a.txt", [["a\tb"]], k=1)
    assert not (tmp_path / "a.txt").exists()
    answers.write_answer_txt(tmp_path / "five.txt", names(2, k=5), k=5)
    with pytest.raises(answers.AnswerError, match="expected 10"):
        answers.read_answer_txt(tmp_path / "five.txt")
    assert len(answers.read_answer_txt(tmp_path / "five.txt", k=None)[0]) == 5
    with pytest.raises(answers.AnswerError, match="not found"):
        answers.read_answer_txt(tmp_path / "missing.txt")


def test_challenge_zip_holds_answer_txt_at_its_root(tmp_path):
    rows = names(4)
    txt, zpath = answers.write_challenge(tmp_path / "challenge", rows)
    assert txt.name == "answer.txt" and zpath.name == "answer.zip"
    with zipfile.ZipFile(zpath) as z:
        assert z.namelist() == ["answer.txt"]
        assert z.read("answer.txt").decode() == txt.read_text()
    assert answers.read_answer_txt(txt) == rows
    with pytest.raises(answers.AnswerError, match="16"):
        answers.write_challenge(tmp_path / "bad", names(2, length=12))


def test_topk_csv_has_one_row_per_candidate(tmp_path):
    gallery = ["g0", "g1", "g2", "g3"]
    indices = np.array([[2, 0, 1], [3, 2, 1]])
    scores = np.array([[0.9, 0.5, 0.1], [0.8, 0.7, 0.6]], dtype=np.float32)
    path = answers.write_topk_csv(tmp_path / "topk.csv", ["q/0.jpg", "q/1.jpg"], gallery, indices, scores)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["query", "rank", "gallery", "score"]
    assert [(r["query"], int(r["rank"]), r["gallery"]) for r in rows[:3]] == [
        ("q/0.jpg", 1, "g2"), ("q/0.jpg", 2, "g0"), ("q/0.jpg", 3, "g1")]
    assert rows[3]["gallery"] == "g3" and float(rows[5]["score"]) == pytest.approx(0.6)
    with pytest.raises(answers.AnswerError, match="n_query"):
        answers.write_topk_csv(tmp_path / "x.csv", ["q"], gallery, indices, scores)
