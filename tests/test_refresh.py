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


# ---- the refresh end to end ----------------------------------------------------------------------
def log_shopping(run_dir: Path, n_users: int = 24, per_user: int = 6, seed: int = 0) -> int:
    """Append pseudonymous click sessions to the run's event log; returns the last seq."""
    from recdata.eventlog import EventLog, log_path

    ids = load_catalogue(run_dir)["item_id"].tolist()
    rng = np.random.default_rng(seed)
    with EventLog.open(log_path(run_dir)) as event_log:
        for user in range(n_users):
            picks = rng.choice(len(ids), per_user, replace=False)
            event_log.append([{"user_id": f"u_{seed}_{user}", "event": "click",
                               "item_id": ids[int(i)], "ts": 1_700_000_000 + n, "weight": 1.0}
                              for n, i in enumerate(picks)])
        return event_log.last_seq


def test_refresh_fine_tunes_commits_and_then_has_nothing_new(artifacts_copy: Path) -> None:
    import json

    from engine import Recommender
    from engine.artifacts import ArtifactPaths
    from pipeline.refresh import main as refresh_main
    from pipeline.refresh import read_refresh_state, refresh

    paths = ArtifactPaths(artifacts_copy)
    before = paths.towers_meta()
    last = log_shopping(artifacts_copy)
    summary = refresh(artifacts_copy)
    assert summary["status"] == "refreshed" and summary["last_seq"] == last
    assert summary["train_examples"] > 0 and summary["bert_encoded_items"] == 0
    after = paths.towers_meta()
    assert after["fingerprint"] != before["fingerprint"]  # the towers moved
    assert after["split_fingerprint"] == before["split_fingerprint"]  # same run, carried over
    assert paths.index_manifest()["model_fingerprint"] == after["fingerprint"]
    assert read_refresh_state(paths)["last_seq"] == last
    engine = Recommender.from_artifacts(artifacts_copy, rerank=False)  # loads: parts agree
    assert engine.fingerprint == after["fingerprint"]
    again = refresh(artifacts_copy)
    assert again["status"] == "nothing new" and paths.towers_meta() == after
    log_shopping(artifacts_copy, n_users=5, seed=1)
    assert refresh_main(["--artifacts", str(artifacts_copy), "--epochs", "1"]) == 0
    assert len(json.loads((artifacts_copy / "refresh.json").read_text())["runs"]) == 2


def test_refresh_refuses_a_run_without_an_event_log(artifacts_copy: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.refresh import main as refresh_main

    assert refresh_main(["--artifacts", str(artifacts_copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no event log there" in err
    assert refresh_main(["--artifacts", str(artifacts_copy), "--epochs", "0"]) == 2


def test_a_loopback_load_test_sees_no_failed_request_while_the_refresh_swaps(
        artifacts_copy: Path) -> None:
    """A real server (uvicorn, loopback) with the reload watcher; clients post sessions the whole
    time; the shop's events arrive through POST /events; the refresh runs beside the server and
    commits; the server swaps the new towers in. Every request must succeed."""
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    from pipeline.refresh import refresh
    from serve.app import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(artifacts_copy, api_keys=set(), rerank=False, web=False,
                     event_log=artifacts_copy / "events", user_key=b"refresh-test-key-0123",
                     reload_every_s=0.2)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    url = f"http://127.0.0.1:{port}"
    ids = load_catalogue(artifacts_copy)["item_id"].tolist()
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=url, timeout=30) as http:
        for user in range(24):
            events = [{"user_id": f"shopper-{user}", "event": "click", "item_id": ids[int(i)]}
                      for i in rng.choice(len(ids), 6, replace=False)]
            assert http.post("/events", json={"events": events}).status_code == 200
    state = app.state.serve
    old = state.recommender
    statuses: list[int] = []
    served_by: list[str] = []
    stop = threading.Event()
    sessions = [{"events": [{"type": "click", "item_id": ids[n]}]} for n in range(5)]
    sessions += [{"events": [{"type": "search", "query": "lamp"}]}, {"events": []}]

    def client(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            n = offset
            while not stop.is_set():
                try:
                    code = http.post("/recommend", json=sessions[n % len(sessions)]).status_code
                except httpx.HTTPError:
                    code = -1  # no answer at all
                statuses.append(code)
                served_by.append(getattr(state.recommender, "fingerprint", None))
                n += 1

    clients = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    try:
        for c in clients:
            c.start()
        summary = refresh(artifacts_copy, None)
        assert summary["status"] == "refreshed"
        deadline = time.monotonic() + 60
        while state.recommender is old and time.monotonic() < deadline:
            time.sleep(0.1)
        swapped_at = len(statuses)
        time.sleep(1.0)  # keep the load on the new engine a little
    finally:
        stop.set()
        for c in clients:
            c.join()
        server.should_exit = True
        thread.join(timeout=30)
    assert state.recommender is not old
    assert state.recommender.fingerprint == summary["fingerprint"] != old.fingerprint
    assert state.recommender.counts is not None and len(state.recommender.counts) > 0
    assert len(statuses) > swapped_at > 0  # requests before and after the swap
    assert set(statuses) == {200}, sorted(set(statuses))
    assert served_by[0] == old.fingerprint and served_by[-1] == summary["fingerprint"]
