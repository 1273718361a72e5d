"""The VLM's answer (rerank/schema.py): the JSON schema it is asked for, and each way an answer can be unusable."""
import json

import pytest

from tests.rerank_runs import config, rerank, rerank_dir
from vici_utils.rerank.schema import AnswerFault, RerankAnswer, json_schema, parse_answer


GOOD = {"ranking": [3, 1, 2, 5, 4], "summary_ground_image": "a red house",
        "summary_satellite_images": ["roof 1", "roof 2", "roof 3", "roof 4", "roof 5"], "reason": "red roof"}


def test_parse_answer_accepts_a_permutation():
    answer = parse_answer(json.dumps(GOOD), 5, "STOP")
    assert answer.ranking == [3, 1, 2, 5, 4] and answer.reason == "red roof"
    assert parse_answer(json.dumps(GOOD), 5, "stop").ranking == [3, 1, 2, 5, 4]


@pytest.mark.parametrize("text, finish, kind", [
    ("", "STOP", "empty"),
    ("", "SAFETY", "finish"),
    (json.dumps(GOOD), "RECITATION", "finish"),
    ("", "BLOCKED_SAFETY", "finish"),
    ("```json\n" + json.dumps(GOOD) + "\n```", "STOP", "fenced"),
    ("Here you go: " + json.dumps(GOOD), "STOP", "invalid_json"),
    (json.dumps(GOOD)[:40], "MAX_TOKENS", "truncated"),
    (json.dumps(GOOD)[:40], "length", "truncated"),
    (json.dumps({**GOOD, "ranking": "3,1,2,5,4"}), "STOP", "off_schema"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "reason"}), "STOP", "off_schema"),
    (json.dumps([3, 1, 2, 5, 4]), "STOP", "off_schema"),
    (json.dumps({**GOOD, "ranking": [3, 3, 2, 5, 4]}), "STOP", "bad_ranking"),
    (json.dumps({**GOOD, "ranking": [3, 1, 2, 5]}), "STOP", "bad_ranking"),
    (json.dumps({**GOOD, "ranking": [0, 1, 2, 3, 4]}), "STOP", "bad_ranking"),
    (json.dumps({**GOOD, "ranking": [3, 1, 2, 5, 4, 6]}), "STOP", "bad_ranking"),
])
def test_parse_answer_names_each_fault(text, finish, kind):
    with pytest.raises(AnswerFault) as e:
        parse_answer(text, 5, finish)
    assert e.value.kind == kind


def test_bad_ranking_message_says_what_is_wrong():
    with pytest.raises(AnswerFault, match=r"duplicates \[3\], missing \[1\]"):
        parse_answer(json.dumps({**GOOD, "ranking": [3, 3, 2, 5, 4]}), 5)


def test_json_schema_is_closed_and_complete():
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"ranking", "summary_ground_image", "summary_satellite_images", "reason"}
    assert schema["properties"]["ranking"]["items"]["type"] == "integer"


def test_the_answer_schema_ranks_first_as_vici():
    """Issue 10: the answer schema puts the ranking first, as VICI's."""
    assert list(RerankAnswer.model_fields) == ["ranking", "summary_ground_image", "summary_satellite_images", "reason"]
    assert list(json_schema()["properties"]) == list(RerankAnswer.model_fields)
    assert json_schema()["properties"]["summary_satellite_images"]["items"]["type"] == "string"


# --- issue 22: oversized answers --------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["gemini", "openai"])
def test_an_oversized_answer_is_unusable_named_and_never_stored_whole(tiny, server, backend):
    """Issue 22.1: a valid ranking with a 10 MB reason was stored as usable (cache.jsonl 42 MB for 4 queries) and
    then hung notebook 04's figures and every rerun."""
    server.script = ["huge_reason"]
    m = rerank(config(backend, server.url)).metrics
    assert m["counts"]["ok"] == 4 and m["counts"]["invalid_answers"] == 1 and len(server.seen) == 5
    out = rerank_dir(tiny)
    stored = [json.loads(x) for x in (out / "cache.jsonl").read_text().splitlines()]
    bad = [x for x in stored if not x["ok"]]
    assert len(bad) == 1 and bad[0]["fault"].startswith("oversized: answer of 10,00") and "64,000" in bad[0]["fault"]
    assert (out / "cache.jsonl").stat().st_size < 50_000 and (out / "reasons.jsonl").stat().st_size < 50_000
    sent = len(server.seen)
    assert rerank(config(backend, server.url)).metrics["counts"]["cached"] == 4 and len(server.seen) == sent


def test_oversized_fields_are_named():
    """Issue 22.1: each oversized field of an answer is named."""
    from vici_utils.rerank.schema import AnswerFault, parse_answer

    good = {"ranking": [2, 1], "summary_ground_image": "g", "summary_satellite_images": ["a", "b"], "reason": "r"}
    for change, name in (({"reason": "x" * 5000}, "reason is 5,000 characters"),
                         ({"summary_satellite_images": ["a", "x" * 4001]}, r"summary_satellite_images\[1\] is 4,001"),
                         ({"summary_satellite_images": ["a"] * 3}, "3 satellite descriptions for 2 images")):
        with pytest.raises(AnswerFault, match=f"oversized: {name}"):
            parse_answer(json.dumps({**good, **change}), 2)
    assert parse_answer(json.dumps(good), 2).reason == "r"
