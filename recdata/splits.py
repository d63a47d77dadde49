"""Splits (leave-one-out and global time), the new-item holdout, and segment labels.

Definitions (also in the README):
- context = the events before the target, cut to the last ``history_cap``; its *item events*
  are the non-search ones.
- user segment: ``new_user`` 0 item events in the context (a search query at most),
  ``cold_user`` 1-3, ``warm_user`` more than 3.
- target segment: ``new`` the item is one of the seeded held-out items (never in training),
  ``unseen`` any other item without a training interaction (e.g. first bought after the
  cut), ``head`` the most popular items that together hold ``head_share`` (default 80%) of the
  training interactions, ``long_tail`` every other item with training interactions.
- training cut (``cut_ts``): the time protocol's validation cut; under ``loo`` the earliest
  validation or test target's ``ts``. Time-stamped item text (tags) written at or after it is
  left out of the split's catalogue.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd

from recdata.schema import EXAMPLE_COLUMNS, DataError, Dataset, SplitData

log = logging.getLogger(__name__)
PROTOCOLS = ("loo", "time")


def user_segment(n_item_events: int) -> str:
    """new_user (0 item events), cold_user (1-3), warm_user (more)."""
    return "new_user" if n_item_events == 0 else "cold_user" if n_item_events <= 3 else "warm_user"


def _user_sequences(events: pd.DataFrame) -> Iterable[tuple[str, list, list, list, np.ndarray]]:
    """Per user: item ids, event types, queries and timestamps, chronological."""
    for user_id, group in events.groupby("user_id", sort=True):
        yield (user_id, group["item_id"].tolist(), group["event"].tolist(),
               group["query"].tolist(), group["ts"].to_numpy())


def _example(user: str, items: list, types: list, queries: list, ts: np.ndarray, pos: int,
             cap: int) -> tuple:
    start = max(0, pos - cap)
    return (user, items[start:pos], types[start:pos], queries[start:pos], items[pos],
            int(ts[pos]))


def _frame(rows: list[tuple]) -> pd.DataFrame:
    """Example rows: EXAMPLE_COLUMNS plus ``target_ts``, the target event's ``ts``."""
    return pd.DataFrame(rows, columns=[*EXAMPLE_COLUMNS, "target_ts"])


def _target_positions(items: list, types: list, distinct: bool) -> list[int]:
    """Positions of the item events that can be targets; with ``distinct``, only an item's
    first event in the user's sequence (a view -> click -> cart of one item is one target)."""
    seen: set = set()
    positions = []
    for pos, (item, kind) in enumerate(zip(items, types)):
        if kind == "search" or (distinct and item in seen):
            continue
        seen.add(item)
        positions.append(pos)
    return positions


def _loo_rows(events: pd.DataFrame, cap: int, distinct: bool
              ) -> tuple[list, list, list, pd.Index, int | None]:
    """Leave-one-out: each user's last target-able item event is test, the one before it valid,
    the rest (with a non-empty context) train. Users with fewer than 3 only train. Also returns
    the earliest valid/test target ``ts`` (None when there is none)."""
    train, valid, test, cut_index, first_held = [], [], [], [], None
    for user, items, types, queries, ts in _user_sequences(events):
        item_pos = _target_positions(items, types, distinct)
        targets = item_pos[:-2] if len(item_pos) >= 3 else item_pos
        if len(item_pos) >= 3:
            valid.append(_example(user, items, types, queries, ts, item_pos[-2], cap))
            test.append(_example(user, items, types, queries, ts, item_pos[-1], cap))
            held = int(ts[item_pos[-2]])
            first_held = held if first_held is None else min(first_held, held)
        train.extend(_example(user, items, types, queries, ts, p, cap)
                     for p in targets if p > 0)
        cut_index.append((user, item_pos[-2] if len(item_pos) >= 3 else len(items)))
    return train, valid, test, pd.Index(cut_index), first_held


def _time_rows(events: pd.DataFrame, cap: int, valid_frac: float, test_frac: float,
               distinct: bool) -> tuple[list, list, list, int]:
    """Global time split at the event-time quantiles: item events before the valid cut are
    training targets, those in the valid window validation targets, those after the test cut
    test targets; each with the user's earlier events (any window) as context."""
    t_valid, t_test = np.quantile(events["ts"].to_numpy(), [1 - valid_frac - test_frac,
                                                            1 - test_frac])
    train, valid, test = [], [], []
    for user, items, types, queries, ts in _user_sequences(events):
        for pos in _target_positions(items, types, distinct):
            if pos == 0:
                continue
            t = ts[pos]
            rows = train if t < t_valid else valid if t < t_test else test
            rows.append(_example(user, items, types, queries, ts, pos, cap))
    # ts are integers, so t < t_valid <=> t < ceil(t_valid): the training events and the
    # training targets are cut at the same instant
    return train, valid, test, int(np.ceil(t_valid))


