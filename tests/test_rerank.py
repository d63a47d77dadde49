"""Tests of rerank/: context text, training pairs, policy and blending, model options, training.

A tiny random BERT cross-encoder is built locally (no download). Random weights score all texts
nearly alike, so semantic checks are out; the tests check shapes, determinism, the training
loop on an easy synthetic task, and save/load and int8 agreement on the trained tiny model.
"""

from __future__ import annotations

import inspect
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from recdata.schema import DataError
from rerank import (
    InGroupSoftmaxLoss,
    Reranker,
    RerankError,
    RerankPolicy,
    build_groups,
    build_train_groups,
    evaluate_groups,
    mine_negatives,
    rank_metrics,
    session_context_text,
    standardize_scores,
    train_reranker,
)

WORDS = [f"w{i}" for i in range(80)]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + ["search", "click", "view", "cart", ":", "|", "."] + WORDS


def _write_tiny_cross_encoder(path: Path, initializer_range: float = 0.02) -> Path:
    """A 2-layer, 32-wide random BERT sequence classifier with a 92-word vocabulary."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=37, num_labels=1,
                        max_position_embeddings=128, initializer_range=initializer_range)
    BertForSequenceClassification(config).save_pretrained(path)
    # transformers 5: the vocabulary is passed as `vocab=`; `vocab_file=` is silently ignored.
    BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_tiny_cross_encoder(tmp_path_factory.mktemp("tiny_cross_encoder"))


@pytest.fixture(scope="module")
def spread_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same, with 10x the init scale, so different pairs get clearly different scores."""
    return _write_tiny_cross_encoder(tmp_path_factory.mktemp("spread"), initializer_range=0.2)


def _easy_task(n: int, seed: int) -> tuple[list[tuple[str, list[str]]], list]:
    """Context words come from w0-w39; the positive repeats them, negatives use w40-w79 only.
    Returns training groups (context, [positive, negatives]) and validation groups
    (context, candidates, index of the positive)."""
    rng = random.Random(seed)
    train, groups = [], []
    for _ in range(n):
        context_words = rng.sample(WORDS[:40], 3)
        context = "search: " + " ".join(context_words)
        positive = " ".join(rng.sample(context_words, 3))
        negatives = [" ".join(rng.sample(WORDS[40:], 3)) for _ in range(3)]
        train.append((context, [positive, *negatives]))
        groups.append((context, negatives + [positive], 3))
    return train, groups


