"""The official University-1652 metric (hand-computed cases and a reference loop) and faiss search."""
import numpy as np
import pytest

from vici_utils import metrics


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def scores_to_features(scores):
    """Query/gallery features whose inner products equal `scores` (rows of scores in [-1, 1]) up to float error:
    gallery = identity basis (+ one spare axis), query = scores row + the remainder on the spare axis."""
    s = np.asarray(scores, dtype=np.float64)
    nq, ng = s.shape
    g = np.eye(ng + 1, dtype=np.float64)[:ng]
    q = np.concatenate([s, np.sqrt(np.clip(1 - (s ** 2).sum(1, keepdims=True), 0, None))], axis=1)
    return q.astype(np.float32), g.astype(np.float32)


def all_ways(scores, qids, gids, protocol="official"):
    """The three entry points must agree on every number; return one of them."""
    s = np.asarray(scores, dtype=np.float32)
    a = metrics.evaluate_scores(s, qids, gids, protocol)
    b = metrics.evaluate_ranking(metrics.rank_scores(s), qids, gids, protocol)
    for key in ("R@1", "R@5", "R@10", "AP", "R@top1%", "n_query", "n_gallery", "n_query_no_match", "protocol"):
        assert a[key] == pytest.approx(b[key]), key
    np.testing.assert_array_equal(a["first_match_rank"], b["first_match_rank"])
    np.testing.assert_allclose(a["cmc"], b["cmc"])
    np.testing.assert_allclose(a["ap"], b["ap"])
    return a


# --- hand-computed cases ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("r", [1, 2, 3, 7])
def test_single_good_match_ap_is_trapezoid_one_over_2r(r):
    ng = 10
    gids = [f"{i:04d}" for i in range(ng)]
    scores = np.linspace(0.9, 0.0, ng)[None, :]  # gallery index i is ranked i + 1
    m = all_ways(scores, [gids[r - 1]], gids)
    assert m["AP"] == pytest.approx(100.0 if r == 1 else 100.0 / (2 * r))
    assert m["first_match_rank"].tolist() == [r]
    assert m["R@1"] == (100.0 if r == 1 else 0.0)
    assert m["R@5"] == (100.0 if r <= 5 else 0.0)
    assert m["R@10"] == 100.0
    assert m["cmc"].tolist() == [0.0] * (r - 1) + [100.0] * (ng - r + 1)


def test_multiple_good_matches_follow_compute_map():
    gids = ["a", "b", "a", "c"]  # the goods of query "a" come 1st and 3rd
    m = all_ways([[0.9, 0.8, 0.7, 0.1]], ["a"], gids)
    # i=0 at r=0: (1 + 1)/2; i=1 at r=2: (1/2 + 2/3)/2; each weighted 1/2
    assert m["AP"] == pytest.approx(100 * (1.0 + (0.5 + 2 / 3) / 2) / 2)
    assert m["first_match_rank"].tolist() == [1]


def test_junk_is_removed_before_ranking():
    scores = [[0.9, 0.8, 0.7]]
    with_junk = all_ways(scores, ["b"], [-1, None, "b"])  # both junk images score higher than the good match
    assert with_junk["first_match_rank"].tolist() == [1] and with_junk["R@1"] == 100.0 and with_junk["AP"] == 100.0
    assert with_junk["n_gallery"] == 1
    without = all_ways(scores, ["b"], ["x", "y", "b"])
    assert without["first_match_rank"].tolist() == [3] and without["AP"] == pytest.approx(100 / 6)


def test_distractors_compete_officially_and_only_a_named_protocol_drops_them():
    gids = ["d1", "a", "b", "d2"]  # d1, d2: distractor buildings, no query asks for them
    scores = [[0.9, 0.8, 0.1, 0.0], [0.9, 0.1, 0.0, 0.8]]
    official = all_ways(scores, ["a", "b"], gids)
    dropped = all_ways(scores, ["a", "b"], gids, protocol="distractors_dropped")
    assert official["protocol"] == "official" and dropped["protocol"] == "distractors_dropped"
    assert official["first_match_rank"].tolist() == [2, 4]
    assert dropped["first_match_rank"].tolist() == [1, 2]
    assert official["n_gallery"] == 4 and dropped["n_gallery"] == 2
    assert official["R@1"] == 0.0 and dropped["R@1"] == 50.0
    with pytest.raises(ValueError, match="protocol"):
        metrics.evaluate_scores(np.asarray(scores, np.float32), ["a", "b"], gids, protocol="easy")


