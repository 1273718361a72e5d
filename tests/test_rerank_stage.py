"""The stage, rerank.stage.rerank: the files it writes, what may and may not change, and notebook 04 (offline: none,
kreciprocal); and against loopback servers, what a run of bad answers or a failed set-up leaves (issue 12)."""
import json
import logging

import numpy as np
import pytest

from tests.conftest import VLM_KEY as KEY
from tests.fake_vlm_servers import write_tiny_run
from tests.notebooks import execute
from tests.rerank_runs import RESULTS, config, rerank, rerank_dir, snapshot
from vici_utils import answers, metrics
from vici_utils.params import ParamsError, validate
from vici_utils.rerank import fusion, load_features, stage
from vici_utils.rerank.rerankers import RERANKERS, Reranked, RerankError, outcomes_from_orders


def cfg(**kw):
    return validate({"run_name": "t", "fusion": "weighted", **kw})


def retrieval_top10(npz):
    f = load_features(npz)
    ranking = metrics.full_ranking(f["query_features"], f["gallery_features"])
    return [[f["gallery_names"][g] for g in row[:10]] for row in ranking]


def test_none_passes_the_retrieval_order_through(outputs):
    npz = write_tiny_run(outputs, "t", buildings=10, queries_per_building=2)
    m = stage.rerank(cfg(reranker="none"), show_progress=False).metrics
    for rule in ("weighted", "reranker", "rrf"):
        assert {k: m[rule][k] for k in metrics.METRICS} == {k: m["retrieval"][k] for k in metrics.METRICS}
    out = outputs / "t" / "rerank"
    assert answers.read_answer_txt(out / "answer_fused.txt") == retrieval_top10(npz)
    assert answers.read_answer_txt(out / "answer_reranker.txt") == retrieval_top10(npz)


def test_kreciprocal_rewrites_the_order_within_the_top_10_only(outputs):
    npz = write_tiny_run(outputs, "t", buildings=12, queries_per_building=3, distractors=4)
    result = stage.rerank(cfg(), show_progress=False)  # the defaults: kreciprocal, top 10, weighted
    out = outputs / "t" / "rerank"
    m = json.loads((out / "metrics.json").read_text())
    assert m["reranked_by"] == "kreciprocal" and m["headline"] == "weighted" and m["top_k"] == 10
    assert m["counts"] == {"ok": 36, "fallback": 0, "requests": 0, "sent": 0, "cached": 0, "invalid_answers": 0,
                           "gave_up": 0, "retries": 0}, "an offline re-ranker sends no request"
    assert m["mode"] == "offline" and m["permutations"] == 1 and m["price_factor"] == 1.0 and m["cost_usd"] == 0
    assert m["tokens"] == {} and m["model_versions"] == {}
    for rule in ("weighted", "reranker", "rrf"):
        assert m[rule]["R@10"] == m["retrieval"]["R@10"] and m[rule]["n_query"] == 36
    assert m["r_at_k_ceiling"] == pytest.approx(m["retrieval"]["R@10"])
    before = retrieval_top10(npz)
    fused = answers.read_answer_txt(out / "answer_fused.txt")
    alone = answers.read_answer_txt(out / "answer_reranker.txt")
    assert [set(x) for x in fused] == [set(x) for x in before] == [set(x) for x in alone]
    assert fused != before, "k-reciprocal re-ranking should reorder some queries on this data"
    reasons = [json.loads(line) for line in (out / "reasons.jsonl").read_text().splitlines()]
    assert len(reasons) == 36 and all(r["status"] == "ok" and "k-reciprocal distance" in r["reason"] for r in reasons)
    assert [r["order"] for r in reasons] == alone
    assert not (out / "cache.jsonl").exists()  # nothing to store offline
    assert result.per_query["rank_retrieval"].tolist() == [r["true_match_rank"]["retrieval"] for r in reasons]


def test_a_prefix_of_queries_is_reranked_and_every_query_answered(outputs):
    npz = write_tiny_run(outputs, "t", buildings=10, queries_per_building=2)
    result = stage.rerank(cfg(vlm_max_queries=5, rerank_top_k=4, fusion="reranker"), show_progress=False)
    out = outputs / "t" / "rerank"
    assert result.metrics["retrieval"]["n_query"] == 5 and result.metrics["queries_total"] == 20
    fused = answers.read_answer_txt(out / "answer_fused.txt")
    before = retrieval_top10(npz)
    assert len(fused) == 20 and fused[5:] == before[5:]
    assert all(f[4:] == b[4:] and set(f[:4]) == set(b[:4]) for f, b in zip(fused, before))
    assert fused == answers.read_answer_txt(out / "answer_reranker.txt")  # fusion: reranker headlines the pure order


