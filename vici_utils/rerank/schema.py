"""The answer a model must give, and the checks it must pass before we trust it.

Structured-output modes make a well-formed answer likely, not certain: a model can still stop early
(MAX_TOKENS, SAFETY), wrap the JSON in a markdown fence, or rank 3 twice and forget 7. `parse_answer`
turns every such case into an `AnswerFault` with a short kind, so the caller can retry and, in the end,
record why a query kept its retrieval order.

An answer is also bounded where it enters: at most MAX_ANSWER_BYTES of text, MAX_FIELD_CHARS per description,
one description per candidate. A larger one (a 10 MB reason) is `oversized`: unusable like any other fault,
never stored as usable (the store keeps its first 2,000 characters as the record), so no table, figure or
rerun ever reads it.
"""
from __future__ import annotations

import json

from pydantic import BaseModel, Field, ValidationError

# Finish reasons that mean "the model finished normally" (Gemini, OpenAI-compatible servers).
NORMAL_FINISH = {None, "", "STOP", "stop", "FINISH_REASON_UNSPECIFIED", "eos"}
TRUNCATED_FINISH = {"MAX_TOKENS", "length"}
MAX_ANSWER_BYTES = 64_000  # a full answer for 10 candidates is a few kB
MAX_FIELD_CHARS = 4_000    # each description and the reason


# VICI's answer (stage_2.py), in VICI's order. Field order is generation order (google-genai sends it as
# propertyOrdering), so the model writes its ranking first, then its descriptions, as VICI's did. The
# docstring and field descriptions are part of the schema the model reads.
class RerankAnswer(BaseModel):
    """A ranking of the numbered satellite images by how likely each shows the place of the ground photo."""
    ranking: list[int] = Field(description="every satellite image number exactly once, best match first")
    summary_ground_image: str = Field(description="what the ground photo shows that a satellite could see")
    summary_satellite_images: list[str] = Field(description="one description per satellite image, in number order")
    reason: str = Field(description="why the first-ranked image is the best match")


def json_schema() -> dict:
    """JSON Schema for OpenAI-style `response_format` (closed object, every key required; properties in
    declaration order, which servers that constrain decoding follow)."""
    schema = RerankAnswer.model_json_schema()
    schema["additionalProperties"] = False
    schema["required"] = list(RerankAnswer.model_fields)
    return schema


class AnswerFault(ValueError):
    """An answer we cannot use; `kind` is one of: finish, empty, fenced, truncated, invalid_json,
    off_schema, bad_ranking, oversized."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def check_ranking(ranking: list[int], k: int) -> None:
    if sorted(ranking) == list(range(1, k + 1)):
        return
    seen, dup = set(), []
    for r in ranking:
        if r in seen:
            dup.append(r)
        seen.add(r)
    missing = sorted(set(range(1, k + 1)) - seen)
    outside = sorted(r for r in seen if not 1 <= r <= k)
    detail = ", ".join(f"{name} {vals}" for name, vals in
                       (("duplicates", dup), ("missing", missing), ("out of range", outside)) if vals)
    raise AnswerFault("bad_ranking", f"ranking {ranking} is not a permutation of 1..{k} ({detail})")


def parse_answer(text: str | None, k: int, finish_reason: str | None = None) -> RerankAnswer:
    """A validated answer for `k` candidates, or AnswerFault saying what is wrong with it."""
    text = (text or "").strip()
    size = len(text.encode("utf-8", "replace"))
    if size > MAX_ANSWER_BYTES:
        raise AnswerFault("oversized", f"answer of {size:,} bytes, more than the {MAX_ANSWER_BYTES:,} allowed")
    if finish_reason not in NORMAL_FINISH and finish_reason not in TRUNCATED_FINISH:
        raise AnswerFault("finish", f"model stopped with finish reason {finish_reason}"
                          + ("" if text else " and no text"))
    if not text:
        raise AnswerFault("empty", f"empty answer (finish reason {finish_reason})")
    if text.startswith("```"):
        raise AnswerFault("fenced", "JSON wrapped in a markdown code fence")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if finish_reason in TRUNCATED_FINISH:
            raise AnswerFault("truncated", f"answer cut off (finish reason {finish_reason})") from None
        raise AnswerFault("invalid_json", f"not JSON ({e.msg} at char {e.pos})") from None
    if finish_reason in TRUNCATED_FINISH:
        raise AnswerFault("truncated", f"finish reason {finish_reason}")
    try:
        answer = RerankAnswer.model_validate(data, strict=False)
    except ValidationError as e:
        first = e.errors()[0]
        raise AnswerFault("off_schema", f"{'.'.join(map(str, first['loc'])) or 'answer'}: {first['msg']}") from None
    check_ranking(answer.ranking, k)
    check_sizes(answer, k)
    return answer


def check_sizes(answer: RerankAnswer, k: int) -> None:
    if len(answer.summary_satellite_images) > k:
        raise AnswerFault("oversized", f"{len(answer.summary_satellite_images)} satellite descriptions for {k} images")
    fields = {"reason": answer.reason, "summary_ground_image": answer.summary_ground_image,
              **{f"summary_satellite_images[{i}]": t for i, t in enumerate(answer.summary_satellite_images)}}
    for name, text in fields.items():
        if len(text) > MAX_FIELD_CHARS:
            raise AnswerFault("oversized", f"{name} is {len(text):,} characters, more than {MAX_FIELD_CHARS:,}")
