"""Shared fixtures: outputs go to a temporary folder; one tiny embedded world per test session."""
import pytest

TINY_WORLD = {"world_train_locations": 12, "world_test_locations": 6, "world_distractors": 3}
# Tests that train use this small model from scratch (the default fine-tunes a pretrained one at 96 px, slower).
TINY_MODEL = {"backbone": "resnet10t", "pretrained": False, "image_size": 64}


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    """VICI_OUTPUTS pointed at a fresh temporary folder."""
    monkeypatch.setenv("VICI_OUTPUTS", str(tmp_path / "outputs"))
    return tmp_path / "outputs"


@pytest.fixture(scope="session")
def tiny_world_outputs(tmp_path_factory):
    """An outputs folder holding a tiny generated world (generated once per session, then cached)."""
    import os

    from vici_utils.params import validate
    from vici_utils.world import WorldSpec, ensure_world

    root = tmp_path_factory.mktemp("shared_outputs")
    old = os.environ.get("VICI_OUTPUTS")
    os.environ["VICI_OUTPUTS"] = str(root)
    try:
        ensure_world(WorldSpec.from_params(validate(TINY_WORLD)), progress=False)
    finally:
        if old is None:
            os.environ.pop("VICI_OUTPUTS")
        else:
            os.environ["VICI_OUTPUTS"] = old
    return root


# --- re-ranking against loopback VLM servers ------------------------------------------------------------------
VLM_KEY = "test-key-SECRET-7f3a9c"


@pytest.fixture
def tiny(outputs, monkeypatch):
    """A tiny retrieval run 't' (4 buildings, 1 query each, 2 distractors) with the API keys set to VLM_KEY."""
    from tests.fake_vlm_servers import write_tiny_run

    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", VLM_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", VLM_KEY)
    write_tiny_run(outputs, "t", buildings=4, queries_per_building=1, distractors=2)
    return outputs


@pytest.fixture
def server():
    """A loopback Gemini- and OpenAI-style server (tests/fake_vlm_servers.py)."""
    from tests.fake_vlm_servers import FakeVLMServer

    with FakeVLMServer() as s:
        yield s
