"""Tests of the synthetic default dataset: contract, determinism, shape of the behaviour."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recdata.schema import EVENT_TYPES, Dataset
from recdata.synthetic import DAY, MIN_SESSION_GAP, generate_synthetic
from recdata.synthetic_vocab import BRANDS, DEPARTMENTS

CATALOGUE_COLUMNS = ["item_id", "title", "category", "brand", "description", "attributes",
                     "created_ts"]
EVENTS_COLUMNS = ["user_id", "item_id", "ts", "event", "query", "weight"]


@pytest.fixture(scope="module")
def default() -> Dataset:
    return generate_synthetic()


def _item_events(ds: Dataset) -> pd.DataFrame:
    return ds.events[ds.events["item_id"].notna()]


def _item_counts(ds: Dataset) -> pd.Series:
    """Interactions per catalogue item, 0 for none, in catalogue order."""
    counts = _item_events(ds)["item_id"].value_counts()
    return counts.reindex(ds.catalogue["item_id"], fill_value=0)


def _session_ids(events: pd.DataFrame) -> np.ndarray:
    """A running session number: a new user or a pause of at least MIN_SESSION_GAP starts one."""
    new_user = events["user_id"].ne(events["user_id"].shift()).to_numpy()
    pause = events["ts"].diff().fillna(0).to_numpy() >= MIN_SESSION_GAP
    return np.cumsum(new_user | pause)


def test_same_seed_gives_identical_frames_and_another_seed_does_not() -> None:
    first = generate_synthetic(n_items=300, n_users=80, seed=3)
    again = generate_synthetic(n_items=300, n_users=80, seed=3)
    other = generate_synthetic(n_items=300, n_users=80, seed=4)
    pd.testing.assert_frame_equal(first.catalogue, again.catalogue)
    pd.testing.assert_frame_equal(first.events, again.events)
    assert first.report == again.report
    assert not first.catalogue["title"].equals(other.catalogue["title"])
    assert not first.events[["item_id", "ts"]].equals(other.events[["item_id", "ts"]])


def test_sizes_follow_arguments() -> None:
    ds = generate_synthetic(n_items=200, n_users=50, seed=1, late_item_share=0.1,
                            sessions_per_user=(2, 2))
    assert len(ds.catalogue) == 200
    assert ds.events["user_id"].nunique() == 50
    assert ds.report["late_items"] == 20
    sessions_per_user = pd.Series(_session_ids(ds.events)).groupby(
        ds.events["user_id"].to_numpy()).nunique()
    assert (sessions_per_user == 2).all()


def test_dataset_name_report_and_schema(default: Dataset) -> None:
    cat, ev = default.catalogue, default.events
    assert default.name == "synthetic" and default.predefined is None
    assert list(cat.columns) == CATALOGUE_COLUMNS
    assert list(ev.columns) == EVENTS_COLUMNS
    assert cat["created_ts"].dtype == np.int64 and ev["ts"].dtype == np.int64
    assert (ev["weight"] == 1.0).all()
    assert all(isinstance(a, dict) and a for a in cat["attributes"])
    assert default.report["events_out"] == len(ev)
    assert default.report["unknown_item_events_dropped"] == 0


def test_ids_unique_and_well_formed(default: Dataset) -> None:
    cat, ev = default.catalogue, default.events
    assert cat["item_id"].is_unique
    assert cat["item_id"].str.fullmatch(r"I\d{5}").all()
    assert ev["user_id"].str.fullmatch(r"U\d{4}").all()
    assert ev["user_id"].nunique() == 1000


def test_items_carry_text_from_their_category(default: Dataset) -> None:
    cat = default.catalogue
    assert (cat["title"].str.strip() != "").all()
    assert (cat["description"].str.len() > 20).all()
    depts = cat["category"].str.split(" > ").str[0]
    subs = cat["category"].str.split(" > ").str[1]
    assert all(sub in DEPARTMENTS[dept] for dept, sub in zip(depts, subs))
    assert all(brand in BRANDS[dept] for brand, dept in zip(cat["brand"], depts))
    assert all(title.startswith(brand) for title, brand in zip(cat["title"], cat["brand"]))
    # Each title names one of its own subcategory's product nouns.
    for title, dept, sub in zip(cat["title"].str.lower(), depts, subs):
        nouns = DEPARTMENTS[dept][sub]["nouns"].lower().split("|")
        assert any(noun in title for noun in nouns), title
    assert depts.nunique() == len(DEPARTMENTS)


def test_every_event_item_is_in_the_catalogue(default: Dataset) -> None:
    assert _item_events(default)["item_id"].isin(default.catalogue["item_id"]).all()


def test_ts_strictly_increasing_per_user_over_about_90_days(default: Dataset) -> None:
    ev = default.events
    same_user = ev["user_id"].eq(ev["user_id"].shift())
    assert (ev["ts"].diff()[same_user] > 0).all()
    assert 80 * DAY < ev["ts"].max() - ev["ts"].min() < 100 * DAY


def test_event_types_and_mix(default: Dataset) -> None:
    share = default.events["event"].value_counts(normalize=True)
    assert set(share.index) == {"view", "click", "cart", "purchase", "search"}
    assert set(share.index) <= set(EVENT_TYPES)
    assert 0.30 < share["view"] < 0.50
    assert 0.25 < share["click"] < 0.45
    assert 0.05 < share["cart"] < 0.15
    assert 0.03 < share["purchase"] < 0.10
    assert 0.05 < share["search"] < 0.14


def test_search_events_have_a_query_and_no_item(default: Dataset) -> None:
    ev = default.events
    search = ev["event"] == "search"
    assert ev.loc[search, "item_id"].isna().all()
    assert ev.loc[search, "query"].map(lambda q: isinstance(q, str) and q.strip() != "").all()
    assert ev.loc[~search, "query"].isna().all()
    assert ev.loc[~search, "item_id"].notna().all()


def test_search_query_names_the_next_item(default: Dataset) -> None:
    ev = default.events
    titles = dict(zip(default.catalogue["item_id"], default.catalogue["title"].str.lower()))
    search = (ev["event"] == "search").to_numpy()
    next_item = ev["item_id"].shift(-1)[search]
    assert next_item.notna().all(), "a search is always followed by an item of the same user"
    matches = [all(word in titles[item] for word in query.split())
               for query, item in zip(ev.loc[search, "query"], next_item)]
    assert np.mean(matches) > 0.9


def test_cart_follows_click_and_purchase_follows_cart_in_the_session(default: Dataset) -> None:
    ev = default.events.assign(session=_session_ids(default.events))
    for _, session in ev.groupby("session"):
        clicked: set[str] = set()
        carted: set[str] = set()
        for kind, item in zip(session["event"], session["item_id"]):
            if kind == "click":
                clicked.add(item)
            elif kind == "cart":
                assert item in clicked
                carted.add(item)
            elif kind == "purchase":
                assert item in carted


def test_events_per_user_have_cold_and_warm_users(default: Dataset) -> None:
    per_user = _item_events(default).groupby("user_id").size()
    assert per_user.min() >= 3
    assert 8 <= per_user.median() <= 12
    assert per_user.max() >= 40
    assert (per_user <= 5).mean() > 0.15  # enough cold users for leave-one-out


def test_no_item_is_seen_before_it_exists(default: Dataset) -> None:
    events = _item_events(default)
    created = default.catalogue.set_index("item_id")["created_ts"]
    assert (events["ts"].to_numpy() >= created.loc[events["item_id"]].to_numpy()).all()


def test_late_items_are_new_and_almost_never_seen(default: Dataset) -> None:
    cat, ev = default.catalogue, default.events
    late = cat["created_ts"].to_numpy() > np.quantile(ev["ts"], 0.8)
    assert late.sum() == default.report["late_items"] == round(0.08 * len(cat))
    late_counts = _item_counts(default).to_numpy()[late]
    assert (late_counts == 0).mean() >= 0.8
    assert late_counts.sum() < 0.01 * len(_item_events(default))


def test_no_late_items_when_share_is_zero() -> None:
    ds = generate_synthetic(n_items=200, n_users=40, late_item_share=0.0)
    assert ds.report["late_items"] == 0
    assert (ds.catalogue["created_ts"] < ds.events["ts"].min()).all()


def _top_decile_share(counts: pd.Series) -> float:
    ordered = np.sort(counts.to_numpy())[::-1]
    return float(ordered[: len(ordered) // 10].sum() / ordered.sum())


def test_popularity_has_a_long_tail(default: Dataset) -> None:
    counts = _item_counts(default)
    assert (counts <= 3).mean() > 0.3
    assert _top_decile_share(counts) > 0.35


def test_zipf_a_controls_the_head() -> None:
    flat = generate_synthetic(n_items=400, n_users=300, zipf_a=0.0)
    steep = generate_synthetic(n_items=400, n_users=300, zipf_a=1.5)
    assert _top_decile_share(_item_counts(steep)) > _top_decile_share(_item_counts(flat)) + 0.1


def test_next_item_is_predictable_from_the_session(default: Dataset) -> None:
    """Consecutive views/clicks mostly share a subcategory, far above what popularity predicts."""
    ev = default.events[default.events["event"].isin(["view", "click"])]
    sub = ev["item_id"].map(dict(zip(default.catalogue["item_id"], default.catalogue["category"])))
    same_user = ev["user_id"].eq(ev["user_id"].shift()).to_numpy()
    same_sub = (sub.to_numpy()[1:] == sub.to_numpy()[:-1])[same_user[1:]]
    popularity_baseline = float((sub.value_counts(normalize=True) ** 2).sum())
    assert same_sub.mean() > 0.5
    assert same_sub.mean() > 5 * popularity_baseline


@pytest.mark.parametrize("kwargs", [
    {"n_items": 0},
    {"n_users": 0},
    {"late_item_share": 1.0},
    {"late_item_share": -0.1},
    {"n_items": 2, "late_item_share": 0.9},
    {"sessions_per_user": (0, 2)},
    {"sessions_per_user": (3, 2)},
    {"zipf_a": -1.0},
])
def test_bad_arguments_raise_with_the_argument_named(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        generate_synthetic(**kwargs)
