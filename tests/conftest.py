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