def test_ties_rank_the_lower_gallery_index_first():
    gids = ["x", "a", "y", "b"]
    scores = [[0.5, 0.5, 0.2, 0.5]]  # x, a and b tie
    assert metrics.rank_scores(scores).tolist() == [[0, 1, 3, 2]]
    assert all_ways(scores, ["a"], gids)["first_match_rank"].tolist() == [2]
    assert all_ways(scores, ["b"], gids)["first_match_rank"].tolist() == [3]
    assert all_ways(scores, ["x"], gids)["first_match_rank"].tolist() == [1]
    assert metrics.rank_scores([[0.0, -0.0, 0.1]]).tolist() == [[2, 0, 1]]  # -0.0 ties with 0.0


def test_query_whose_building_is_absent_counts_as_a_miss():
    gids = ["a", "b", "c"]
    m = all_ways([[0.9, 0.1, 0.0], [0.9, 0.8, 0.7]], ["a", "zzz"], gids)
    assert m["n_query"] == 2 and m["n_query_no_match"] == 1
    assert m["first_match_rank"].tolist() == [1, 0]
    assert m["ap"].tolist() == [100.0, 0.0]
    assert m["R@1"] == 50.0 and m["R@10"] == 50.0 and m["AP"] == 50.0


def test_recall_at_top1_percent_is_official_cmc_index():
    ng = 951
    gids = [f"{i:04d}" for i in range(ng)]
    scores = np.linspace(1.0, 0.0, ng)[None, :]
    m = all_ways(scores, [gids[10]], gids)  # first match at rank 11 = CMC[10] = CMC[round(9.51)]
    assert m["R@10"] == 0.0 and m["R@top1%"] == 100.0
    m = all_ways(scores, [gids[11]], gids)
    assert m["R@top1%"] == 0.0


def test_small_gallery_recall_at_10_uses_the_whole_list():
    m = all_ways([[0.1, 0.9, 0.5]], ["c"], ["a", "b", "c"])
    assert m["R@1"] == 0.0 and m["R@5"] == 100.0 and m["R@10"] == 100.0


# --- agreement with the reference loop ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("protocol", metrics.PROTOCOLS)
def test_vectorised_metric_equals_reference_loop(seed, protocol):
    rng = np.random.default_rng(seed)
    nq, ng = 120, 80
    gids = [None if r < 0.05 else ("-1" if r < 0.1 else f"{rng.integers(0, 40):04d}") for r in rng.random(ng)]
    qids = [f"{i:04d}" for i in rng.integers(0, 45, nq)]  # some buildings have no gallery image
    scores = np.round(rng.uniform(-1, 1, (nq, ng)), 2).astype(np.float32)  # coarse: many ties
    cmc, ap = metrics.evaluate_loop(lambda i: scores[i], qids, gids, protocol)
    m = all_ways(scores, qids, gids, protocol)
    np.testing.assert_allclose(m["cmc"], cmc)
    assert m["AP"] == pytest.approx(ap)
    assert m["n_query_no_match"] > 0

    q, g = scores_to_features(np.clip(scores, -0.1, 0.1))
    f = metrics.evaluate(q, g, qids, gids, protocol)
    cmc, ap = metrics.evaluate_loop(lambda i: g @ q[i], qids, gids, protocol)
    np.testing.assert_allclose(f["cmc"], cmc)
    assert f["AP"] == pytest.approx(ap)


