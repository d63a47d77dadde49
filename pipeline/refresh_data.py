"""Training examples for an incremental refresh: the event log's events since the last refresh.

Each logged user's item events, in log order (``seq``), form one sequence. An item event whose
``seq`` is past the last refresh and that is the first event of its item in that user's
sequence (the serving task: the next *new* item) is a target, with every earlier event of the
user (already trained on or not) as its context, cut to the last ``history_cap``. Events on
items the towers do not hold (added live since training) are dropped from targets and
contexts, and counted; search events have no stored text and never appear. For a before/after
measure, the last target of every ``holdout_every``-th user (by a stable hash of the
pseudonym) is held out of training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from recdata.schema import EXAMPLE_COLUMNS
from recdata.splits import user_segment

DEFAULT_HISTORY_CAP = 50
DEFAULT_HOLDOUT_EVERY = 10


@dataclass
class RefreshExamples:
    """What a refresh trains on and measures with (EXAMPLE_COLUMNS frames)."""

    train: pd.DataFrame
    holdout: pd.DataFrame
    last_seq: int  # the highest seq read: the next refresh starts after it
    report: dict[str, int] = field(default_factory=dict)


def _held_out(user_id: str, every: int) -> bool:
    return every > 0 and int(hashlib.sha1(user_id.encode()).hexdigest()[:8], 16) % every == 0


def refresh_examples(events: pd.DataFrame, since_seq: int, item_index: Mapping[str, int],
                     history_cap: int = DEFAULT_HISTORY_CAP,
                     holdout_every: int = DEFAULT_HOLDOUT_EVERY) -> RefreshExamples:
    """Examples from log events (``recdata.eventlog.read_events``: user_id, item_id, event,
    seq, ...) whose target has ``seq > since_seq``."""
    items = events.loc[events["event"] != "search"]
    known = items["item_id"].isin(list(item_index))
    report = {"events_read": int(len(events)),
              "new_events": int((pd.to_numeric(events["seq"]) > since_seq).sum()),
              "unknown_item_events_dropped": int((~known).sum()),
              "search_events_skipped": int((events["event"] == "search").sum())}
    items = items.loc[known].sort_values("seq", kind="stable")
    train_rows: list[tuple] = []
    holdout_rows: list[tuple] = []
    for user_id, group in items.groupby("user_id", sort=True):
        seq_items, types = group["item_id"].tolist(), group["event"].tolist()
        seqs = group["seq"].astype(int).tolist()
        seen: set[str] = set()
        rows = []
        for pos, (item_id, seq) in enumerate(zip(seq_items, seqs)):
            first = item_id not in seen
            seen.add(item_id)
            if pos == 0 or not first or seq <= since_seq:
                continue
            start = max(0, pos - history_cap)
            rows.append((user_id, seq_items[start:pos], types[start:pos],
                         [None] * (pos - start), item_id))
        if rows and len(rows) >= 2 and _held_out(str(user_id), holdout_every):
            holdout_rows.append(rows.pop())
        train_rows.extend(rows)
    train = pd.DataFrame(train_rows, columns=list(EXAMPLE_COLUMNS))
    holdout = pd.DataFrame(holdout_rows, columns=list(EXAMPLE_COLUMNS))
    holdout["user_segment"] = [user_segment(len(h)) for h in holdout["hist_items"]]
    report.update(train_examples=len(train), holdout_examples=len(holdout))
    last_seq = int(pd.to_numeric(events["seq"]).max()) if len(events) else since_seq
    return RefreshExamples(train, holdout, max(last_seq, since_seq), report)
