"""Tests for evaluation/: hand-computed cases, a ranx cross-check, segments, top-K retrievers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from evaluation import (
    EvaluationError,
    RankingEvaluator,
    coverage,
    evaluate_retriever,
    long_tail_share,
    metrics_from_ranks,
    target_ranks,
    topk_indices,
)

# item:            0    1    2    3    4
FIVE = np.array([[0.9, 0.5, 0.7, 0.1, 0.3]])


def _by_hand(rank: int, k: int) -> tuple[float, float]:
    """(recall@k, ndcg@k) of one example at a 0-based rank, from the definitions."""
    return (1.0, 1.0 / math.log2(rank + 2)) if rank < k else (0.0, 0.0)


# ---- hand-computed cases ----------------------------------------------------------------------

def test_five_item_ranks_and_metrics_by_hand() -> None:
    # target 1 (0.5) is behind items 0 (0.9) and 2 (0.7): rank 2
    rank = target_ranks(FIVE, np.array([1]))
    assert rank.tolist() == [2]
    got = metrics_from_ranks(rank, ks=(1, 2, 3), ndcg_ks=(2, 3))
    assert got["recall_at_1"] == 0.0 and got["recall_at_2"] == 0.0 and got["recall_at_3"] == 1.0
    assert got["ndcg_at_2"] == 0.0
    assert got["ndcg_at_3"] == pytest.approx(0.5)  # 1 / log2(2 + 2)
    assert got["mrr"] == pytest.approx(1 / 3)
    assert got["count"] == 1


def test_masking_history_item_ranked_above_target_improves_rank() -> None:
    targets = np.array([1])
    assert target_ranks(FIVE, targets, [np.array([0])]).tolist() == [1]  # item 0 was above
    assert target_ranks(FIVE, targets, [np.array([0, 2])]).tolist() == [0]
    assert target_ranks(FIVE, targets, [np.array([3, 4])]).tolist() == [2]  # below: no change
    got = metrics_from_ranks(target_ranks(FIVE, targets, [np.array([0])]), ks=(2,), ndcg_ks=(2,))
    assert got["recall_at_2"] == 1.0
    assert got["ndcg_at_2"] == pytest.approx(1 / math.log2(3))
    assert got["mrr"] == pytest.approx(0.5)


def test_target_in_history_stays_rankable() -> None:
    # the history holds the target itself (a re-purchase) and item 0: only item 0 is masked
    assert target_ranks(FIVE, np.array([1]), [np.array([1, 0])]).tolist() == [1]
    top = topk_indices(FIVE, 5, [np.array([0])])
    assert top.tolist() == [[2, 1, 4, 3, -1]]  # masked item gone, padding where it was


def test_ties_break_by_lower_item_index() -> None:
    tied = np.array([[0.5, 0.5, 0.9, 0.5, 0.1]])
    ranks = [int(target_ranks(tied, np.array([t]))[0]) for t in range(5)]
    assert ranks == [1, 2, 0, 3, 4]
    assert topk_indices(tied, 5).tolist() == [[2, 0, 1, 3, 4]]
    assert topk_indices(tied, 2).tolist() == [[2, 0]]  # the cut falls inside the tie
    # masking the lower-index tied item lets the target move up
    assert target_ranks(tied, np.array([3]), [np.array([0])]).tolist() == [2]


def test_metrics_from_ranks_by_hand() -> None:
    ranks = np.array([0, 2, 9, 10, 49, 50])
    got = metrics_from_ranks(ranks)
    for k in (10, 20, 50):
        assert got[f"recall_at_{k}"] == pytest.approx(np.mean([_by_hand(r, k)[0] for r in ranks]))
    assert got["recall_at_10"] == pytest.approx(3 / 6)
    assert got["recall_at_50"] == pytest.approx(5 / 6)
    assert got["ndcg_at_10"] == pytest.approx((1 + 0.5 + 1 / math.log2(11)) / 6)
    assert got["ndcg_at_20"] == pytest.approx((1 + 0.5 + 1 / math.log2(11) + 1 / math.log2(12)) / 6)
    assert got["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 10 + 1 / 11 + 1 / 50 + 1 / 51) / 6)
    assert got["count"] == 6
    assert set(got) == {"recall_at_10", "recall_at_20", "recall_at_50", "ndcg_at_10",
                        "ndcg_at_20", "mrr", "count"}


def test_metrics_not_retrieved_and_truncated_lists() -> None:
    got = metrics_from_ranks(np.array([0, -1, 3]), ks=(1, 5, 10), ndcg_ks=(5,), list_size=5)
    assert got["recall_at_1"] == pytest.approx(1 / 3)
    assert got["recall_at_5"] == pytest.approx(2 / 3)
    assert math.isnan(got["recall_at_10"])  # unknowable beyond the list
    assert got["mrr"] == pytest.approx((1 + 0 + 1 / 4) / 3)  # MRR@5
    empty = metrics_from_ranks(np.zeros(0, dtype=np.int64))
    assert empty["count"] == 0 and math.isnan(empty["mrr"])


def test_coverage_and_long_tail_share_by_hand() -> None:
    assert coverage(np.array([[0, 1], [1, 2]]), 5) == pytest.approx(3 / 5)
    assert coverage(np.array([[0, -1], [0, -1]]), 4) == pytest.approx(1 / 4)
    tail = np.array([False, False, True, True, False])
    assert long_tail_share(np.array([[0, 2], [3, 2]]), tail) == pytest.approx(3 / 4)
    assert long_tail_share(np.array([[0, -1], [4, 2]]), tail) == pytest.approx(1 / 3)


# ---- topk consistency -------------------------------------------------------------------------

def test_topk_matches_stable_argsort_and_ranks_with_ties_and_masks() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(30, 40)).astype(np.float32)  # many ties
    history = [rng.choice(40, size=rng.integers(0, 8), replace=False) for _ in range(30)]
    top = topk_indices(scores, 12, history)
    for row in range(30):
        order = np.argsort(-scores[row], kind="stable")
        expected = [i for i in order if i not in set(history[row].tolist())][:12]
        assert top[row].tolist() == expected
        # the item at position p has rank p under the same mask
        for pos, item in enumerate(top[row]):
            rank = target_ranks(scores[row:row + 1], np.array([item]), [history[row]])
            assert int(rank[0]) == pos


# ---- ranx cross-check -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ranx_case() -> dict:
    """200 random queries x 300 items scored by ranx (imported once: numba compiles slowly)."""
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(7)
    n_queries, n_items = 200, 300
    scores = rng.random((n_queries, n_items))
    targets = rng.integers(0, n_items, size=n_queries)
    history = [rng.choice(n_items, size=20, replace=False) for _ in range(n_queries)]
    names = ["recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@20", "mrr"]

    def run_ranx(masked: bool) -> dict[str, float]:
        qrels = ranx.Qrels({f"q{q}": {f"d{targets[q]}": 1} for q in range(n_queries)})
        run = {}
        for q in range(n_queries):
            drop = set(history[q].tolist()) - {int(targets[q])} if masked else set()
            run[f"q{q}"] = {f"d{i}": float(scores[q, i]) for i in range(n_items) if i not in drop}
        return ranx.evaluate(qrels, ranx.Run(run), names)

    return {"scores": scores, "targets": targets, "history": history,
            "unmasked": run_ranx(False), "masked": run_ranx(True)}


@pytest.mark.filterwarnings("ignore:unsafe cast")
@pytest.mark.parametrize("view", ["unmasked", "masked"])
def test_metrics_agree_with_ranx(ranx_case: dict, view: str) -> None:
    history = ranx_case["history"] if view == "masked" else None
    ranks = target_ranks(ranx_case["scores"], ranx_case["targets"], history)
    ours = metrics_from_ranks(ranks)
    theirs = ranx_case[view]
    for k in (10, 20, 50):
        assert ours[f"recall_at_{k}"] == pytest.approx(theirs[f"recall@{k}"], abs=1e-6)
    for k in (10, 20):
        assert ours[f"ndcg_at_{k}"] == pytest.approx(theirs[f"ndcg@{k}"], abs=1e-6)
    assert ours["mrr"] == pytest.approx(theirs["mrr"], abs=1e-6)
    assert 0 < ours["recall_at_50"] < 1  # a non-degenerate case


# ---- the evaluator ----------------------------------------------------------------------------

def _random_batch(seed: int, rows: int = 80, n_items: int = 120) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "scores": rng.normal(size=(rows, n_items)).astype(np.float32),
        "targets": rng.integers(0, n_items, size=rows),
        "history": [rng.choice(n_items, size=rng.integers(0, 15), replace=False)
                    for _ in range(rows)],
        "segments": {"user": rng.choice(["cold_user", "warm_user", "new_user"], rows).tolist(),
                     "target": rng.choice(["head", "long_tail", "new"], rows).tolist()},
    }


def _tail_mask(n_items: int = 120) -> np.ndarray:
    return np.arange(n_items) % 3 == 0


def test_segment_metrics_equal_metrics_on_their_rows_alone() -> None:
    batch = _random_batch(1)
    evaluator = RankingEvaluator(120, _tail_mask())
    half = 37  # two uneven batches, to exercise accumulation
    for part in (slice(0, half), slice(half, None)):
        evaluator.add(batch["scores"][part], batch["targets"][part], batch["history"][part],
                      {kind: labels[part] for kind, labels in batch["segments"].items()})
    result = evaluator.result()
    assert result["history_masked"] is True and result["truncated_at"] is None
    for view in ("masked", "unmasked"):
        overall = result[view]["overall"]
        assert overall["count"] == 80
        for kind in ("user", "target"):
            counts = [m["count"] for name, m in result[view]["by_segment"].items()
                      if name.startswith(f"{kind}=")]
            assert sum(counts) == 80 and len(counts) == 3
        label = np.array(batch["segments"]["user"])
        rows = np.flatnonzero(label == "cold_user")
        alone = RankingEvaluator(120, _tail_mask())
        alone.add(batch["scores"][rows], batch["targets"][rows],
                  [batch["history"][r] for r in rows])
        assert result[view]["by_segment"]["user=cold_user"] == alone.result()[view]["overall"]
    assert result["masked"]["overall"]["mrr"] > result["unmasked"]["overall"]["mrr"]


def test_evaluator_overall_coverage_and_tail_share_match_functions() -> None:
    batch = _random_batch(2)
    evaluator = RankingEvaluator(120, _tail_mask())
    evaluator.add(batch["scores"], batch["targets"], batch["history"])
    got = evaluator.result()["masked"]["overall"]
    top = topk_indices(batch["scores"], 10, [np.setdiff1d(h, [t]) for h, t in
                                             zip(batch["history"], batch["targets"])])
    assert got["coverage_at_10"] == pytest.approx(coverage(top, 120))
    assert got["long_tail_share_at_10"] == pytest.approx(long_tail_share(top, _tail_mask()))
    ranks = target_ranks(batch["scores"], batch["targets"], batch["history"])
    assert got["ndcg_at_20"] == pytest.approx(metrics_from_ranks(ranks)["ndcg_at_20"])


def test_evaluator_without_long_tail_mask_reports_nan_share() -> None:
    evaluator = RankingEvaluator(5, coverage_k=2)
    evaluator.add(FIVE, np.array([1]))
    got = evaluator.result()["unmasked"]["overall"]
    assert got["coverage_at_2"] == pytest.approx(2 / 5)  # items 0 and 2
    assert math.isnan(got["long_tail_share_at_2"])


def test_add_topk_agrees_with_add_when_k_covers_targets() -> None:
    batch = _random_batch(3)
    lists = topk_indices(batch["scores"], 60)
    rng = np.random.default_rng(3)
    targets = lists[np.arange(80), rng.integers(0, 60, size=80)]  # every target within top-60
    full, topk = RankingEvaluator(120, _tail_mask()), RankingEvaluator(120, _tail_mask())
    full.add(batch["scores"], targets, batch["history"], batch["segments"])
    topk.add_topk(lists, targets, batch["history"], batch["segments"])
    want, got = full.result(), topk.result()
    assert got.pop("truncated_at") == 60 and want.pop("truncated_at") is None
    assert got == want


def test_add_topk_target_outside_list_is_not_retrieved() -> None:
    evaluator = RankingEvaluator(10, coverage_k=2, ks=(1, 3, 5), ndcg_ks=(3,))
    lists = np.array([[4, 7, 1], [2, 3, 5]])
    evaluator.add_topk(lists, np.array([7, 9]), history=[np.array([4]), np.array([])])
    result = evaluator.result()
    unmasked, masked = result["unmasked"]["overall"], result["masked"]["overall"]
    assert unmasked["recall_at_1"] == 0.0 and unmasked["recall_at_3"] == 0.5
    assert math.isnan(unmasked["recall_at_5"])
    assert unmasked["mrr"] == pytest.approx((1 / 2 + 0) / 2)
    assert masked["recall_at_1"] == 0.5  # item 4 masked: target 7 moves to the top
    assert masked["coverage_at_2"] == pytest.approx(4 / 10)  # {7, 1} and {2, 3}


def test_evaluate_retriever_maps_history_and_segments() -> None:
    catalogue = ["a", "b", "c", "d", "e"]
    item_index = {item_id: i for i, item_id in enumerate(catalogue)}
    examples = pd.DataFrame({
        "hist_items": [["a", None, "zz"], [], ["b", "c"]],
        "target": ["b", "e", "c"],
        "user_segment": ["cold_user", "new_user", "cold_user"],
        "target_segment": ["head", "new", "head"],
    })
    scores = np.array([[0.9, 0.5, 0.7, 0.1, 0.3], [0.1, 0.2, 0.3, 0.4, 0.5],
                       [0.5, 0.9, 0.4, 0.8, 0.1]])
    calls: list[list[int]] = []

    def score_fn(positions: list[int]) -> np.ndarray:
        calls.append(positions)
        return scores[positions]

    tail = np.array([False, False, False, True, True])
    result = evaluate_retriever(score_fn, examples, item_index, tail, batch_size=2,
                                ks=(1, 2), ndcg_ks=(2,), coverage_k=2)
    assert calls == [[0, 1], [2]]
    manual = RankingEvaluator(5, tail, ks=(1, 2), ndcg_ks=(2,), coverage_k=2)
    manual.add(scores, np.array([1, 4, 2]), [np.array([0]), np.array([]), np.array([1, 2])],
               {"user": examples["user_segment"], "target": examples["target_segment"]})
    assert result == manual.result()
    # by hand: ranks masked [1, 0, 1] (row 0 loses 'a'; row 2 loses 'b', keeps target 'c')
    assert result["masked"]["overall"]["recall_at_1"] == pytest.approx(1 / 3)
    assert result["masked"]["by_segment"]["user=cold_user"]["count"] == 2
    plain = evaluate_retriever(score_fn, examples, item_index, tail, mask_history=False)
    assert plain["masked"] == plain["unmasked"] and plain["history_masked"] is False
    with pytest.raises(EvaluationError, match="not in item_index"):
        evaluate_retriever(score_fn, examples.assign(target=["b", "e", "zz"]), item_index, tail)


def test_accepts_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    ranks = target_ranks(torch.tensor(FIVE, requires_grad=True), torch.tensor([1]))
    assert ranks.tolist() == [2]


# ---- input validation -------------------------------------------------------------------------

@pytest.mark.parametrize(("call", "message"), [
    (lambda: target_ranks(np.zeros(5), np.array([0])), "2-D"),
    (lambda: target_ranks(FIVE, np.array([0, 1])), "one item index per score row"),
    (lambda: target_ranks(FIVE, np.array([5])), r"out of range \[0, 5\)"),
    (lambda: target_ranks(FIVE, np.array([-1])), "out of range"),
    (lambda: target_ranks(FIVE, np.array([0.0])), "integer item indices"),
    (lambda: target_ranks(np.array([[0.1, np.nan]]), np.array([0])), "NaN"),
    (lambda: target_ranks(FIVE, np.array([0]), [np.array([7])]), "excluded item index 7"),
    (lambda: target_ranks(FIVE, np.array([0]), []), "one array of item indices per row"),
    (lambda: topk_indices(FIVE, 0), "positive int"),
    (lambda: RankingEvaluator(6).add(FIVE, np.array([0])), "one column per catalogue item"),
    (lambda: RankingEvaluator(5, np.ones(4, dtype=bool)), "long_tail_mask"),
    (lambda: RankingEvaluator(5).add(FIVE, [0], segments={"user": ["a", "b"]}), "one label"),
    (lambda: RankingEvaluator(5).add_topk(np.array([[0, 0] * 5]), [0]), "repeat"),
    (lambda: RankingEvaluator(5).result(), "before any add"),
])
def test_bad_input_raises_clear_errors(call, message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        call()


def test_evaluator_refuses_mixed_batches_and_changing_segment_kinds() -> None:
    evaluator = RankingEvaluator(5, coverage_k=2)
    evaluator.add(FIVE, np.array([0]), segments={"user": ["cold_user"]})
    with pytest.raises(EvaluationError, match="same segment kinds"):
        evaluator.add(FIVE, np.array([0]))
    with pytest.raises(EvaluationError, match="use one RankingEvaluator"):
        evaluator.add_topk(np.array([[0, 1]]), np.array([0]))