def test_missing_or_incomplete_features_are_named(outputs):
    with pytest.raises(FileNotFoundError, match=r"features.npz.*03_retrieval"):
        stage.rerank(cfg(), show_progress=False)
    npz = write_tiny_run(outputs, "t")
    f = dict(np.load(npz))
    del f["gallery_paths"]
    np.savez(npz, **f)
    with pytest.raises(ValueError, match=r"missing arrays \['gallery_paths'\]"):
        stage.rerank(cfg(), show_progress=False)


def test_notebook_04_runs_offline(outputs, monkeypatch, tmp_path):
    monkeypatch.setenv("VICI_HEADLESS", "1")
    write_tiny_run(outputs, "nb04", buildings=12, queries_per_building=3, distractors=3)
    text, images = execute("04_rerank.ipynb", tmp_path / "04.ipynb", run_name="nb04", reranker="kreciprocal",
                           fusion="weighted")
    assert images >= 4
    assert "different data" in text and "k-reciprocal" in text
    assert (outputs / "nb04" / "rerank" / "metrics.json").is_file()
    m = json.loads((outputs / "nb04" / "rerank" / "metrics.json").read_text())
    assert "This run re-ranked with k-reciprocal" in text and "lower meaning closer" in text, \
        "the re-ranker the run used, and how to read its reasons"
    assert "The rule this run reports is 'weighted', set by the fusion parameter" in text
    assert "rank 1 (" in text and f"{m['weighted']['R@1'] - m['retrieval']['R@1']:+.2f} points of R@1" in text, \
        "the run's own stage-2 change, in queries and points"
    assert "Over seeds, the `vlms` sweep (recorded in docs/results/vlms.csv; 48 epochs (the default recipe)" in text
    assert "Same training budget as this run" in text, "the recipe is said (a shorter one: test_results_record)"


# --- fusion: validation (issue 19): the reported rule is chosen on the held-out buildings, never on test -----------
class OracleReranker:
    """Knows the truth: puts each query's true tile first among its top k (last when `reverse`)."""
    name = "oracle"
    reverse = False

    def __init__(self, cfg):
        pass

    @staticmethod
    def describe(cfg) -> str:
        return "oracle (a test re-ranker)"

    def check(self, job):
        pass

    def rerank(self, job):
        f = job.features
        orders = []
        for q in range(len(job.ranking)):
            hit = [f["gallery_ids"][g] == f["query_ids"][q] for g in job.ranking[q, :job.k]]
            order = sorted(range(job.k), key=lambda i: not hit[i])
            orders.append(order[::-1] if self.reverse else order)
        return Reranked(outcomes_from_orders(job, orders, ["oracle"] * len(orders), "oracle"), "oracle")


class ReverseOracleReranker(OracleReranker):
    reverse = True


def _with_validation(outputs, test_seed: int = 0):
    """Run 't' with test features (seed test_seed) and validation features from another tiny world."""
    write_tiny_run(outputs, "val_source", buildings=12, queries_per_building=2, seed=7)
    write_tiny_run(outputs, "t", buildings=12, queries_per_building=2, seed=test_seed)
    (outputs / "val_source" / "retrieval" / "features.npz").rename(outputs / "t" / "retrieval" / "val_features.npz")


@pytest.mark.parametrize("reranker, expected", [("oracle", "reranker"), ("reverse_oracle", None)])
def test_fusion_validation_reports_the_rule_best_on_the_held_out_buildings(outputs, monkeypatch, reranker, expected):
    monkeypatch.setitem(RERANKERS, "oracle", "tests.test_rerank_stage:OracleReranker")
    monkeypatch.setitem(RERANKERS, "reverse_oracle", "tests.test_rerank_stage:ReverseOracleReranker")
    chosen = []
    for test_seed in (0, 1):  # other test data, same validation data: the same choice
        _with_validation(outputs, test_seed)
        cfg = validate({"run_name": "t", "fusion": "validation"}).model_copy(update={"reranker": reranker})
        m = stage.rerank(cfg, show_progress=False).metrics
        chosen.append(m["fusion_chosen"])
        val = m["fusion_chosen"]["validation"]
        assert m["fusion_chosen"]["on"] == "validation" and m["fusion_chosen"]["queries"] == 24
        assert m["headline"] == m["fusion_chosen"]["rule"]
        assert val[m["headline"]]["R@1"] == max(val[rule]["R@1"] for rule in fusion.FUSIONS)
        out = outputs / "t" / "rerank"
        fused = answers.read_answer_txt(out / "answer_fused.txt")
        assert (fused == answers.read_answer_txt(out / "answer_reranker.txt")) == (m["headline"] == "reranker")
    assert chosen[0] == chosen[1]
    if expected:
        assert chosen[0]["rule"] == expected
    else:  # the re-ranker's own order is the worst rule here: never chosen
        assert chosen[0]["rule"] != "reranker" and val["reranker"]["R@1"] < val["retrieval"]["R@1"]