def test_infinite_scores_rank_like_any_other():
    scores = np.array([[np.inf, 0.5, -np.inf], [np.inf, 0.5, -np.inf], [np.inf, np.inf, 0.0]], np.float32)
    m = metrics.evaluate_scores(scores, ["a", "c", "b"], ["a", "b", "c"])
    assert m["first_match_rank"].tolist() == [1, 3, 2]  # the tie of two +inf goes to the lower index


def test_evaluate_equals_full_ranking_then_evaluate_ranking():
    rng = np.random.default_rng(7)
    q, g = unit(rng.standard_normal((300, 32))), unit(rng.standard_normal((90, 32)))
    gids = [f"{i:04d}" for i in range(90)]
    qids = [gids[i] for i in rng.integers(0, 60, 300)]
    a = metrics.evaluate(q, g, qids, gids)
    b = metrics.evaluate_ranking(metrics.full_ranking(q, g), qids, gids)
    np.testing.assert_array_equal(a["first_match_rank"], b["first_match_rank"])
    assert a["AP"] == pytest.approx(b["AP"])
    ranking = metrics.full_ranking(q, g)
    np.testing.assert_array_equal(ranking, np.argsort(-(q @ g.T), axis=1, kind="stable"))
    assert ranking.dtype == np.int64
    assert set(metrics.scalars(a)) >= {"R@1", "R@5", "R@10", "AP", "R@top1%", "n_query", "n_gallery", "protocol"}
    assert not any(isinstance(v, np.ndarray) for v in metrics.scalars(a).values())


# --- bad input ----------------------------------------------------------------------------------------------------

def test_bad_inputs_say_what_was_expected():
    rng = np.random.default_rng(0)
    q, g = unit(rng.standard_normal((4, 8))), unit(rng.standard_normal((5, 8)))
    with pytest.raises(ValueError, match="L2-normalised"):
        metrics.evaluate(q * 2, g, list("abcd"), list("abcde"))
    with pytest.raises(ValueError, match="finite"):
        metrics.evaluate(np.full((4, 8), np.nan), g, list("abcd"), list("abcde"))
    with pytest.raises(ValueError, match="dim"):
        metrics.evaluate(q, unit(rng.standard_normal((5, 9))), list("abcd"), list("abcde"))
    with pytest.raises(ValueError, match="query ids"):
        metrics.evaluate(q, g, list("abc"), list("abcde"))
    with pytest.raises(ValueError, match="shape"):
        metrics.evaluate_ranking(np.zeros((4, 3), np.int64), list("abcd"), list("abcde"))
    dup = np.tile(np.arange(5), (4, 1))
    dup[0] = [1, 1, 2, 3, 4]  # gallery 0 ("a") missing from row 0, so query "a" finds no good match there
    with pytest.raises(ValueError, match="permutation"):
        metrics.evaluate_ranking(dup, list("abcd"), list("abcde"))
    with pytest.raises(ValueError, match="NaN"):
        metrics.evaluate_scores(np.array([[0.1, np.nan]], np.float32), ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):  # in the good match's own column
        metrics.evaluate_scores(np.array([[0.3, 0.1], [np.nan, 0.1]], np.float32), ["a", "a"], ["a", "b"])
    with pytest.raises(ValueError, match="all junk"):
        metrics.evaluate_scores(np.array([[0.1, 0.2]], np.float32), ["a"], [None, -1])


# --- search -------------------------------------------------------------------------------------------------------