def _drop_items(frame: pd.DataFrame, items: frozenset[str], keep_targets: bool) -> pd.DataFrame:
    """Remove the given items from every context (and their rows as targets unless kept);
    rows left with an empty context are dropped."""
    if not items:
        return frame
    out = frame if keep_targets else frame.loc[~frame["target"].isin(items)]
    keep = out["hist_items"].map(lambda h: [i not in items for i in h])
    out = out.assign(**{col: [[v for v, k in zip(vals, mask) if k]
                              for vals, mask in zip(out[col], keep)]
                        for col in ("hist_items", "hist_types", "hist_queries")})
    return out.loc[out["hist_items"].map(len) > 0].reset_index(drop=True)


def head_items(popularity: pd.Series, head_share: float) -> frozenset[str]:
    """The most popular items that together hold ``head_share`` of training interactions."""
    ranked = popularity[popularity > 0].sort_values(ascending=False, kind="stable")
    if ranked.empty:
        return frozenset()
    cum = ranked.cumsum() / ranked.sum()
    n_head = int(np.searchsorted(cum.to_numpy(), head_share) + 1)
    return frozenset(ranked.index[:n_head])


def label_segments(frame: pd.DataFrame, popularity: pd.Series, head: frozenset[str],
                   new_items: frozenset[str] = frozenset()) -> pd.DataFrame:
    """Add user_segment and target_segment columns to an example frame (module docstring)."""
    n_items = frame["hist_types"].map(lambda t: sum(k != "search" for k in t))
    pop = frame["target"].map(popularity).fillna(0)
    target_seg = np.where(frame["target"].isin(new_items), "new",
                          np.where(pop == 0, "unseen",
                                   np.where(frame["target"].isin(head), "head", "long_tail")))
    return frame.assign(user_segment=n_items.map(user_segment), target_segment=target_seg)


TOP_TAGS = 8  # an item's most frequent tags (before the cut) become its text attribute "tags"


def fold_tags(catalogue: pd.DataFrame, tags: pd.DataFrame | None, top: int = TOP_TAGS
              ) -> pd.DataFrame:
    """The catalogue with each item's ``top`` most frequent ``tags`` (ties by name) added to
    its ``attributes`` as ``{"tags": "a, b"}``; items without tags are unchanged."""
    if tags is None or tags.empty:
        return catalogue
    ranked = (tags.groupby(["item_id", "tag"]).size().rename("n").reset_index()
              .sort_values(["item_id", "n", "tag"], ascending=[True, False, True])
              .groupby("item_id")["tag"].agg(lambda t: ", ".join(list(t)[:top])))

    def merged(item_id: str, attributes: object) -> object:
        if item_id not in ranked.index:
            return attributes
        base = dict(attributes) if isinstance(attributes, dict) else {}
        return {**base, "tags": ranked[item_id]}

    return catalogue.assign(attributes=[merged(i, a) for i, a in
                                        zip(catalogue["item_id"], catalogue["attributes"])])


