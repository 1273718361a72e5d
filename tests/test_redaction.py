"""Secrets (redaction.py): redacted where answers arrive, URLs shown without credentials, and no planted
secret reaches a file, a figure or a message."""
import base64
import json

import pytest

from tests.conftest import VLM_KEY
from tests.rerank_runs import config, rerank
from vici_utils.params import ParamsError, load, to_yaml
from vici_utils.redaction import expand_secret_refs, redact, redact_url
from vici_utils.rerank import RerankError

KEY = VLM_KEY


URL_SECRET = "url-token-SECRET-51e0"
TOKEN = "svc-token-SECRET-88aa"     # any secret-looking variable counts, not only the API keys


def test_redact_replaces_current_secret_values(monkeypatch):
    """Issue 12 (3): secrets are redacted where answers arrive, URLs shown without credentials."""
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("MY_SERVICE_TOKEN", TOKEN)
    monkeypatch.setenv("DB_PASSWORD", "short")  # under 8 characters: an ordinary word, left alone
    monkeypatch.setenv("HOME_DIR_NAME", "not-a-secret-at-all")
    text = f"key {KEY}, token {TOKEN}, short, not-a-secret-at-all, http://me:{URL_SECRET}@host:8000/v1"
    assert redact(text) == ("key [REDACTED], token [REDACTED], short, not-a-secret-at-all, "
                            "http://[REDACTED]@host:8000/v1")
    assert redact_url(f"https://me:{URL_SECRET}@example.org:8443/v1?key={KEY}&alt=json") == \
        "https://example.org:8443/v1?key=[REDACTED]&alt=json"
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1" and redact_url(None) is None


@pytest.mark.parametrize("backend", ["gemini", "openai"])
def test_planted_secrets_reach_no_file_and_nothing_in_memory(tiny, server, backend, monkeypatch):
    """Issue 12 (3): planted secrets reach no file and nothing shown."""
    import matplotlib.text

    from vici_utils.figures import rerank as figures

    monkeypatch.setenv("MY_SERVICE_TOKEN", TOKEN)
    monkeypatch.setenv("VLM_URL_TOKEN", URL_SECRET)
    url = server.url.replace("://", "://user:${VLM_URL_TOKEN}@")  # credentials by reference, as params require
    server.always = "echo_key"  # every answer's reason repeats the key the client sent
    cfg = config(backend, url)
    result = rerank(cfg)
    assert result.metrics["counts"]["ok"] == 4
    assert all(o.note.startswith("you sent me the key") for o in result.outcomes)
    shown = [result.per_query.to_csv(), json.dumps(result.metrics), repr(result.outcomes)]
    fig = figures.wins_and_losses(result, cfg, n=2)
    shown += [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    server.always = "400_echo_key"  # an error that prints the key, from a URL with credentials
    with pytest.raises(RerankError) as e:
        rerank(config(backend, url, vlm_model="another"))
    shown.append(str(e.value))
    assert "127.0.0.1" in str(e.value) and "[REDACTED]" in str(e.value)
    shown += [p.read_text(errors="replace") for p in (tiny / "t").rglob("*") if p.is_file() and p.suffix != ".npz"]
    assert len(shown) > 8
    basic = base64.b64encode(f"user:{URL_SECRET}".encode()).decode()  # how the URL's credentials travel
    for text in shown:
        for secret in (KEY, URL_SECRET, basic, TOKEN):
            assert secret not in text


def test_secrets_in_parameters_stay_references(monkeypatch):
    """A token in vlm_base_url is refused in clear; by ${NAME} it stays a reference in the resolved parameters
    (so in params.yaml, run.json and the notebooks) and is expanded only where the URL is used."""
    monkeypatch.setenv("VLM_TOKEN", "s3cr3t-value-123")
    monkeypatch.setenv("DATA_HOME", "/data")
    with pytest.raises(ParamsError, match="credentials in clear"):
        load(None, {"vlm_base_url": "https://me:s3cr3t-value-123@host/v1"})
    with pytest.raises(ParamsError, match="credentials in clear"):
        load(None, {"vlm_base_url": "https://host/v1?api_key=s3cr3t-value-123"})
    cfg = load(None, {"vlm_base_url": "https://me:${VLM_TOKEN}@host/v1", "init_checkpoint": "${DATA_HOME}/x.pt"})
    assert cfg.vlm_base_url == "https://me:${VLM_TOKEN}@host/v1" and cfg.init_checkpoint == "/data/x.pt"
    assert "s3cr3t" not in to_yaml(cfg)
    assert expand_secret_refs(cfg.vlm_base_url) == "https://me:s3cr3t-value-123@host/v1"


def test_url_references_are_never_expanded_into_parameters_nor_printed(monkeypatch):
    """Issue 22.11: every ${VAR} of the URL stays a reference (whatever the variable's name), so neither a refusal
    nor params.yaml / run.json shows its value; where the URL is used, each expanded part is redacted."""
    monkeypatch.setenv("VLM_URL", "https://me:hunter2-in-clear@host/v1")
    monkeypatch.setenv("ROUTE", "tenant-8f3e2c91")
    cfg = load(None, {"vlm_base_url": "${VLM_URL}"})
    assert cfg.vlm_base_url == "${VLM_URL}" and "hunter2" not in to_yaml(cfg)
    cfg = load(None, {"vlm_base_url": "https://host/$ROUTE/v1"})
    assert cfg.vlm_base_url == "https://host/${ROUTE}/v1" and "tenant" not in to_yaml(cfg)
    assert expand_secret_refs(cfg.vlm_base_url) == "https://host/tenant-8f3e2c91/v1"
    assert "tenant-8f3e2c91" not in redact("GET https://host/tenant-8f3e2c91/v1 failed")
    # a refused expansion elsewhere names the reference, never the value
    monkeypatch.setenv("EPOCHS", "forty-secret-epochs")
    with pytest.raises(ParamsError) as e:
        load(None, {"epochs": "${EPOCHS}"})
    assert "${EPOCHS}" in str(e.value) and "forty-secret" not in str(e.value)
