"""The engine's ranking stage: a run with a ranker ranks through it and explains by the deciding
signal; a run without one serves the towers' order; the benchmark ranks exactly as the engine
serves; the ranker never trains on test rows; live edits keep BM25 and zero-shot in step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.systems import EngineSystem, SourceSystem
from engine import ArtifactPaths, Recommender
from engine.session import sessions_from_examples
from engine.state import run_stamp, state_store
from pipeline.ranker_stage import cut_contexts, cut_selection, ranker_examples


@pytest.fixture(scope="module")
def ranked(tiny_ranked_artifacts: Path) -> Recommender:
    return Recommender.from_artifacts(tiny_ranked_artifacts, rerank=False)


def _session(row) -> dict:
    events = [{"type": "search", "query": q} if t == "search" else {"type": t, "item_id": i}
              for i, t, q in zip(row["hist_items"], row["hist_types"], row["hist_queries"])]
    return {"events": events, "k": 10}


def test_a_run_with_a_ranker_ranks_with_it_and_explains_by_its_signal(ranked, tiny_split
                                                                      ) -> None:
    row = tiny_split.test.iloc[0]
    result = ranked.recommend(_session(row))
    assert ranked.info()["scorer"] == "ranker"
    assert set(ranked.info()["sources"]) == {"towers", "bm25", "zero_shot", "popularity",
                                            "fresh", "session"}
    assert len(result["items"]) == 10 and result["timings_ms"]["rank"] >= 0
    for item in result["items"]:
        assert item["signal"] and item["because"] and item["sources"]
    scores = [item["score"] for item in result["items"]]
    assert scores == sorted(scores, reverse=True)
    history = {i for i in row["hist_items"] if i}
    assert not history & {item["item_id"] for item in result["items"]}


def test_repeats_let_history_items_back_only_when_asked(ranked, tiny_split) -> None:
    row = next(r for _, r in tiny_split.test.iterrows() if len(r["hist_items"]) >= 2)
    history = {i for i in row["hist_items"] if i}
    served = ranked.recommend(_session(row), k=40)
    repeats = ranked.recommend(_session(row), k=40, repeats=True)
    assert not history & {i["item_id"] for i in served["items"]}
    assert history & {i["item_id"] for i in repeats["items"]}


def test_a_run_without_ranking_parts_serves_the_towers_order(tiny_artifacts: Path,
                                                               tmp_path: Path, tiny_split
                                                               ) -> None:
    import shutil

    run = tmp_path / "tiny"
    shutil.copytree(tiny_artifacts, run)
    shutil.rmtree(run / "ranker", ignore_errors=True)
    store = state_store(run)  # a new generation without the ranking parts
    with store.writer() as writer:
        writer.commit({}, expected=store.number(), stamp=run_stamp(ArtifactPaths(run)),
                      drop=("bm25", "zeroshot"))
    rec = Recommender.from_artifacts(run, rerank=False)
    assert rec.info()["scorer"] == "towers" and rec.info()["sources"] == ["towers"]
    result = rec.recommend(_session(tiny_split.test.iloc[1]))
    retrieval = [item["retrieval_score"] for item in result["items"]]
    assert retrieval == sorted(retrieval, reverse=True)
    assert [item["score"] for item in result["items"]] == retrieval


def test_the_benchmark_ranks_exactly_as_the_engine_serves(ranked, tiny_split) -> None:
    test = tiny_split.test.iloc[:12].reset_index(drop=True)
    item_ids = ranked.catalogue["item_id"].tolist()
    scores = EngineSystem(ranked, item_ids, "ranker").score(test)  # (12, n_items)
    for row in range(len(test)):
        served = [i["item_id"] for i in ranked.recommend(_session(test.iloc[row]))["items"]]
        history = {i for i in test.iloc[row]["hist_items"] if i}
        order = [item_ids[j] for j in np.argsort(-scores[row], kind="stable")
                 if item_ids[j] not in history]
        assert order[:10] == served, row
    towers = SourceSystem(ranked, "towers", item_ids, "two_tower_bert").score(test[:1])[0]
    served = ranked.recommend(_session(test.iloc[0]))["items"]
    for item in served:
        assert towers[item_ids.index(item["item_id"])] == pytest.approx(
            item["retrieval_score"], abs=1e-5)


def test_the_ranker_never_trains_on_a_test_row(tiny_split) -> None:
    split = tiny_split
    rows = ranker_examples(split, max_rows=None, seed=0)
    key = lambda f: set(zip(f["user_id"], f["target"], f["target_ts"]))  # noqa: E731
    assert len(rows) >= len(split.valid) and not key(rows) & key(split.test)
    assert set(rows["origin"]) <= {"valid", "ranker_items"}


def _item_events(types) -> int:
    return sum(kind != "search" for kind in types)


def test_cut_contexts_cut_to_k_events_keep_user_and_target_and_never_a_test_row(tiny_split
                                                                               ) -> None:
    split = tiny_split
    rows = ranker_examples(split, max_rows=None, seed=0, cut={"ks": [1, 2], "share": 0.5})
    full, cuts = rows[rows["context"] == "full"], rows[rows["context"] != "full"]
    assert set(cuts["context"]) == {"cut_1", "cut_2"} and len(full) >= len(split.valid)
    for _, copy in cuts.iterrows():
        k = int(copy["context"].split("_")[1])
        source = full.loc[copy["source_row"]]
        assert _item_events(copy["hist_types"]) == k < _item_events(source["hist_types"])
        assert (copy["user_id"], copy["target"], copy["target_ts"], copy["origin"]) == (
            source["user_id"], source["target"], source["target_ts"], source["origin"])
        n = len(copy["hist_items"])  # the source's last events, as the benchmark's cold_k
        assert list(copy["hist_items"]) == list(source["hist_items"])[-n:]
        assert copy["user_segment"] == "cold_user"
    key = lambda f: set(zip(f["user_id"], f["target"], f["target_ts"]))  # noqa: E731
    assert not key(rows) & key(split.test)
    # a seeded share of the full rows, nested across shares; none at share 0
    chosen = set(cuts["source_row"])
    assert 0.3 * len(full) < len(chosen) <= len(full) * 0.7
    assert chosen <= set(np.flatnonzero(cut_selection(len(full), 0.5, 0)))
    assert set(np.flatnonzero(cut_selection(len(full), 0.25, 0))) <= set(
        np.flatnonzero(cut_selection(len(full), 0.5, 0)))
    assert rows[rows["context"] == "full"].drop(columns=["context", "source_row"]).equals(
        ranker_examples(split, max_rows=None, seed=0).drop(columns=["context", "source_row"]))
    assert len(ranker_examples(split, None, 0, cut={"ks": [1], "share": 0.0})) == len(full)
    assert len(cut_contexts(full.iloc[:0], [1], 1.0, 0)) == 0


def test_sessions_from_examples_keep_every_usable_event() -> None:
    sessions = sessions_from_examples([["a", None, "b"]], [["click", "search", "view"]],
                                      [[None, "red kettle", None]])
    kinds = [(e.type, e.item_id, e.query) for e in sessions[0].events]
    assert kinds == [("click", "a", None), ("search", None, "red kettle"), ("view", "b", None)]


def test_live_edits_keep_bm25_and_zero_shot_in_step(tiny_ranked_artifacts: Path,
                                                    tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "tiny"
    shutil.copytree(tiny_ranked_artifacts, run)
    rec = Recommender.from_artifacts(run, rerank=False)
    new = {"item_id": "ZZ-NEW-1", "title": "Quokkaflux Zymurgy Kettle", "category": "Kitchen"}
    rec.add_items([new])
    result = rec.recommend({"events": [{"type": "search", "query": "quokkaflux zymurgy"}],
                            "k": rec.n_items})
    found = {i["item_id"]: i for i in result["items"]}
    assert "bm25" in found["ZZ-NEW-1"]["sources"]  # the only item with these words
    assert "ZZ-NEW-1" in rec.ranking_parts.zero_shot
    rec.save()
    again = Recommender.from_artifacts(run, rerank=False)
    assert again.ranking_parts.bm25.position.get("ZZ-NEW-1") is not None
    again.remove_items(["ZZ-NEW-1"])
    assert "ZZ-NEW-1" not in again.ranking_parts.bm25.position
    assert "ZZ-NEW-1" not in again.ranking_parts.zero_shot
    result = again.recommend({"events": [{"type": "search", "query": "quokkaflux zymurgy"}],
                              "k": again.n_items})
    assert "ZZ-NEW-1" not in {i["item_id"] for i in result["items"]}
