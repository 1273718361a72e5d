"""Compressed search (issue 24): index_factory indexes trained on a sample, saved and reused; exact re-scoring."""
import numpy as np
import pytest

from vici_utils import metrics, search


def clustered(n, dim, seed, centres=20, spread=0.3):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def data():
    g = clustered(3000, 32, 0)
    rng = np.random.default_rng(1)
    truth = rng.integers(0, len(g), 80)
    q = g[truth] + 0.1 * rng.standard_normal((80, 32)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True), g


def test_rescored_ivf_pq_top_10_is_the_exact_top_10_with_exact_scores(data, tmp_path):
    q, g = data
    exact_s, exact_i = metrics.search(q, g, 10)
    s, i = search.top_k(q, g, 10, "IVF16,PQ8x4", nprobe=16, rescore_k=200, folder=tmp_path)
    np.testing.assert_array_equal(i, exact_i)  # every list visited, 200 candidates: the exact top 10
    np.testing.assert_allclose(s, exact_s, atol=1e-5)
    # without re-scoring, PQ's approximate scores order the list: not the exact ranking
    _, raw = search.top_k(q, g, 10, "IVF16,PQ8x4", nprobe=16, folder=tmp_path)
    assert (raw != exact_i).any()


def test_an_index_is_saved_and_reused_only_for_the_same_features(data, tmp_path):
    q, g = data
    search.top_k(q, g, 10, "IVF16,PQ8x4", folder=tmp_path)
    saved = list(tmp_path.glob("index-IVF16_PQ8x4-*.faiss"))
    assert len(saved) == 1
    stamp = saved[0].stat().st_mtime_ns
    search.top_k(q, g, 10, "IVF16,PQ8x4", folder=tmp_path)
    assert saved[0].stat().st_mtime_ns == stamp and len(list(tmp_path.glob("*.faiss"))) == 1
    g2 = g.copy()
    g2[[0, 1]] = g2[[1, 0]]
    search.top_k(q, g2, 10, "IVF16,PQ8x4", folder=tmp_path)
    assert len(list(tmp_path.glob("*.faiss"))) == 2


def test_a_float16_memory_mapped_gallery_gives_the_same_candidates(data, tmp_path):
    q, g = data
    np.save(tmp_path / "g.npy", g.astype(np.float16))
    g16 = np.load(tmp_path / "g.npy", mmap_mode="r")
    _, i16 = search.top_k(q, g16, 10, "IVF16,Flat", nprobe=16, rescore_k=50)
    _, exact = metrics.search(q, np.asarray(g16, np.float32) / np.linalg.norm(np.asarray(g16, np.float32), axis=1,
                                                                               keepdims=True), 10)
    assert np.mean(i16[:, 0] == exact[:, 0]) > 0.95


def test_rescoring_a_float16_memmap_in_blocks_equals_rescoring_its_float32_copy(data, tmp_path):
    """The float16 path converts through a float32 buffer reused across blocks of queries: every block must see
    its own rows, not the previous block's."""
    q, g = data
    np.save(tmp_path / "g.npy", g.astype(np.float16))
    g16 = np.load(tmp_path / "g.npy", mmap_mode="r")
    cand = np.random.default_rng(3).integers(-1, len(g), (len(q), 40))
    s16, i16 = search.rescore(q, g16, cand, 10, rows=7)   # 80 queries: 12 blocks, the last one short
    s32, i32 = search.rescore(q, np.asarray(g16, np.float32), cand, 10, rows=80)
    np.testing.assert_array_equal(i16, i32)
    np.testing.assert_array_equal(s16, s32)


def test_training_sample_size_follows_the_lists_and_pq():
    import faiss

    ivf = faiss.index_factory(64, "IVF4096,PQ8", faiss.METRIC_INNER_PRODUCT)
    assert search.train_size(ivf, 10 ** 6) == 64 * 4096
    assert search.train_size(ivf, 10_000) == 10_000
    small = faiss.index_factory(64, "IVF16,PQ8x4", faiss.METRIC_INNER_PRODUCT)
    assert search.train_size(small, 10 ** 6) == search.MIN_SAMPLE
    assert search.train_size(faiss.IndexFlatIP(64), 10 ** 6) == 0


def test_rescore_handles_missing_candidates_and_ties():
    g = np.eye(4, dtype=np.float32)[[0, 0, 1, 2]]  # rows 0 and 1 tie for every query
    q = np.eye(4, dtype=np.float32)[[0]]
    s, i = search.rescore(q, g, np.array([[3, 1, -1, 0]]), 3)
    assert i.tolist() == [[0, 1, 3]] and s[0, :2].tolist() == [1.0, 1.0]
    s, i = search.rescore(q, g, np.array([[2, -1]]), 2)
    assert i.tolist() == [[2, -1]] and s[0, 1] == -np.inf


def test_a_bad_factory_string_names_the_key():
    with pytest.raises(ValueError, match="faiss_index.*IVF16,PQ7"):
        search.check_spec("IVF16,PQ7", 32)
