"""Fusion rules (rerank/fusion.py): the re-ranker's and the retrieval's orders combined, on hand examples."""
import numpy as np
import pytest

from vici_utils.rerank import fusion


def test_to_positions_maps_presented_slots_back():
    order = [2, 0, 3, 1]                      # slot 1 shows retrieval position 2, ...
    assert fusion.to_positions([2, 1, 4, 3], order) == [0, 2, 1, 3]


def test_mean_rank_aggregates_orders_with_retrieval_tiebreak():
    rank = fusion.mean_rank([[0, 1, 2], [1, 0, 2]], 3)  # 0 and 1 tie on mean rank 1.5: position 0 wins
    assert rank.tolist() == [1, 2, 3]
    rank = fusion.mean_rank([[2, 1, 0], [2, 0, 1], [1, 2, 0]], 3)
    assert rank.tolist() == [3, 2, 1]


def test_fusion_rules_on_a_hand_example():
    reranker_rank = np.array([[4, 3, 1, 2]])  # the model puts retrieval #3 first, retrieval #1 last
    assert fusion.fuse(reranker_rank, "reranker").tolist() == [[2, 3, 1, 0]]
    # weighted: sums 5, 5, 4, 6 -> #3, then #1 and #2 tie at 5 (retrieval order), then #4
    assert fusion.fuse(reranker_rank, "weighted").tolist() == [[2, 0, 1, 3]]
    # rrf: 1/64+1/61, 1/63+1/62, 1/61+1/63, 1/62+1/64 -> #1 (.032018), #3 (.032266)...
    scores = [1 / (60 + v) + 1 / (60 + r) for v, r in zip([4, 3, 1, 2], [1, 2, 3, 4])]
    assert fusion.fuse(reranker_rank, "rrf").tolist() == [list(np.argsort(-np.array(scores), kind="stable"))]
    with pytest.raises(ValueError, match="fusion .max. is not registered.*.weighted., .reranker., .rrf."):
        fusion.fuse(reranker_rank, "max")


def test_apply_reorders_only_the_top_k():
    ranking = np.array([[5, 3, 9, 1, 0, 2, 4, 6, 7, 8]])
    out = fusion.apply(ranking, np.array([[2, 0, 1]]))
    assert out.tolist() == [[9, 5, 3, 1, 0, 2, 4, 6, 7, 8]]


def test_fusion_rules_are_registered_with_labels():
    """Each registered rule is a labelled score function that orders a query's top K (the labels name the rows of
    notebook 04's tables, so two rules may not share one)."""
    rules = fusion.FUSIONS.load_all()
    labels = [fn.label for fn in rules.values()]
    assert all(labels) and len(set(labels)) == len(labels), labels
    reranker_rank = np.array([[3, 1, 2], [1, 2, 3]])
    for name in rules:
        order = fusion.fuse(reranker_rank, name)
        assert sorted(order[0]) == [0, 1, 2] and list(order[1]) == [0, 1, 2], name  # agreement keeps the order
    with pytest.raises(ValueError, match=r"fusion 'nonesuch' is not registered.*'weighted'"):
        fusion.fuse(reranker_rank, "nonesuch")