def test_fusion_validation_without_validation_features_says_what_to_run(outputs):
    write_tiny_run(outputs, "t", buildings=6, queries_per_building=1)
    with pytest.raises(RerankError, match=r"val_features.npz: no validation features.*notebook 03"):
        stage.rerank(validate({"run_name": "t", "fusion": "validation"}), show_progress=False)
    assert not (outputs / "t" / "rerank").exists(), "checked before any work"
    with pytest.raises(ParamsError, match="val_fraction is 0"):
        validate({"fusion": "validation", "val_fraction": 0})
    with pytest.raises(ParamsError, match="vlm_mode: batch .* cannot choose the fusion rule"):
        validate({"fusion": "validation", "vlm_mode": "batch"})


@pytest.mark.parametrize("backend", ["gemini", "openai"])
def test_a_run_of_unusable_answers_fails_and_a_fixed_rerun_asks_again(tiny, server, backend):
    """Issue 12 (2): a run of unusable answers fails; a fixed rerun asks again."""
    server.always = "empty"  # 200, finish STOP, no text: every answer unusable
    with pytest.raises(RerankError, match=r"4 of 4 re-ranked queries .*empty: 4.*vlm_max_fallback_share") as e:
        rerank(config(backend, server.url, vlm_stop_after_unusable=100))  # the share rule, not the early stop
    assert "failed" in str(e.value)
    out = rerank_dir(tiny)
    assert not (out / "metrics.json").exists() and not (out / "answer_fused.txt").exists()
    failed = [json.loads(x) for x in (out / "failed" / "reasons.jsonl").read_text().splitlines()]
    assert [x["status"] for x in failed] == ["fallback"] * 4  # kept apart, for inspection
    stored = [json.loads(x) for x in (out / "cache.jsonl").read_text().splitlines()]
    assert len(stored) == 12 and not any(x["ok"] for x in stored)  # 3 tries each, kept for the record

    server.always, sent = None, len(server.seen)  # the server is fixed: the same requests are asked again
    m = rerank(config(backend, server.url)).metrics
    assert len(server.seen) == sent + 4 and m["counts"]["ok"] == 4 and m["counts"]["sent"] == 4
    assert (out / "metrics.json").is_file() and not (out / "failed").exists()


def test_fallbacks_within_the_accepted_share_only_warn(tiny, server, caplog):
    """Issue 12 (2): fallbacks within vlm_max_fallback_share only warn."""
    server.always = "duplicates"
    with caplog.at_level(logging.WARNING, logger="vici_utils.rerank"):
        m = rerank(config("gemini", server.url, vlm_max_fallback_share=1.0, vlm_stop_after_unusable=100)).metrics
    assert m["counts"]["fallback"] == 4 and m["fallback_reasons"] == {"bad_ranking": 4}
    assert any("4 of 4 re-ranked queries" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    assert (rerank_dir(tiny) / "answer_fused.txt").is_file()


def test_a_failed_setup_leaves_finished_results_byte_identical(tiny, server, monkeypatch):
    """Issue 12 (6): a failed set-up leaves finished results alone."""
    rerank(config("gemini", server.url))
    before, sent = snapshot(tiny), len(server.seen)

    monkeypatch.delenv("GEMINI_API_KEY")
    with pytest.raises(RerankError, match="GEMINI_API_KEY or GOOGLE_API_KEY"):
        rerank(config("gemini", server.url, vlm_model="other"))
    assert snapshot(tiny) == before
    monkeypatch.setenv("GEMINI_API_KEY", KEY)

    with pytest.raises(RerankError, match="vlm_base_url 'ftp://example.org' is not an http"):
        rerank(config("gemini", "ftp://example.org"))
    (tiny / "t_images" / "sat0001.jpg").unlink()
    with pytest.raises(RerankError, match=r"1 image\(s\) .* missing, e.g. .*sat0001.jpg"):
        rerank(config("gemini", server.url, vlm_model="other"))
    (tiny / "t" / "retrieval" / "features.npz").unlink()
    with pytest.raises(FileNotFoundError, match="features.npz"):
        rerank(config("gemini", server.url, vlm_model="other"))
    assert snapshot(tiny) == before and len(server.seen) == sent  # nothing asked, nothing replaced
    assert not list(rerank_dir(tiny).glob(".staging-*"))


def test_results_are_replaced_whole_by_a_complete_run(tiny, server):
    """Issue 12 (6): results are replaced whole by a complete run."""
    rerank(config("gemini", server.url))
    before = snapshot(tiny)
    rerank(config("gemini", server.url, rerank_top_k=3))
    after = snapshot(tiny)
    assert all(after[name] != before[name] for name in ("reasons.jsonl", "metrics.json"))
    assert json.loads(after["metrics.json"])["top_k"] == 3
    assert sorted(p.name for p in rerank_dir(tiny).iterdir()) == sorted(RESULTS)