def split_fingerprint(dataset: Dataset, settings: dict, new_items: frozenset[str]) -> str:
    """sha256 (hex, 16 chars) of the data (catalogue ids, events, tags), the split settings
    (seed included) and the held-out item set: equal iff two splits hold the same rows."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"name": dataset.name, **settings}, sort_keys=True,
                             default=str).encode())
    digest.update(json.dumps(sorted(new_items)).encode())
    digest.update(pd.util.hash_pandas_object(dataset.catalogue["item_id"], index=False)
                  .to_numpy().tobytes())
    columns = ["user_id", "item_id", "ts", "event", "query"]
    digest.update(pd.util.hash_pandas_object(dataset.events[columns], index=False)
                  .to_numpy().tobytes())
    if dataset.item_tags is not None:
        digest.update(pd.util.hash_pandas_object(dataset.item_tags, index=False)
                      .to_numpy().tobytes())
    return digest.hexdigest()[:16]


def split_dataset(
    dataset: Dataset,
    protocol: str = "loo",
    history_cap: int = 50,
    new_item_share: float = 0.1,
    head_share: float = 0.8,
    seed: int = 0,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    distinct_targets: bool = False,
    ranker_item_share: float = 0.0,
) -> SplitData:
    """Split a dataset into train / valid / test examples with segment labels.

    ``new_item_share`` of the catalogue (seeded) is held out: every interaction with those
    items is removed from training and validation (targets and contexts), while the items stay
    in the catalogue with their text; test keeps them, as targets labelled ``new``.
    ``ranker_item_share`` of the remaining items (drawn after the new items, so those do not
    change) is kept out of the *towers'* training the same way, but not out of validation:
    their training-period rows become ``ranker_train`` and, with the validation rows, teach
    the ranking stage how items the towers never saw behave (docs/architecture.md, Lessons:
    a ranker fitted on warm targets only learns "popular = likely" and drops new items).
    ``distinct_targets``: only an item's first event in a user's sequence is a target (the
    next *new* item; repeats stay in the contexts) — the serving task, where history items are
    excluded from recommendations. Off for the UniSRec files, whose split it must reproduce.
    """
    if protocol not in PROTOCOLS:
        raise DataError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    if not 0.0 <= new_item_share < 1.0 or not 0.0 <= ranker_item_share < 1.0 \
            or new_item_share + ranker_item_share >= 1.0:
        raise DataError(f"new_item_share and ranker_item_share must be in [0, 1) with a sum "
                        f"below 1, got {new_item_share} and {ranker_item_share}")
    events = dataset.events
    if protocol == "loo":
        train, valid, test, cuts, cut_ts = _loo_rows(events, history_cap, distinct_targets)
        cut_at = dict(cuts)
        pos_in_user = events.groupby("user_id").cumcount().to_numpy()
        before = pos_in_user < events["user_id"].map(cut_at).to_numpy()
    else:
        if events["ts"].nunique() < 3:
            raise DataError(f"{dataset.name}: the 'time' protocol needs timestamps; use 'loo'")
        train, valid, test, cut_ts = _time_rows(events, history_cap, valid_frac, test_frac,
                                                distinct_targets)
        before = (events["ts"] < cut_ts).to_numpy()
    tags = dataset.item_tags
    if tags is not None and cut_ts is not None:
        tags = tags.loc[tags["ts"] < cut_ts].reset_index(drop=True)
    catalogue = fold_tags(dataset.catalogue, tags)
    rng = np.random.default_rng(seed)
    n_new = int(round(new_item_share * len(catalogue)))
    new_items = frozenset(rng.choice(catalogue["item_id"].to_numpy(), n_new, replace=False)
                          .tolist()) if n_new else frozenset()
    n_ranker = int(round(ranker_item_share * len(catalogue)))
    rest = catalogue.loc[~catalogue["item_id"].isin(new_items), "item_id"].to_numpy()
    ranker_items = frozenset(rng.choice(rest, n_ranker, replace=False).tolist()) \
        if n_ranker else frozenset()
    unseen_by_towers = new_items | ranker_items
    train_events = events.loc[before & ~events["item_id"].isin(unseen_by_towers)
                              ].reset_index(drop=True)
    popularity = (train_events.loc[train_events["event"] != "search", "item_id"].value_counts()
                  .reindex(catalogue["item_id"], fill_value=0).astype("int64"))
    head = head_items(popularity, head_share)
    long_tail = frozenset(popularity.index[(popularity > 0)]) - head
    all_train = _frame(train)
    train_df = _drop_items(all_train, unseen_by_towers, keep_targets=False)
    ranker_df = _drop_items(all_train.loc[all_train["target"].isin(ranker_items)], new_items,
                            keep_targets=True)
    valid_df = _drop_items(_frame(valid), new_items, keep_targets=False)
    test_df = _frame(test)
    settings = {"protocol": protocol, "history_cap": history_cap,
                "new_item_share": new_item_share, "head_share": head_share, "seed": seed,
                "valid_frac": valid_frac, "test_frac": test_frac,
                "distinct_targets": distinct_targets, "ranker_item_share": ranker_item_share}
    return SplitData(
        catalogue=catalogue, train_events=train_events, train=train_df,
        valid=label_segments(valid_df, popularity, head, new_items),
        test=label_segments(test_df, popularity, head, new_items),
        item_popularity=popularity, new_items=new_items, long_tail=long_tail, protocol=protocol,
        relations=dataset.relations,
        item_tags=tags, cut_ts=None if cut_ts is None else int(cut_ts),
        fingerprint=split_fingerprint(dataset, settings, unseen_by_towers),
        ranker_items=ranker_items,
        ranker_train=label_segments(ranker_df, popularity, head, new_items),
    )


def truncate_history(examples: pd.DataFrame, n_item_events: int) -> pd.DataFrame:
    """Keep each context's last ``n_item_events`` item events (and searches among them),
    simulating cold users from longer histories; rows with fewer are kept as they are."""
    def cut(types: list[str]) -> int:
        seen = 0
        for back, kind in enumerate(reversed(types)):
            seen += kind != "search"
            if seen == n_item_events:
                return len(types) - back - 1
        return 0

    starts = examples["hist_types"].map(cut)
    out = examples.assign(**{col: [v[s:] for v, s in zip(examples[col], starts)]
                             for col in ("hist_items", "hist_types", "hist_queries")})
    if "user_segment" in out.columns:
        counts = out["hist_types"].map(lambda t: sum(k != "search" for k in t))
        out["user_segment"] = counts.map(user_segment)
    return out