@pytest.fixture(scope="module")
def trained_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny reranker after 30 steps on the easy task, saved."""
    reranker = Reranker(tiny_model_dir, max_length=32)
    train, groups = _easy_task(300, seed=0)
    train_reranker(reranker, train, groups[:10], groups_per_step=4, lr=1e-2, max_steps=30,
                   show_progress=False)
    path = tmp_path_factory.mktemp("trained") / "reranker"
    reranker.save(path)
    return path


# --- context text -----------------------------------------------------------------------------

def test_context_text_most_recent_first_with_queries_and_titles() -> None:
    titles = {"a": "Acme LED microscope", "b": "Glass slides 50 pack"}
    text = session_context_text(
        ["b", None, "a", "a"], ["view", "search", "view", "click"],
        [None, "usb microscope", None, None], titles,
    )
    # "a" appears twice: shown once, at its most recent event (the click)
    assert text == ("click: Acme LED microscope | search: usb microscope | "
                    "view: Glass slides 50 pack")


def test_context_text_caps_events_and_words_and_falls_back_to_id() -> None:
    items = [f"i{k}" for k in range(8)]
    text = session_context_text(items, ["view"] * 8, [None] * 8, {"i7": "one two three four"},
                                max_events=2, max_words_per_event=2)
    assert text == "view: one two | view: i6"
    assert session_context_text([], [], [], {}) == ""
    assert session_context_text([None, "i7"], ["search", "view"], [float("nan"), None],
                                {"i7": "lamp"}) == "view: lamp"
    with pytest.raises(RerankError, match="one entry per event"):
        session_context_text(["a"], ["view", "click"], [None], {})


# --- training pairs ---------------------------------------------------------------------------

@pytest.fixture
def pair_inputs() -> tuple[pd.DataFrame, list[list[str]], dict[str, str], dict[str, str]]:
    item_ids = [f"i{k}" for k in range(40)]
    titles = {i: f"title {i}" for i in item_ids}
    texts = {i: f"text of {i}." for i in item_ids}
    examples = pd.DataFrame({
        "user_id": ["u1", "u2", "u3"],
        "hist_items": [["i1", "i2"], [None, "i3"], ["i4"]],
        "hist_types": [["view", "click"], ["search", "view"], ["cart"]],
        "hist_queries": [[None, None], ["w1 w2", None], [None]],
        "target": ["i5", "i6", "i7"],
    })
    candidates = [item_ids[5:20], item_ids[10:25] + ["i6"], item_ids[30:40]]
    return examples, candidates, texts, titles


def _sources(candidates: list[list[str]]) -> dict:
    """Two candidate sources: the given lists, and the same lists reversed."""
    return {"given": lambda rows, n: [c[:n] for c in candidates],
            "reversed": lambda rows, n: [c[::-1][:n] for c in candidates]}


def test_negatives_are_allowed_items_never_the_target_or_history(pair_inputs) -> None:
    examples, candidates, texts, titles = pair_inputs
    allowed = {f"i{k}" for k in range(40)} - {"i8", "i9", "i30", "i31"}  # e.g. held out
    candidates = [c + ["i1", "i2", "i5", "i8", "i9"] for c in candidates]  # history, target, banned
    negatives = mine_negatives(examples, _sources(candidates), allowed, n_candidates=20,
                               n_hard=6, n_random=2, seed=0)
    assert len(negatives) == 3
    for row, negs in enumerate(negatives):
        blocked = {examples["target"][row]} | set(i for i in examples["hist_items"][row] if i)
        assert set(negs) <= allowed and not set(negs) & blocked
        assert len(set(negs)) == len(negs) == 8
        assert set(negs[:6]) <= set(candidates[row])  # the hard ones come from the sources
    groups = build_train_groups(examples, negatives, texts, titles)
    assert [g[1][0] for g in groups] == [texts[t] for t in examples["target"]]  # positive first
    assert all(len(g[1]) == 9 for g in groups)


def test_negatives_split_over_sources_and_are_deterministic(pair_inputs) -> None:
    examples, candidates, _, _ = pair_inputs
    allowed = {f"i{k}" for k in range(40)}
    only_first = {"a": lambda rows, n: [["i20", "i21", "i22"]] * len(rows),
                  "b": lambda rows, n: [["i33", "i34", "i35"]] * len(rows)}
    negs = mine_negatives(examples, only_first, allowed, n_hard=4, n_random=0, seed=1)
    for row in negs:  # 2 from each source
        assert len(set(row) & {"i20", "i21", "i22"}) == 2
        assert len(set(row) & {"i33", "i34", "i35"}) == 2
    first = mine_negatives(examples, _sources(candidates), allowed, seed=3)
    assert first == mine_negatives(examples, _sources(candidates), allowed, seed=3)
    assert first != mine_negatives(examples, _sources(candidates), allowed, seed=4)
    with pytest.raises(RerankError, match="one per row"):
        mine_negatives(examples, {"bad": lambda rows, n: [["i1"]]}, allowed)


def test_pairs_and_groups_reject_unknown_ids(pair_inputs) -> None:
    examples, candidates, texts, titles = pair_inputs
    with pytest.raises(DataError, match="no text in item_texts"):
        build_groups(examples, [candidates[0] + ["nope"]] + candidates[1:], texts, titles)
    with pytest.raises(DataError, match="one item list per example"):
        build_train_groups(examples, candidates[:2], texts, titles)
    groups = build_groups(examples, candidates, texts, titles)
    assert [g[2] for g in groups] == [0, 15, -1]  # i5 first, i6 appended last, i7 missed
    assert groups[1][0] == "view: title i3 | search: w1 w2"


# --- policy -----------------------------------------------------------------------------------

SEGMENTS = ["head", "long_tail", "head", "new", "head", "long_tail"]


def test_policy_cold_user_gets_all_top_n_warm_user_only_tail_and_new() -> None:
    policy = RerankPolicy(top_n=4, cold_max_events=3)
    assert policy.select(0, SEGMENTS).tolist() == [True] * 4 + [False] * 2  # query-only user
    assert policy.select(3, SEGMENTS).tolist() == [True] * 4 + [False] * 2
    # warm: long_tail/new within the top 4 only (index 5 is long_tail but beyond top_n)
    assert policy.select(4, SEGMENTS).tolist() == [False, True, False, True, False, False]


def test_policy_modes_and_segment_choice() -> None:
    assert not RerankPolicy(mode="never").select(0, SEGMENTS).any()
    rules = {"cold": {"enabled": False, "blend_alpha": 0.2, "rerank_segments": ["new"]}}
    forced = RerankPolicy(top_n=7, blend_alpha=0.3, rules=rules).with_mode("always")
    assert (forced.mode, forced.top_n, forced.blend_alpha) == ("always", 7, 0.3)
    assert forced.rules == RerankPolicy(rules=rules).rules
    with pytest.raises(RerankError, match="mode= must be one of"):
        forced.with_mode("sometimes")
    assert RerankPolicy(mode="always", top_n=5).select(50, SEGMENTS).tolist() == [True] * 5 + [
        False]
    only_new = RerankPolicy(rerank_segments=("new",))
    assert only_new.select(10, SEGMENTS).tolist() == [False, False, False, True, False, False]
    with pytest.raises(RerankError, match="mode="):
        RerankPolicy(mode="sometimes")
    with pytest.raises(RerankError, match="rerank_segments"):
        RerankPolicy(rerank_segments=("tail",))
    with pytest.raises(RerankError, match="candidate_segments"):
        RerankPolicy().select(1, ["hot"])


def test_blend_hand_case_reorders_selected_within_their_band() -> None:
    retrieval = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    selected = np.array([False, False, True, False, True])
    rerank = np.array([np.nan, np.nan, 0.0, np.nan, 10.0])
    final = RerankPolicy(blend_alpha=1.0).blend(retrieval, rerank, selected)
    # r = z(retrieval) = sqrt(2) * [1, .5, 0, -.5, -1]; the selected band {0, -sqrt 2} has
    # mean -sqrt(2)/2 and std sqrt(2)/2; z(rerank) = [-1, 1] maps to [-sqrt 2, 0]: they swap.
    s2 = np.sqrt(2.0)
    np.testing.assert_allclose(final, [s2, s2 / 2, -s2, -s2 / 2, 0.0], atol=1e-12)
    assert np.argsort(-final).tolist() == [0, 1, 4, 3, 2]
    # alpha 0 keeps the retrieval order; one selected item has nothing to be reordered against
    keep = RerankPolicy(blend_alpha=0.0).blend(retrieval, rerank, selected)
    assert np.argsort(-keep).tolist() == [0, 1, 2, 3, 4]
    one = RerankPolicy().blend(retrieval, rerank, np.array([False, False, False, False, True]))
    np.testing.assert_allclose(one, standardize_scores(retrieval))


@pytest.mark.parametrize("standardize", ["zscore", "minmax"])
def test_blend_never_reorders_unselected_and_keeps_selected_in_rerank_order(standardize) -> None:
    rng = np.random.default_rng(0)
    policy = RerankPolicy(blend_alpha=1.0, standardize=standardize)
    for _ in range(20):
        retrieval = np.sort(rng.normal(size=12))[::-1]
        rerank = rng.normal(size=12)
        selected = rng.random(12) < 0.5
        final = policy.blend(retrieval, rerank, selected)
        unselected = np.flatnonzero(~selected)
        assert np.all(np.diff(final[unselected]) <= 0)  # retrieval order kept
        chosen = np.flatnonzero(selected)
        if len(chosen) > 1:  # alpha = 1: the selected follow the reranker exactly
            assert np.argsort(-final[chosen]).tolist() == np.argsort(-rerank[chosen]).tolist()
    with pytest.raises(RerankError, match="1-D of one length"):
        policy.blend(np.zeros(3), np.zeros(2), np.zeros(3, dtype=bool))


def test_rank_metrics_hand_cases() -> None:
    assert rank_metrics(np.array([0.1, 0.9, 0.5]), positive=2) == (1 / np.log2(3), 0.5)
    assert rank_metrics(np.array([1.0, 2.0]), positive=-1) == (0.0, 0.0)
    # retriever order: positive at index 1 -> rank 2
    assert evaluate_groups(None, [("c", ["a", "b"], 1)])["mrr"] == 0.5


# --- model, training, save/load, int8 ---------------------------------------------------------

def test_score_shapes_and_batched_agreement(tiny_model_dir: Path) -> None:
    reranker = Reranker(tiny_model_dir, max_length=32, batch_size=2)
    scores = reranker.score("search: w1 w2", ["w1 w2", "w3", "w4 w5 w6"])
    assert scores.shape == (3,) and scores.dtype == np.float32
    many = reranker.score_many([("search: w1 w2", "w1 w2"), ("search: w1 w2", "w3"),
                                ("search: w1 w2", "w4 w5 w6")])
    np.testing.assert_allclose(many, scores, atol=1e-5)
    assert reranker.score("x", []).shape == (0,)
    with pytest.raises(RerankError, match="list of item texts"):
        reranker.score("x", "a single string")
    with pytest.raises(RerankError, match="model_path"):
        Reranker(tiny_model_dir / "missing")


def test_truncated_layers_reduce_the_layer_count(tiny_model_dir: Path, tmp_path: Path) -> None:
    full = Reranker(tiny_model_dir)
    short = Reranker(tiny_model_dir, num_layers=1)
    assert full.num_layers == 2 and short.num_layers == 1
    assert len(short.model.base_model.encoder.layer) == 1
    assert sum(p.numel() for p in short.model.parameters()) < sum(
        p.numel() for p in full.model.parameters())
    short.save(tmp_path / "short")
    assert Reranker.load(tmp_path / "short").num_layers == 1
    with pytest.raises(RerankError, match="between 1 and 2"):
        Reranker(tiny_model_dir, num_layers=3)


def test_in_group_softmax_loss_hand_case() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, float("-inf")]])  # 2nd group: 1 negative
    expected = (-np.log(np.exp(2) / (np.exp(2) + 2)) - np.log(1 / (1 + np.e))) / 2
    assert float(InGroupSoftmaxLoss()(logits)) == pytest.approx(expected, rel=1e-6)


def test_training_loss_falls_on_an_easy_task(tiny_model_dir: Path) -> None:
    reranker = Reranker(tiny_model_dir, max_length=32)
    train, _ = _easy_task(300, seed=0)
    _, groups = _easy_task(30, seed=1)
    metrics = train_reranker(reranker, train, groups, groups_per_step=4, lr=1e-2, max_steps=30,
                             show_progress=False)
    losses = metrics["loss_history"]
    assert metrics["steps"] == len(losses) == 30
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    assert metrics["valid_after"]["ndcg@10"] > metrics["valid_before"]["ndcg@10"]
    assert metrics["valid_after"]["mrr"] > 0.9
    assert not reranker.model.training


def test_training_stops_at_the_time_budget(tiny_model_dir: Path) -> None:
    reranker = Reranker(tiny_model_dir, max_length=32)
    train, _ = _easy_task(40, seed=0)
    metrics = train_reranker(reranker, train, groups_per_step=4, budget_cpu_seconds=1e-9,
                             show_progress=False)
    assert metrics["steps"] == 1 and metrics["groups_seen"] == 4  # one step, then out of time
    full = train_reranker(reranker, train, groups_per_step=4, show_progress=False)
    assert full["steps"] == 10


def test_save_load_gives_the_same_scores(trained_dir: Path) -> None:
    first = Reranker.load(trained_dir)
    again = Reranker.load(trained_dir)
    _, groups = _easy_task(5, seed=2)
    for context, texts, _ in groups:
        np.testing.assert_allclose(first.score(context, texts), again.score(context, texts),
                                   atol=1e-6)
    assert (trained_dir / "model" / "model.safetensors").is_file()
    assert first.config()["context_max_events"] == 5
    with pytest.raises(RerankError, match="not a saved reranker"):
        Reranker.load(trained_dir / "model")


def _random_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(" ".join(rng.sample(WORDS, rng.randint(1, 12))),
             " ".join(rng.sample(WORDS, rng.randint(1, 30)))) for _ in range(n)]


def test_cached_pair_encoding_equals_the_tokenizer(tiny_model_dir: Path) -> None:
    reranker = Reranker(tiny_model_dir, max_length=16)
    pairs = _random_pairs(30)
    contexts, texts = [c for c, _ in pairs], [t for _, t in pairs]
    expected = reranker.tokenizer(contexts, texts, padding=True, truncation="longest_first",
                                  max_length=16, return_tensors="np")
    for _ in range(2):  # the second pass reads the item cache
        got = reranker.encoder.encode(contexts, texts)
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(got[key], expected[key])
    assert len(reranker.encoder._cache) == len(set(texts))
    lengths = reranker.encoder.pair_lengths(contexts[0], texts[:3])
    assert lengths.tolist() == [len(contexts[0].split()) + len(t.split()) + 3 for t in texts[:3]]


def test_torch_int8_scores_keep_shape_and_rank_order(spread_model_dir: Path,
                                                      tmp_path: Path) -> None:
    fp32 = Reranker(spread_model_dir)
    int8 = Reranker(spread_model_dir, quantize="int8")
    pairs = _random_pairs(40)
    fp32_scores, int8_scores = fp32.score_many(pairs), int8.score_many(pairs)
    assert int8_scores.shape == fp32_scores.shape == (40,) and int8.engine == "torch-int8"
    assert not np.array_equal(int8_scores, fp32_scores)  # it really ran quantised
    ranks = [np.argsort(np.argsort(s)) for s in (fp32_scores, int8_scores)]
    assert np.corrcoef(*ranks)[0, 1] > 0.9  # Spearman
    int8.save(tmp_path / "int8")  # the option is recorded and re-applied at load
    reloaded = Reranker.load(tmp_path / "int8")
    assert reloaded.quantize == "int8"
    np.testing.assert_allclose(reloaded.score_many(pairs), int8_scores, atol=1e-5)


def test_onnx_export_matches_torch_and_int8_keeps_the_order(spread_model_dir: Path,
                                                            tmp_path: Path) -> None:
    pairs = _random_pairs(40, seed=1)
    torch_scores = Reranker(spread_model_dir).score_many(pairs)
    Reranker(spread_model_dir, backend="onnx", quantize="int8").save(tmp_path / "onnx")
    files = sorted(p.name for p in (tmp_path / "onnx" / "model" / "onnx").glob("*.onnx"))
    assert files[0] == "model.onnx" and files[1].startswith("model_qint8_")
    fp32 = Reranker.load(tmp_path / "onnx", quantize="none")
    int8 = Reranker.load(tmp_path / "onnx")
    assert (fp32.engine, int8.engine) == ("onnx", "onnx-int8")
    np.testing.assert_allclose(fp32.score_many(pairs), torch_scores, atol=1e-4)
    int8_scores = int8.score_many(pairs)
    assert not np.allclose(int8_scores, torch_scores, atol=1e-6)  # really the int8 graph
    ranks = [np.argsort(np.argsort(s)) for s in (torch_scores, int8_scores)]
    assert np.corrcoef(*ranks)[0, 1] > 0.9
    assert Reranker.load(tmp_path / "onnx", backend="torch").engine == "torch-int8"
    Reranker(spread_model_dir).save(tmp_path / "torch_only")
    with pytest.raises(RerankError, match="no ONNX export"):
        Reranker.load(tmp_path / "torch_only", backend="onnx")


def test_int8_trained_reranker_still_puts_the_positive_first(trained_dir: Path) -> None:
    int8 = Reranker.load(trained_dir, quantize="int8")
    _, groups = _easy_task(10, seed=3)
    assert evaluate_groups(int8, groups)["mrr"] == 1.0


def test_score_groups_equals_one_session_at_a_time(trained_dir: Path) -> None:
    reranker = Reranker.load(trained_dir)
    _, groups = _easy_task(6, seed=4)
    batched = reranker.score_groups([(c, t) for c, t, _ in groups])
    for (context, texts, _), scores in zip(groups, batched):
        np.testing.assert_allclose(scores, reranker.score(context, texts), atol=1e-5)


# --- policy rules and the validation decision ----------------------------------------------

def test_policy_rules_switch_user_groups_and_set_their_blend() -> None:
    rules = {"cold": {"enabled": True, "blend_alpha": 0.3,
                      "rerank_segments": ["head", "long_tail", "new"]},
             "warm": {"enabled": False, "blend_alpha": 0.7, "rerank_segments": ["new"]}}
    policy = RerankPolicy(top_n=4, rules=rules)
    assert policy.select(1, SEGMENTS).tolist() == [True] * 4 + [False] * 2
    assert not policy.select(10, SEGMENTS).any()  # warm switched off
    assert policy.alpha_for(1) == 0.3 and policy.alpha_for(None) == policy.blend_alpha
    warm_new = RerankPolicy(rules={"warm": {"enabled": True, "rerank_segments": ["new"]}})
    assert warm_new.select(10, SEGMENTS).tolist() == [False, False, False, True, False, False]
    with pytest.raises(RerankError, match="rules"):
        RerankPolicy(rules={"lukewarm": {}})


def _eval_rows(n: int, good_for: str, seed: int = 0):
    """Rows whose reranker puts the positive first for ``good_for`` users and last otherwise."""
    from rerank.evaluate import EvalRows

    rng = np.random.default_rng(seed)
    rows = EvalRows()
    for i in range(n):
        group = "cold" if i % 2 else "warm"
        pos = int(rng.integers(1, 10)) if i % 5 else -1
        rerank = -np.arange(10, dtype=float) if pos >= 0 else None
        if rerank is not None:
            rerank[pos] = 100.0 if group == good_for else -100.0
        rows.retrieval.append(-np.arange(10, dtype=float))
        rows.rerank.append(rerank)
        rows.segments.append(["head"] * 5 + ["long_tail"] * 5)
        rows.positive.append(pos)
        rows.user_group.append(group)
        rows.target_segment.append("head" if pos < 5 else "long_tail")
    return rows


def test_decision_switches_on_only_the_group_where_the_reranker_helps() -> None:
    from rerank.evaluate import decide_rules, lift, segment_report

    decision = decide_rules(_eval_rows(200, good_for="cold"), n_boot=200)
    assert decision["rules"]["cold"]["enabled"] and not decision["rules"]["warm"]["enabled"]
    cold = decision["evidence"]["cold"]["all"]
    assert cold["delta_ci"][0] > 0 and cold["rel_lift"] > 0
    assert decision["evidence"]["warm"]["all"]["delta_ci"][1] < 0
    report = segment_report(_eval_rows(200, good_for="cold"), decision["rules"], n_boot=50)
    assert report["warm/all"]["policy"]["delta"] == 0.0  # switched off: the towers' order
    same = lift(np.ones(10) * 0.5, np.ones(10) * 0.5, n_boot=50)
    assert same["delta"] == 0.0 and same["delta_ci"] == [0.0, 0.0]


# --- config -----------------------------------------------------------------------------------

@pytest.mark.parametrize("choice", ["default", "fast"])
def test_configs_compose_and_feed_the_library(choice: str, tiny_model_dir: Path) -> None:
    from hydra import compose, initialize_config_dir

    conf_dir = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(overrides=[f"+rerank={choice}"]).rerank
    nodes = OmegaConf.to_container(cfg, resolve=True)
    policy = RerankPolicy(**nodes["policy"])  # each node is its consumer's keyword arguments
    assert policy.top_n == 20
    assert set(nodes["mining"]) == {"neg_sources", "candidates_n", "n_hard", "n_random",
                                    "max_train_examples"}
    assert set(nodes["training"]) <= set(inspect.signature(train_reranker).parameters)
    assert (cfg.model.backend, cfg.model.quantize) == ("onnx", "int8")
    expected = (48, 3) if choice == "fast" else (64, None)
    assert (cfg.model.max_length, cfg.model.num_layers) == expected
    reranker = Reranker(tiny_model_dir, **{**nodes["model"], "num_layers": 1})
    assert reranker.score("search: w1", ["w1", "w2"]).shape == (2,)


def test_policy_is_read_from_split_and_from_old_flat_configs() -> None:
    """A run's config.yaml: the policy node, or (runs saved before the split) flat keys."""
    from engine.loading import policy_from_config

    for group in ({"policy": {"top_n": 7, "mode": "never"}, "model": {"max_length": 64}},
                  {"top_n": 7, "mode": "never", "max_length": 64}):
        policy = policy_from_config({"rerank": group})
        assert (policy.top_n, policy.mode) == (7, "never")


def test_rerank_sanity_control_groups_put_the_items_own_text_where_they_say() -> None:
    from benchmarks.rerank_sanity import control_groups

    titles = [f"title {i}" for i in range(30)]
    texts = [f"title {i}. category. brand {i}" for i in range(30)]
    train, valid = control_groups(titles, texts, n=20, negatives=8, seed=0)
    assert len(train) == 20 and len(valid) == 5
    for context, candidates in train:
        assert len(candidates) == 9 and candidates[0] == texts[titles.index(context)]
        assert candidates.count(candidates[0]) == 1  # the item is never its own negative
    trained = {titles.index(c) for c, group in train} | {texts.index(t) for _, g in train
                                                             for t in g}
    for context, candidates, positive in valid:
        assert candidates[positive] == texts[titles.index(context)]
        assert not trained & ({titles.index(context)} | {texts.index(t) for t in candidates})
