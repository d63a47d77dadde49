"""The incremental refresh (pipeline/): examples from the event log since the last refresh,
warm-start fine-tuning of the towers, and the catalogue vectors of the result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine import load_catalogue
from pipeline.finetune import catalogue_vectors, fine_tune
from pipeline.refresh_data import refresh_examples


def log_frame(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    """(user, item, seq) -> read_events-shaped frame (search when item is None)."""
    return pd.DataFrame([{"user_id": u, "item_id": i, "ts": s, "seq": s, "weight": 1.0,
                          "event": "search" if i is None else "click", "query": None}
                         for u, i, s in rows])


def test_examples_are_the_new_first_events_with_all_earlier_context() -> None:
    index = {f"I{n}": n for n in range(6)}
    events = log_frame([("a", "I0", 1), ("a", "I1", 2), ("b", "I2", 3), ("a", "I1", 4),
                        ("a", None, 5), ("a", "NEW-LIVE", 6), ("a", "I3", 7), ("b", "I4", 8),
                        ("b", "I5", 9)])
    out = refresh_examples(events, since_seq=2, item_index=index, holdout_every=0)
    rows = {(r.user_id, r.target): list(r.hist_items) for r in out.train.itertuples()}
    # a's I1 at seq 2 is old, I1 at seq 4 is a repeat: only I3 (context: every earlier item)
    assert rows == {("a", "I3"): ["I0", "I1", "I1"], ("b", "I4"): ["I2"],
                    ("b", "I5"): ["I2", "I4"]}
    assert out.last_seq == 9
    assert out.report["unknown_item_events_dropped"] == 1
    assert out.report["search_events_skipped"] == 1
    held = refresh_examples(events, since_seq=0, item_index=index, holdout_every=1)
    assert len(held.holdout) == 2 and set(held.holdout["user_segment"]) <= {"cold_user",
                                                                            "warm_user"}
    assert refresh_examples(events, since_seq=9, item_index=index).train.empty


@pytest.fixture
def model(tiny_artifacts: Path):
    from towers import load_towers

    return load_towers(tiny_artifacts / "towers")


def test_fine_tune_moves_the_adapter_and_user_tower_not_bert(model, tiny_artifacts: Path) -> None:
    import torch

    catalogue = load_catalogue(tiny_artifacts)
    ids = model.item_ids
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", ids[int(i)], 0) for u in range(30) for i in rng.integers(0, 40, 6)]
    events = log_frame([(u, i, s) for s, (u, i, _) in enumerate(rows, start=1)])
    examples = refresh_examples(events, 0, model.item_index, holdout_every=3)
    bert = {k: v.clone() for k, v in model.item_tower.bert.state_dict().items()}
    user = {k: v.clone() for k, v in model.user_tower.state_dict().items()}
    vectors_before, _ = catalogue_vectors(model, ids, model.item_tower.item_texts)
    report = fine_tune(model, examples, catalogue, epochs=2, lr=1e-2, batch_size=16)
    assert report["steps"] > 0 and report["holdout_before"] and report["holdout_after"]
    assert all(torch.equal(bert[k], v) for k, v in model.item_tower.bert.state_dict().items())
    assert any(not torch.equal(user[k], v) for k, v in model.user_tower.state_dict().items())
    vectors_after, from_text = catalogue_vectors(model, ids, model.item_tower.item_texts)
    assert from_text == 0 and not np.allclose(vectors_before, vectors_after)
    texts = list(model.item_tower.item_texts)
    texts[3] = "a completely different text"
    _, from_text = catalogue_vectors(model, [*ids, "LIVE-1"], [*texts, "new live item"])
    assert from_text == 2  # the changed text and the live-added item, nothing else
