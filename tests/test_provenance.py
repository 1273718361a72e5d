"""Where a run's data and weights come from, in one rule and the sentences that follow it (provenance.py)."""
import pytest


@pytest.mark.parametrize("keys, kind, words", [
    ({"pretrained": False}, "scratch", ("from scratch", "random initialisation", "random initialisation")),
    ({"pretrained": True}, "hub", ("hub weights", "hub weights", "hub weights")),
    ({"pretrained": "package"}, "package", ("pip package", "pretrained: package", "EfficientNet")),
    ({"pretrained": "/w/net.safetensors"}, "file", ("net.safetensors",) * 3),
    ({"init_checkpoint": "/w/vici.ckpt", "epochs": 0}, "init_checkpoint", ("vici.ckpt",) * 3),
])
def test_one_rule_says_where_the_weights_come_from(keys, kind, words, tmp_path):
    """Issue 20.1: four places said it; provenance.initial_weights is the rule, the three sentences follow it."""
    from vici_utils.params import validate
    from vici_utils.provenance import describe_model, describe_weights, initial_weights
    from vici_utils.retrieval import weights_source

    cfg = validate({"backbone": "tf_efficientnet_lite0", **keys})
    assert initial_weights(cfg) == kind
    for text, word in zip((describe_model(cfg), describe_weights(cfg), weights_source(cfg, tmp_path)), words):
        assert word in text, (text, word)