def test_flat_search_equals_numpy_top_k():
    rng = np.random.default_rng(3)
    q, g = unit(rng.standard_normal((50, 16))), unit(rng.standard_normal((200, 16)))
    scores, indices = metrics.search(q, g, 10)
    assert scores.dtype == np.float32 and indices.dtype == np.int64 and indices.shape == (50, 10)
    s = q @ g.T
    np.testing.assert_array_equal(indices, np.argsort(-s, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(s, indices, 1), atol=1e-5)
    _, all_of_them = metrics.search(q, g, 500)  # k beyond the gallery is clamped
    assert all_of_them.shape == (50, 200)


def test_hnsw_search_finds_the_exact_neighbours_on_a_small_gallery():
    rng = np.random.default_rng(4)
    q, g = unit(rng.standard_normal((40, 16))), unit(rng.standard_normal((500, 16)))
    _, exact = metrics.search(q, g, 5)
    _, approx = metrics.search(q, g, 5, index="hnsw")
    assert np.mean([len(set(a) & set(b)) for a, b in zip(exact, approx)]) / 5 > 0.9
    with pytest.raises(ValueError, match="flat"):
        metrics.search(q, g, 5, index="ivf")


# --- blockwise over the gallery (issue 24) ------------------------------------------------------------------------

@pytest.mark.parametrize("gallery_block", [1, 7, 64])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("protocol", metrics.PROTOCOLS)
def test_gallery_blocks_give_the_same_metric_as_one_block(gallery_block, seed, protocol):
    """Ties (coarse scores), junk and queries without a match, split across gallery blocks of any size."""
    rng = np.random.default_rng(seed)
    nq, ng = 120, 80
    gids = [None if r < 0.05 else ("-1" if r < 0.1 else f"{rng.integers(0, 40):04d}") for r in rng.random(ng)]
    qids = [f"{i:04d}" for i in rng.integers(0, 45, nq)]
    q, g = scores_to_features(np.round(rng.uniform(-0.1, 0.1, (nq, ng)), 2))
    whole = metrics.evaluate(q, g, qids, gids, protocol)
    split = metrics.evaluate(q, g, qids, gids, protocol, gallery_block=gallery_block)
    for key in ("R@1", "R@5", "R@10", "AP", "R@top1%"):
        assert split[key] == pytest.approx(whole[key], abs=1e-6), key
    np.testing.assert_array_equal(split["first_match_rank"], whole["first_match_rank"])
    np.testing.assert_allclose(split["ap"], whole["ap"], atol=1e-6)
    cmc, ap = metrics.evaluate_loop(lambda i: g @ q[i], qids, gids, protocol)
    np.testing.assert_allclose(split["cmc"], cmc, atol=1e-6)
    assert split["AP"] == pytest.approx(ap, abs=1e-6)


def test_a_100k_gallery_blockwise_equals_the_brute_force_reference(tmp_path):
    """100,000 tiles (2 % junk, clustered so near-ties are common), float32 in memory and float16 memory-mapped,
    against the per-query argsort of the official evaluator on the full score rows."""
    rng = np.random.default_rng(24)
    ng, nq, dim = 100_000, 60, 32
    centres = unit(rng.standard_normal((50, dim)))
    g = unit(centres[rng.integers(0, 50, ng)] + 0.3 * rng.standard_normal((ng, dim)).astype(np.float32))
    gids = [f"{i:06d}" for i in range(ng)]
    for i in rng.choice(ng, ng // 50, replace=False):
        gids[i] = None
    truth = rng.integers(0, ng, nq)
    q = unit(g[truth] + 0.2 * rng.standard_normal((nq, dim)).astype(np.float32))
    qids = [gids[i] or "absent" for i in truth]
    m = metrics.evaluate(q, g, qids, gids, gallery_block=1 << 14)
    cmc, ap = metrics.evaluate_loop(lambda i: g @ q[i], qids, gids)
    np.testing.assert_allclose(m["cmc"], cmc, atol=1e-6)
    assert m["AP"] == pytest.approx(ap, abs=1e-6)
    assert 0 < m["R@1"] < 100 and m["n_gallery"] == ng - ng // 50

    path = tmp_path / "gallery.f16.npy"
    np.save(path, g.astype(np.float16))
    g16 = np.load(path, mmap_mode="r")
    m16 = metrics.evaluate(q, g16, qids, gids, gallery_block=1 << 14)
    g16f = np.asarray(g16, np.float32)
    cmc16, ap16 = metrics.evaluate_loop(lambda i: g16f @ q[i], qids, gids)
    np.testing.assert_allclose(m16["cmc"], cmc16, atol=1e-6)
    assert m16["AP"] == pytest.approx(ap16, abs=1e-6)
