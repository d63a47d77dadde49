"""ranking/: each candidate source against a brute-force oracle on a tiny catalogue, the merge,
features on hand-made cases, the fusion baseline and the LightGBM ranker (learns, saves, loads,
refuses another feature version)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.artifacts import catalogue_frame
from engine.catalogue import CatalogueState
from index import CatalogueIndex
from ranking import (
    FEATURES,
    BM25Index,
    BM25Source,
    FreshSource,
    Fusion,
    LightGBMRanker,
    PopularitySource,
    RankerError,
    RankingPipeline,
    SessionBatch,
    SessionSource,
    TowersSource,
    ZeroShotSource,
)
from ranking.bm25 import tokenize
from ranking.features import ItemCodes, SessionContext, category_levels, session_features
from ranking.merge import merge
from ranking.scorers import COLUMN, train_lambdarank, zscore
from ranking.sources import Candidates
from recdata import catalogue_texts

ITEMS = [
    {"item_id": "a", "title": "usb microscope", "category": "Lab > Optics", "brand": "Acme"},
    {"item_id": "b", "title": "glass beaker set", "category": "Lab > Glass", "brand": "Pyro"},
    {"item_id": "c", "title": "lab gloves nitrile", "category": "Lab > Safety", "brand": "Safe"},
    {"item_id": "d", "title": "digital microscope camera", "category": "Lab > Optics",
     "brand": "Acme"},
    {"item_id": "e", "title": "pipette tips", "category": "Lab > Liquid", "brand": "Pyro"},
    {"item_id": "f", "title": "safety goggles", "category": "Lab > Safety", "brand": "Safe"},
]
POPULARITY = [9, 5, 0, 3, 1, 0]
SEGMENTS = ["head", "head", "new", "long_tail", "long_tail", "new"]
DIM = 8


@pytest.fixture()
def table() -> CatalogueState:
    frame = pd.DataFrame(ITEMS).assign(created_ts=[1, 2, 50, 4, 5, 60])
    return CatalogueState.from_frame(catalogue_frame(frame, catalogue_texts(frame), POPULARITY,
                                                     SEGMENTS))


def _vectors(seed: int) -> np.ndarray:
    vecs = np.random.default_rng(seed).normal(size=(len(ITEMS), DIM)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def _batch(user_emb: np.ndarray | None = None) -> SessionBatch:
    return SessionBatch.from_lists(
        [["a", None, "d"], [None], ["b"]], [["click", "search", "view"], ["search"], ["cart"]],
        [[None, "safety gloves", None], ["beaker"], [None]], exclude_history=True,
        user_emb=user_emb)


def test_towers_source_equals_a_brute_force_dot_product(table: CatalogueState) -> None:
    vecs = _vectors(0)
    users = np.random.default_rng(1).normal(size=(3, DIM)).astype(np.float32)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    prepared = TowersSource(CatalogueIndex.build(vecs, [i["item_id"] for i in ITEMS])).prepare(
        _batch(users), table)
    oracle = users @ vecs.T  # (3, 6)
    np.testing.assert_allclose(prepared.score_all(), oracle, rtol=1e-5)
    found = prepared.retrieve(3)
    for row, exclude in enumerate([{0, 3}, set(), {1}]):
        ranked = [j for j in np.argsort(-oracle[row]) if j not in exclude][:3]
        assert found[row].rows.tolist() == ranked
        np.testing.assert_allclose(found[row].scores, oracle[row, ranked], rtol=1e-5)
    rows = [np.array([5, 0]), np.array([2]), np.array([], dtype=np.int64)]
    for row, scores in enumerate(prepared.score(rows)):
        np.testing.assert_allclose(scores, oracle[row, rows[row]], rtol=1e-5)


def test_zero_shot_source_is_the_recency_weighted_mean_of_event_vectors(table) -> None:
    vecs = _vectors(2)
    query_vecs = {"safety gloves": vecs[5], "beaker": vecs[1]}

    def encode(texts: list[str]) -> np.ndarray:
        return np.stack([query_vecs[t] for t in texts])

    source = ZeroShotSource(CatalogueIndex.build(vecs, [i["item_id"] for i in ITEMS]), encode,
                            decay=0.5)
    prepared = source.prepare(_batch(), table)
    w = np.array([0.25, 0.5, 1.0]) / 1.75  # oldest to newest, each older event half as heavy
    session0 = w @ np.stack([vecs[0], vecs[5], vecs[3]])
    session0 /= np.linalg.norm(session0)
    oracle = np.stack([session0, vecs[1], vecs[1]])  # (3, d)
    np.testing.assert_allclose(prepared.score_all(), oracle @ vecs.T, rtol=1e-5, atol=1e-6)
    top = prepared.retrieve(2)
    assert top[0].rows.tolist() == [j for j in np.argsort(-(oracle[0] @ vecs.T))
                                    if j not in (0, 3)][:2]
    assert 1 not in top[2].rows.tolist()  # the session's own item is excluded


def test_bm25_source_matches_bm25s_scores_and_returns_only_matching_items(table) -> None:
    import bm25s

    texts = table.texts.tolist()
    source = BM25Source(BM25Index.build(table.ids.tolist(), texts), max_events=5)
    prepared = source.prepare(_batch(), table)
    oracle = bm25s.BM25()
    oracle.index(bm25s.tokenize(texts, stopwords="en", show_progress=False),
                 show_progress=False)
    query = tokenize(["usb microscope safety gloves digital microscope camera"])[0]
    expected = oracle.get_scores(query)
    np.testing.assert_allclose(prepared.scores[0], expected, rtol=1e-5)
    found = prepared.retrieve(10)[0]
    assert set(found.rows.tolist()) == set(np.flatnonzero(expected > 0)) - {0, 3}
    assert np.all(np.diff(found.scores) <= 0)
    # a full-ranking baseline: every item ranked, matching items first
    full = prepared.score_all()[1]
    assert np.argmax(full) == 1  # "beaker"


def test_fillers_and_the_session_source(table) -> None:
    batch = _batch()
    popular = PopularitySource().prepare(batch, table).retrieve(3)
    assert [table.ids[r] for r in popular[0].rows] == ["b", "e"]  # a, d excluded; c, f unsold
    fresh = FreshSource().prepare(batch, table).retrieve(2)
    assert [table.ids[r] for r in fresh[1].rows] == ["f", "c"]  # new items, newest first
    repeats = SessionBatch.from_lists([["a", "d", "a"]], [["view"] * 3], [[None] * 3],
                                      exclude_history=False)
    own = SessionSource().prepare(repeats, table).retrieve(5)[0]
    assert [table.ids[r] for r in own.rows] == ["a", "d"]  # most recent first, once each
    assert not len(SessionSource().prepare(batch, table).retrieve(5)[0].rows)  # excluded


def test_merge_interleaves_by_rank_and_keeps_every_source_rank() -> None:
    per_source = {"x": [Candidates(np.array([1, 2, 3]), np.zeros(3))],
                  "y": [Candidates(np.array([3, 4]), np.zeros(2))]}
    merged = merge(per_source, size=3)[0]
    assert merged.rows.tolist() == [1, 3, 2]
    np.testing.assert_array_equal(merged.ranks["x"], [0, 2, 1])
    np.testing.assert_array_equal(merged.ranks["y"], [np.nan, 0, np.nan])


def test_features_on_a_hand_made_session(table) -> None:
    ctx = SessionContext(
        rows=np.array([3, 1, 0]), ranks={"towers": np.array([0.0, np.nan, 1.0])},
        scores={"towers": np.array([0.9, 0.1, 0.5])}, hist_items=["a", None, "a", "b"],
        hist_types=["click", "search", "view", "cart"], request_ts=86400.0 * 2 + 4,
        zs_events=None, zs_items=None, towers_last=None, query_bm25=None, cross_encoder=None)
    feats = session_features(ctx, table, ItemCodes(table))
    col = {name: feats[:, j] for j, name in enumerate(FEATURES)}
    np.testing.assert_allclose(col["towers_gap"], [0.0, -0.8, -0.4], atol=1e-6)
    np.testing.assert_array_equal(col["towers_rank"], [0, np.nan, 1])
    assert np.isnan(col["bm25_score"]).all() and np.isnan(col["query_bm25"]).all()
    np.testing.assert_allclose(col["log_popularity"], np.log1p([3, 5, 9]), rtol=1e-6)
    np.testing.assert_array_equal(col["item_segment"], [1, 0, 0])
    np.testing.assert_allclose(col["item_age_days"], [2.0, 2 + 2 / 86400, 2 + 3 / 86400],
                               rtol=1e-7)
    np.testing.assert_array_equal(col["n_item_events"], [3, 3, 3])
    np.testing.assert_array_equal(col["in_session_count"], [0, 1, 2])
    np.testing.assert_array_equal(col["in_session_since"], [np.nan, 1, 2])
    # session items a (Lab > Optics, Acme) and b (Lab > Glass, Pyro)
    np.testing.assert_allclose(col["same_category_share"], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(col["category_prefix"], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(col["same_brand_share"], [0.5, 0.5, 0.5])
    assert category_levels("Industrial Lab Glass") == ("industrial", "lab", "glass")


def test_pipeline_ranks_by_its_scorer_and_counts_sources(table) -> None:
    vecs = _vectors(0)
    users = vecs[[2, 4]] + 0.01  # session 0 wants c, session 1 wants e
    ids = table.ids.tolist()
    towers = TowersSource(CatalogueIndex.build(vecs, ids))
    bm25 = BM25Index.build(ids, table.texts.tolist())
    batch = SessionBatch.from_lists([["a"], ["b"]], [["click"], ["click"]], [[None], [None]],
                                    user_emb=users.astype(np.float32))
    pipeline = RankingPipeline({"towers": towers, "bm25": BM25Source(bm25),
                                "popularity": PopularitySource()},
                               quotas={"towers": 2, "bm25": 2, "popularity": 1}, size=4,
                               bm25=bm25)
    ranked = pipeline.rank(batch, table)
    assert [ids[r] for r in ranked[0].rows[:1]] == ["c"]
    assert [ids[r] for r in ranked[1].rows[:1]] == ["e"]
    for result in ranked:
        assert len(result.rows) <= 4 and np.all(np.diff(result.scores) <= 0)
        assert np.isfinite(result.feature("towers_score")).all()
    fused = RankingPipeline(pipeline.sources, Fusion({"towers_score": 0.0,
                                                      "log_popularity": 1.0}),
                            quotas=pipeline.quotas, size=4, bm25=bm25).rank(batch, table)
    pops = table.popularity[fused[0].rows]
    assert np.all(np.diff(pops) <= 0)  # popularity alone orders the candidates


def test_session_text_keeps_the_most_recent_titles_and_queries() -> None:
    from ranking.session import recency_weights, session_text

    titles = {"a": "usb microscope", "b": "glass beaker", "c": "lab gloves"}
    text = session_text(["a", None, "b", "c", None], ["click", "search", "view", "click", "view"],
                        [None, "red pipette", None, None, None],
                        [None, None, None, None, "Inline Kettle. Kitchen."], titles.get,
                        max_events=4)
    assert text == "red pipette glass beaker lab gloves Inline Kettle"
    weights = recency_weights(4, 0.5)
    assert weights.sum() == pytest.approx(1.0) and weights[-1] == pytest.approx(2 * weights[-2])


def test_zscore_gives_missing_values_the_minimum() -> None:
    z = zscore(np.array([1.0, np.nan, 3.0]))
    assert z[1] == z[0] < z[2]


def _toy_groups(seed: int, n_groups: int = 300, size: int = 20):
    """Groups whose positive has a high ``bm25_score`` (the learnable signal); towers noise."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n_groups * size, len(FEATURES))).astype(np.float32)
    labels = np.zeros(n_groups * size, np.float32)
    positives = np.arange(n_groups) * size + rng.integers(0, size, n_groups)
    labels[positives] = 1
    feats[positives, COLUMN["bm25_score"]] += 3.0
    users = [f"u{g % 100}" for g in range(n_groups)]
    return feats, labels, np.full(n_groups, size), users


