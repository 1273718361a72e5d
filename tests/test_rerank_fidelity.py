"""Issue 10, "VLM request": params/paper.yaml asks the VLM as VICI's stage_2.py did, checked on the wire."""
import base64

import pytest

from tests.fake_vlm_servers import FakeVLMServer, write_tiny_run
from vici_utils.params import load, validate
from vici_utils.paths import REPO_ROOT
from vici_utils.rerank import RetryPolicy, load_features, run_rerank
from vici_utils.rerank.schema import RerankAnswer, json_schema

VLM_KEYS = ("rerank_backend", "vlm_model", "vlm_image_size", "vlm_media_resolution", "vlm_temperature",
            "vlm_thinking_budget")


def paper_vlm(monkeypatch, tmp_path) -> dict:
    monkeypatch.setenv("U1652_ROOT", str(tmp_path))
    return load(REPO_ROOT / "params" / "paper.yaml").subset(VLM_KEYS)


def test_paper_yaml_is_vicis_request(monkeypatch, tmp_path):
    vlm = paper_vlm(monkeypatch, tmp_path)
    assert vlm == {"rerank_backend": "gemini", "vlm_model": "gemini-2.5-flash", "vlm_image_size": None,
                   "vlm_media_resolution": "unspecified", "vlm_temperature": 0.0, "vlm_thinking_budget": 1024}
    assert "gemini-2.5-flash-preview-05-20" in (REPO_ROOT / "params" / "paper.yaml").read_text()  # said retired


def test_the_answer_schema_ranks_first_as_vici():
    assert list(RerankAnswer.model_fields) == ["ranking", "summary_ground_image", "summary_satellite_images", "reason"]
    assert list(json_schema()["properties"]) == list(RerankAnswer.model_fields)
    assert json_schema()["properties"]["summary_satellite_images"]["items"]["type"] == "string"


@pytest.mark.parametrize("backend", ["gemini", "openai"])
def test_the_paper_request_on_the_wire(outputs, monkeypatch, tmp_path, backend):
    vlm = paper_vlm(monkeypatch, tmp_path)
    monkeypatch.setenv("GEMINI_API_KEY", "fidelity-key-0123")
    npz = write_tiny_run(outputs, "t", buildings=4, queries_per_building=1, distractors=2)
    feats = load_features(npz)
    with FakeVLMServer() as server:
        raw = {**vlm, "run_name": "t", "fusion": "weighted", "rerank_top_k": 5, "vlm_rpm": 100000, "vlm_concurrency": 1}
        if backend == "openai":
            raw.update(rerank_backend="openai", vlm_model="qwen2.5-vl", vlm_base_url=server.url + "/v1")
        else:
            raw["vlm_base_url"] = server.url
        result = run_rerank(validate(raw), retry=RetryPolicy(0, base_s=0.001), show_progress=False)
    assert result.metrics["counts"]["ok"] == 4
    paths = {**dict(zip(feats["query_names"], feats["query_paths"])),
             **dict(zip(feats["gallery_names"], feats["gallery_paths"]))}
    for seen, outcome in zip(server.seen, result.outcomes):
        files = [paths[outcome.name], *(paths[c] for c in outcome.candidates)]
        originals = [open(p, "rb").read() for p in files]
        assert seen.images == originals  # the files' own bytes: no downscaling, no re-encoding
        if backend == "gemini":  # as the wire carries them (URL-safe base64)
            assert [s.rstrip("=") for s in seen.encoded] == \
                [base64.urlsafe_b64encode(b).decode().rstrip("=") for b in originals]
        else:
            assert seen.encoded == [base64.b64encode(b).decode() for b in originals]
        assert seen.mimes == ["image/jpeg"] * 6
    g = server.seen[0].generation
    assert g["temperature"] == 0
    if backend == "gemini":
        assert "mediaResolution" not in g and "media_resolution" not in g  # the model's default, not LOW
        thinking = g["thinkingConfig"]
        assert thinking.get("thinkingBudget", thinking.get("thinking_budget")) == 1024
        schema = g["responseSchema"]
        ordering = schema.get("propertyOrdering") or schema.get("property_ordering")
        assert ordering[0] == "ranking" and list(schema["properties"])[0] == "ranking"
    else:
        assert "thinking" not in str(g)  # the protocol has no budget: nothing invented
        assert list(g["response_format"]["json_schema"]["schema"]["properties"])[0] == "ranking"
    answers = [a for o in result.outcomes for a in o.answers]
    assert all(isinstance(a["summary_satellite_images"], list) for a in answers)


def test_the_embedded_default_sends_small_jpegs(outputs, monkeypatch):
    import io

    from PIL import Image

    monkeypatch.setenv("GEMINI_API_KEY", "fidelity-key-0123")
    npz = write_tiny_run(outputs, "t", buildings=2, queries_per_building=1, distractors=1)
    for path in load_features(npz)["query_paths"]:
        Image.open(path).resize((120, 80)).save(path)
    with FakeVLMServer() as server:
        cfg = validate({"run_name": "t", "fusion": "weighted",
                        "rerank_backend": "gemini", "vlm_base_url": server.url, "rerank_top_k": 3,
                        "vlm_image_size": 32, "vlm_rpm": 100000})  # the default, 384, on 32-px-scale data
        run_rerank(cfg, show_progress=False)
    assert [Image.open(io.BytesIO(s.images[0])).size for s in server.seen] == [(32, 21)] * 2
    assert server.seen[0].generation["mediaResolution"] == "MEDIA_RESOLUTION_LOW"
