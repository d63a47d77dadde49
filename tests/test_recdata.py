"""recdata: loaders on tiny fixtures and the real datasets, validation errors, split invariants."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from recdata import (
    DataError,
    catalogue_texts,
    item_text,
    load_dataset,
    resolve_path,
    split_dataset,
    truncate_history,
    user_segment,
)
from recdata.loaders import load_files
from recdata.schema import validate_events

DATASETS = resolve_path("../shared/datasets")
AMAZON = DATASETS / "amazon_scientific"
MOVIELENS = DATASETS / "ml_latest_small"
needs_amazon = pytest.mark.skipif(not AMAZON.is_dir(), reason=f"{AMAZON} not present")
needs_movielens = pytest.mark.skipif(not MOVIELENS.is_dir(), reason=f"{MOVIELENS} not present")

CATALOGUE = [
    {"item_id": "A", "title": "USB microscope", "category": "Lab > Optics", "brand": "Acme"},
    {"item_id": "B", "title": "Lab goggles", "category": "Lab > Safety", "brand": "Safe"},
    {"item_id": "C", "title": "Nitrile gloves", "category": "Lab > Safety", "brand": "Safe"},
    {"item_id": "D", "title": "Beaker set", "category": "Lab > Glass", "brand": "Acme"},
]
EVENTS = [
    {"user_id": "u1", "item_id": None, "ts": 1, "event": "search", "query": "microscope"},
    {"user_id": "u1", "item_id": "A", "ts": 2, "event": "click", "query": None},
    {"user_id": "u1", "item_id": "B", "ts": 3, "event": "view", "query": None},
    {"user_id": "u1", "item_id": "C", "ts": 4, "event": "cart", "query": None},
    {"user_id": "u1", "item_id": "D", "ts": 5, "event": "purchase", "query": None},
    {"user_id": "u2", "item_id": "B", "ts": 1, "event": "click", "query": None},
    {"user_id": "u2", "item_id": "C", "ts": 2, "event": "click", "query": None},
    {"user_id": "u2", "item_id": "A", "ts": 3, "event": "click", "query": None},
]


def write(path: Path, rows: list[dict]) -> Path:
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_files_loader_reads_each_format(tmp_path: Path, ext: str) -> None:
    data = load_files(write(tmp_path / f"cat{ext}", CATALOGUE),
                      write(tmp_path / f"ev{ext}", EVENTS))
    assert len(data.catalogue) == 4 and data.catalogue["item_id"].tolist() == list("ABCD")
    assert len(data.events) == 8
    assert data.events.loc[data.events["event"] == "search", "item_id"].isna().all()
    assert data.report["unknown_item_events_dropped"] == 0


def test_item_text_uses_every_field_in_order() -> None:
    text = item_text({"title": "USB microscope", "category": ["Lab", "Optics"], "brand": "Acme",
                      "attributes": {"zoom": "40x-1000x"}, "description": "Plugs into a PC."})
    assert text == "USB microscope. Lab > Optics. Brand: Acme. zoom: 40x-1000x. Plugs into a PC."
    assert item_text({"title": "Only title", "brand": float("nan")}) == "Only title."


@pytest.mark.parametrize("change, message", [
    (lambda c: [{k: v for k, v in r.items() if k != "title"} for r in c],
     r"cat.csv: catalogue is missing column\(s\) \['title'\]"),
    (lambda c: c + [dict(c[0])],
     r"column 'item_id' has 2 rows with duplicate ids \(e.g. \['A'\]\)"),
    (lambda c: [dict(c[0], title="  ")] + c[1:],
     r"column 'title' is empty in 1 row\(s\) \(first rows \[1\]"),
])
def test_bad_catalogue_is_refused(tmp_path: Path, change, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_files(write(tmp_path / "cat.csv", change(CATALOGUE)), write(tmp_path / "ev.csv",
                                                                         EVENTS))


@pytest.mark.parametrize("row, message", [
    ({"ts": "yesterday"}, r"column 'ts' row 2: expected an integer .* got 'yesterday'"),
    ({"event": "like"}, r"column 'event' row 2: expected one of \['view'"),
    ({"item_id": None}, r"column 'item_id' row 2: a 'click' event needs an item id"),
])
def test_bad_events_are_refused(tmp_path: Path, row: dict, message: str) -> None:
    events = [dict(e) for e in EVENTS]
    events[1].update(row)
    with pytest.raises(DataError, match=message):
        load_files(write(tmp_path / "cat.jsonl", CATALOGUE), write(tmp_path / "ev.jsonl", events))


def test_missing_event_column_and_bad_json_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"events are missing column\(s\) \['event'\]"):
        load_files(write(tmp_path / "c.csv", CATALOGUE),
                   write(tmp_path / "e.csv", [{k: v for k, v in e.items() if k != "event"}
                                              for e in EVENTS]))
    bad = tmp_path / "e.jsonl"
    bad.write_text(json.dumps(EVENTS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"e.jsonl line 2: not valid JSON"):
        load_files(write(tmp_path / "c.csv", CATALOGUE), bad)
    (tmp_path / "e.xml").write_text("<events/>")
    with pytest.raises(DataError, match=r"unsupported extension '.xml'"):
        load_files(tmp_path / "c.csv", tmp_path / "e.xml")


def test_unknown_items_are_counted_reported_and_dropped(caplog) -> None:
    events = pd.DataFrame(EVENTS + [{"user_id": "u3", "item_id": "ZZ", "ts": 1, "event": "view"}])
    with caplog.at_level("WARNING"):
        kept, report = validate_events(events, "ev.csv", pd.Index(list("ABCD")))
    assert report == {"events_in": 9, "unknown_item_events_dropped": 1, "events_out": 8}
    assert "ZZ" not in set(kept["item_id"].dropna())
    assert "dropped 1 event(s) naming 1 item id(s) not in the catalogue" in caplog.text


def test_unknown_source_and_missing_folder() -> None:
    with pytest.raises(DataError, match=r"data.source must be one of"):
        load_dataset("csv")
    with pytest.raises(DataError, match=r"folder not found; expected the UniSRec files"):
        load_dataset("amazon_unisrec", root="/nonexistent/amazon")


def _toy_split(tmp_path: Path, share: float = 0.0):
    data = load_files(write(tmp_path / "c.csv", CATALOGUE), write(tmp_path / "e.csv", EVENTS))
    return data, split_dataset(data, protocol="loo", new_item_share=share, seed=0)


def test_loo_split_on_a_hand_case(tmp_path: Path) -> None:
    _, split = _toy_split(tmp_path)
    test = split.test.set_index("user_id")
    assert test.loc["u1", "target"] == "D" and test.loc["u1", "hist_items"] == [None, "A", "B", "C"]
    assert test.loc["u1", "hist_types"][0] == "search"
    assert split.valid.set_index("user_id").loc["u2", "target"] == "C"
    # u1 trains on A (after the search) and B; u2 on nothing (its 2nd item is valid)
    assert sorted(split.train["target"]) == ["A", "B"]
    assert split.item_popularity.to_dict() == {"A": 1, "B": 2, "C": 0, "D": 0}
    assert test.loc["u1", "user_segment"] == "cold_user"  # 3 item events + a search
    assert test.loc["u1", "target_segment"] == "unseen"  # no training interaction, not held out
    assert test.loc["u1", "target_ts"] == 5 and split.cut_ts == 2  # u2's valid target


def test_segments_and_truncation() -> None:
    assert [user_segment(n) for n in (0, 1, 3, 4)] == ["new_user", "cold_user", "cold_user",
                                                      "warm_user"]
    frame = pd.DataFrame({"user_id": ["u"], "hist_items": [[None, "A", "B", "C"]],
                          "hist_types": [["search", "click", "view", "cart"]],
                          "hist_queries": [["q", None, None, None]], "target": ["D"],
                          "user_segment": ["cold_user"]})
    cut = truncate_history(frame, 2)
    assert cut["hist_items"][0] == ["B", "C"] and cut["user_segment"][0] == "cold_user"


def _invariants(split) -> None:
    """No held-out target or later event leaks into training; new items never train or
    validate; text from tags never comes from after the training cut."""
    train_items = {i for h in split.train["hist_items"] for i in h} | set(split.train["target"])
    valid_items = {i for h in split.valid["hist_items"] for i in h} | set(split.valid["target"])
    assert not (train_items & split.new_items) and not (valid_items & split.new_items)
    assert not (set(split.train_events["item_id"].dropna()) & split.new_items)
    assert (split.item_popularity.reindex(list(split.new_items)) == 0).all()
    valid_ts = split.valid.groupby("user_id")["target_ts"].min()
    test_ts = split.test.groupby("user_id")["target_ts"].min()
    held_ts = pd.concat([valid_ts, test_ts]).groupby(level=0).min()  # a user's first held target
    if split.protocol == "loo":
        # each user's training events and training targets end before that user's validation
        # and test targets
        last_event = split.train_events.groupby("user_id")["ts"].max()
        last_target = split.train.groupby("user_id")["target_ts"].max()
        for last in (last_event, last_target):
            users = last.index.intersection(held_ts.index)
            assert len(users) > 0
            assert (last[users] < held_ts[users]).all()
    else:
        assert (split.train_events["ts"] < split.cut_ts).all()
        assert (split.train["target_ts"] < split.cut_ts).all()
        assert (split.valid["target_ts"] >= split.cut_ts).all()
        assert split.test["target_ts"].min() >= split.valid["target_ts"].min()
    if split.item_tags is not None:
        assert (split.item_tags["ts"] < split.cut_ts).all()
    assert set(split.test["target_segment"]) <= {"head", "long_tail", "new", "unseen"}
    assert set(split.test.loc[split.test["target"].isin(split.new_items), "target_segment"]) \
        <= {"new"}


def test_new_item_holdout_invariants(tmp_path: Path) -> None:
    data = load_dataset("synthetic", n_items=300, n_users=200, seed=3)
    split = split_dataset(data, new_item_share=0.2, seed=1)
    assert len(split.new_items) == 60
    _invariants(split)
    again = split_dataset(data, new_item_share=0.2, seed=1)
    assert again.new_items == split.new_items
    assert split_dataset(data, new_item_share=0.2, seed=2).new_items != split.new_items


def test_ranker_items_stay_out_of_the_towers_training_only() -> None:
    data = load_dataset("synthetic", n_items=300, n_users=200, seed=3)
    split = split_dataset(data, new_item_share=0.1, ranker_item_share=0.1, seed=1)
    assert len(split.ranker_items) == 30 and not (split.ranker_items & split.new_items)
    # the new items are the same as without a ranker share (drawn first)
    assert split.new_items == split_dataset(data, new_item_share=0.1, seed=1).new_items
    train_items = {i for h in split.train["hist_items"] for i in h} | set(split.train["target"])
    assert not (train_items & split.ranker_items)
    assert not (set(split.train_events["item_id"].dropna()) & split.ranker_items)
    assert (split.item_popularity.reindex(list(split.ranker_items)) == 0).all()
    assert split.valid["target"].isin(split.ranker_items).any()  # validation keeps them
    rows = split.ranker_train
    assert len(rows) > 0 and rows["target"].isin(split.ranker_items).all()
    assert not ({i for h in rows["hist_items"] for i in h} & split.new_items)
    assert set(rows["target_segment"]) == {"unseen"}
    assert split.fingerprint != split_dataset(data, new_item_share=0.1, seed=1).fingerprint
    _invariants(split)


@needs_amazon
def test_amazon_scientific_reproduces_the_unisrec_split() -> None:
    data = load_dataset("amazon_unisrec", root=str(AMAZON))
    assert data.events["user_id"].nunique() == 8442 and len(data.catalogue) == 4385
    assert len(data.events) == 59427  # the published interaction count
    assert (data.catalogue["title"].str.len() > 0).all()
    split = split_dataset(data, new_item_share=0.0)
    for name in ("train", "valid", "test"):
        ours = getattr(split, name)
        theirs = data.predefined[name]
        key = lambda f: set(zip(f["user_id"], f["hist_items"].map(tuple), f["target"]))  # noqa: E731
        assert len(ours) == len(theirs) and key(ours) == key(theirs), name
    _invariants(split_dataset(data, new_item_share=0.1))


@needs_movielens
def test_movielens_counts_and_time_split() -> None:
    data = load_dataset("movielens", root=str(MOVIELENS))
    assert data.events["user_id"].nunique() == 671 and len(data.catalogue) == 9125
    assert "Animation" in data.catalogue.set_index("item_id").loc["1", "category"]
    split = split_dataset(data, protocol="time", new_item_share=0.1)
    assert split.test["target"].isin(data.catalogue["item_id"]).all()
    # the time cut: every training event and target before it, every valid/test target after
    assert split.train_events["ts"].max() < split.cut_ts <= split.valid["target_ts"].min()
    assert split.valid["target_ts"].max() <= split.test["target_ts"].min()
    assert len(split.test) > 9000 and set(split.test["target_segment"]) == {
        "head", "long_tail", "new", "unseen"}
    _invariants(split)


@needs_movielens
def test_movielens_item_text_holds_no_tag_from_after_the_training_cut() -> None:
    data = load_dataset("movielens", root=str(MOVIELENS))
    split = split_dataset(data, protocol="time", new_item_share=0.1)
    late = data.item_tags.loc[data.item_tags["ts"] >= split.cut_ts]
    early = data.item_tags.loc[data.item_tags["ts"] < split.cut_ts]
    assert len(late) > len(early) > 0  # most MovieLens tags are written after the cut
    texts = dict(zip(split.catalogue["item_id"], split.catalogue["attributes"]))
    only_late = set(late["item_id"]) - set(early["item_id"])
    assert only_late and all(texts[i] is None for i in only_late)
    for item_id, tags in texts.items():
        if isinstance(tags, dict):
            words = set(tags["tags"].split(", "))
            assert words <= set(early.loc[early["item_id"] == item_id, "tag"]), item_id


def test_tags_after_the_cut_never_reach_item_text(tmp_path: Path) -> None:
    tags = [{"item_id": "A", "tag": "Optics", "ts": 1, "user_id": "u9"},
            {"item_id": "A", "tag": "spoiler", "ts": 2, "user_id": "u2"},  # at the cut
            {"item_id": "D", "tag": "future", "ts": 9, "user_id": "u1"},
            {"item_id": "Z", "tag": "unknown item", "ts": 1}]
    data = load_files(write(tmp_path / "c.csv", CATALOGUE), write(tmp_path / "e.csv", EVENTS),
                      tags=write(tmp_path / "t.csv", tags))
    split = split_dataset(data, protocol="loo", new_item_share=0.0)
    assert split.cut_ts == 2
    texts = dict(zip(split.catalogue["item_id"], catalogue_texts(split.catalogue)))
    assert "tags: optics" in texts["A"] and "spoiler" not in texts["A"]
    assert "future" not in texts["D"]
    assert split.item_tags["tag"].tolist() == ["optics"]
    with pytest.raises(DataError, match="column 'ts' row 1"):
        load_files(write(tmp_path / "c2.csv", CATALOGUE), write(tmp_path / "e2.csv", EVENTS),
                   tags=write(tmp_path / "t2.csv", [{"item_id": "A", "tag": "x", "ts": "soon"}]))


def test_distinct_targets_are_never_in_their_context() -> None:
    data = load_dataset("synthetic", n_items=300, n_users=200, seed=3)
    plain = split_dataset(data, new_item_share=0.0)
    distinct = split_dataset(data, new_item_share=0.0, distinct_targets=True)
    repeats = lambda f: sum(t in h for t, h in zip(f["target"], f["hist_items"]))  # noqa: E731
    assert repeats(plain.test) > 0  # the synthetic shop has view -> click -> cart chains
    for frame in (distinct.train, distinct.valid, distinct.test):
        assert repeats(frame) == 0
    _invariants(split_dataset(data, new_item_share=0.2, distinct_targets=True))