def test_lambdarank_learns_the_signal_and_round_trips(tmp_path: Path) -> None:
    feats, labels, sizes, users = _toy_groups(0)
    booster, info = train_lambdarank(feats, labels, sizes, users,
                                     {"num_boost_round": 50, "min_data_in_leaf": 5}, seed=0)
    assert info["held_out_ndcg_at_10"] > 0.8 and info["best_round"] >= 1
    ranker = LightGBMRanker(booster, {"features": list(FEATURES), "features_version": 1})
    test_feats, test_labels, _, _ = _toy_groups(1, n_groups=20)
    scores = ranker.score(test_feats[:20])
    assert np.argmax(scores) == np.argmax(test_labels[:20])
    top = np.argmax(ranker.contributions(test_feats[:20]).sum(axis=1))
    assert top == np.argmax(scores)  # contributions add up to the score's order
    loaded = LightGBMRanker.load(ranker.save(tmp_path / "ranker"))
    np.testing.assert_allclose(loaded.score(test_feats[:20]), scores, rtol=1e-6)
    meta = json.loads((tmp_path / "ranker" / "ranker.json").read_text())
    (tmp_path / "ranker" / "ranker.json").write_text(json.dumps({**meta,
                                                                 "features_version": 0}))
    with pytest.raises(RankerError, match="features version"):
        LightGBMRanker.load(tmp_path / "ranker")
    with pytest.raises(RankerError, match="no readable ranker"):
        LightGBMRanker.load(tmp_path / "nowhere")


def test_lambdarank_scores_each_kind_of_held_out_group_and_fits_no_score_only_group() -> None:
    feats, labels, sizes, users = _toy_groups(0)
    kinds = np.array(["full", "cut_1"] * (len(sizes) // 2))
    params = {"num_boost_round": 20, "min_data_in_leaf": 5}
    _, info = train_lambdarank(feats, labels, sizes, users, params, seed=0, group_kinds=kinds)
    by_kind = info["held_out_by_kind"]
    assert set(by_kind) == {"full", "cut_1"}
    assert sum(k["groups"] for k in by_kind.values()) == info["held_out_groups"]
    assert all(0.8 < k["ndcg_at_10"] <= 1.0 for k in by_kind.values())
    only = kinds == "cut_1"  # scored on the held-out fold, never fitted
    _, some = train_lambdarank(feats, labels, sizes, users, params, seed=0, group_kinds=kinds,
                               score_only=only)
    assert some["rows"] == int(sizes[~only].sum())
    assert some["held_out_groups"] + some["fit_groups"] == int((~only).sum())
    assert some["held_out_by_kind"]["cut_1"]["groups"] == by_kind["cut_1"]["groups"]


def test_bm25_index_round_trips_and_refuses_a_damaged_folder(tmp_path: Path, table) -> None:
    bm25 = BM25Index.build(table.ids.tolist(), table.texts.tolist())
    loaded = BM25Index.load(bm25.save(tmp_path / "bm25"))
    tokens = tokenize(["microscope"])[0]
    np.testing.assert_allclose(loaded.scores(tokens), bm25.scores(tokens))
    assert loaded.ids == bm25.ids
    (tmp_path / "bm25" / "ids.json").write_text(json.dumps({"ids": ["a"]}))
    from ranking import BM25Error

    with pytest.raises(BM25Error, match="rebuild"):
        BM25Index.load(tmp_path / "bm25")


def _conflicting_groups(seed: int, n_groups: int = 400, size: int = 20, rare_share: float = 0.2):
    """Two kinds of group the features cannot tell apart: in "common" groups the positive has
    a high ``bm25_score`` and a decoy a high ``towers_score``; in "rare" ones the reverse. A
    ranker fitted on all groups alike follows the common kind."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n_groups * size, len(FEATURES))).astype(np.float32)
    labels = np.zeros(n_groups * size, np.float32)
    rare = rng.random(n_groups) < rare_share
    for g in range(n_groups):
        pos, decoy = g * size + rng.choice(size, 2, replace=False)
        labels[pos] = 1
        win, lose = ("towers_score", "bm25_score") if rare[g] else ("bm25_score", "towers_score")
        feats[pos, COLUMN[win]] += 3.0
        feats[decoy, COLUMN[lose]] += 3.0
    users = [f"u{g % 100}" for g in range(n_groups)]
    return feats, labels, np.full(n_groups, size), users, rare


def test_group_weights_move_the_ranker_towards_the_weighted_groups() -> None:
    from ranking.scorers import ndcg_of_positive

    feats, labels, sizes, users, rare = _conflicting_groups(0, n_groups=1000)
    params = {"num_boost_round": 40, "min_data_in_leaf": 5}

    def rare_ndcg(weights):
        _, info = train_lambdarank(feats, labels, sizes, users, params, seed=0,
                                   group_weights=weights, keep_held_scores=True, refit=False)
        held = info["held_out_groups_mask"]
        ndcg = ndcg_of_positive(info["held_out_scores"], labels[np.repeat(held, sizes)],
                                sizes[held])
        return ndcg[rare[held]].mean(), ndcg[~rare[held]].mean()

    plain_rare, plain_common = rare_ndcg(None)
    heavy_rare, heavy_common = rare_ndcg(np.where(rare, 10.0, 1.0))
    assert heavy_rare > plain_rare + 0.2 and heavy_common < plain_common
    with pytest.raises(RankerError, match="one weight per group"):
        train_lambdarank(feats, labels, sizes, users, params, seed=0, group_weights=np.ones(3))


def test_segment_weights_name_known_segments_and_positive_numbers() -> None:
    from pipeline.ranker_stage import group_weights

    assert group_weights(["head", "long_tail"], {}) is None
    assert group_weights(["head", "long_tail"], {"head": 1.0, "long_tail": 1.0}) is None
    np.testing.assert_array_equal(
        group_weights(["head", "long_tail", "unseen"], {"long_tail": 3, "unseen": 2}),
        [1.0, 3.0, 2.0])
    with pytest.raises(ValueError, match="unknown segments"):
        group_weights(["head"], {"tail": 2.0})
    with pytest.raises(ValueError, match="> 0"):
        group_weights(["head"], {"long_tail": 0})


def test_held_out_view_masks_the_session_but_keeps_the_target() -> None:
    from pipeline.ranker_stage import held_out_view

    # one group of 3 candidates: a session item (not the target) scored highest, the target
    # second; a second group whose target is itself in the session, scored below a non-item
    feats = np.full((6, len(FEATURES)), np.nan, np.float32)
    feats[:, COLUMN["in_session_count"]] = [2, 0, 0, 1, 0, 0]
    for name, column in (("towers", [0.9, 0.5, 0.1, 0.2, 0.8, 0.1]),
                         ("bm25", [0.1, 0.9, 0.5, 0.9, 0.1, 0.2]),
                         ("zero_shot", [0.5, 0.1, 0.9, 0.1, 0.2, 0.9])):
        feats[:, COLUMN[f"{name}_score"]] = column
    rows = {"features": feats, "labels": np.array([0, 1, 0, 1, 0, 0], np.float32),
            "sizes": np.array([3, 3]), "segments": ["long_tail", "unseen"]}
    ranker = np.array([3.0, 2.0, 1.0, 1.0, 2.0, 0.0])
    view = held_out_view(rows, np.array([True, True]), ranker)
    assert view["groups"] == {"overall": 2, "head": 0, "long_tail": 1, "cold": 1}
    masked, unmasked = view["masked"], view["unmasked"]
    assert masked["ranker"]["long_tail"]["ndcg_at_10"] == 1.0  # the session item is sunk
    assert unmasked["ranker"]["long_tail"]["ndcg_at_10"] == pytest.approx(1 / np.log2(3))
    assert masked["ranker"]["cold"]["ndcg_at_10"] == pytest.approx(1 / np.log2(3))  # target kept
    assert masked["bm25"]["overall"]["ndcg_at_10"] == 1.0
    assert masked["towers"]["long_tail"]["recall_at_10"] == 1.0
    assert masked["towers"]["head"]["ndcg_at_10"] is None  # no head group held out
    # a held-out subset of groups of unequal sizes: the scores are those of the held rows only
    rows3 = {"features": np.vstack([feats[:2], feats]), "labels": np.r_[[1, 0], rows["labels"]],
             "sizes": np.array([2, 3, 3]), "segments": ["head", "long_tail", "unseen"]}
    part = held_out_view(rows3, np.array([False, True, True]), ranker)
    assert part["groups"] == view["groups"] and part["masked"] == view["masked"]
    with pytest.raises(ValueError, match="scores"):
        held_out_view(rows3, np.array([True, True, True]), ranker)


def test_a_bad_segment_weight_stops_the_stage_before_any_work(tiny_artifacts: Path, tiny_split,
                                                              monkeypatch) -> None:
    from omegaconf import OmegaConf

    from pipeline.ranker_stage import train_ranker_for_run

    cfg = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parent.parent / "conf"
                                                / "ranking" / "default.yaml"))
    before = sorted(p.name for p in tiny_artifacts.iterdir())

    def no_work(*args, **kwargs):
        raise AssertionError("the candidates were being collected")

    monkeypatch.setattr("pipeline.ranker_stage.ranker_recommender", no_work)
    for weights, message in (({"tail": 2.0}, "unknown segments"), ({"long_tail": -1}, "> 0"),
                             ({"long_tail": True}, "> 0"), (2, "must map segments")):
        with pytest.raises(ValueError, match=message):
            train_ranker_for_run(tiny_artifacts, tiny_split, {**cfg, "segment_weights": weights},
                                 seed=0)
    assert sorted(p.name for p in tiny_artifacts.iterdir()) == before  # nothing written
