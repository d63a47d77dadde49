"""POST /events and DELETE /users/{id} over the tiny artifacts (``artifacts_copy``): durable,
pseudonymised, all-or-nothing, counted, and the counts feed the fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from engine import Recommender, load_catalogue
from recdata.eventlog import log_path, scan
from serve.app import create_app
from serve.privacy import Pseudonymizer, UserKeyError, key_from_file

KEY = b"test-key-0123456789abcdef"


@pytest.fixture
def run_dir(artifacts_copy: Path) -> Path:
    return artifacts_copy


def app_client(run_dir: Path, **kwargs) -> TestClient:
    options = {"event_log": run_dir / "events", "user_key": KEY, "api_keys": set(),
               "web": False, **kwargs}
    return TestClient(create_app(recommender=Recommender.from_artifacts(run_dir, rerank=False),
                                 **options))


@pytest.fixture
def catalogue(run_dir: Path):
    return load_catalogue(run_dir)


def test_events_are_logged_pseudonymised_and_counted(run_dir: Path, catalogue) -> None:
    item = catalogue["item_id"].iloc[0]
    with app_client(run_dir) as client:
        one = client.post("/events", json={"user_id": "alice@example.com", "event": "click",
                                           "item_id": item, "ts": 1_700_000_000})
        assert one.status_code == 200 and one.json() == {"accepted": 1, "last_seq": 1}
        batch = client.post("/events", json={"events": [
            {"user_id": "alice@example.com", "event": "search", "query": "blue kettle"},
            {"user_id": "bob", "event": "purchase", "item_id": item, "weight": 2}]})
        assert batch.json() == {"accepted": 2, "last_seq": 3}
    events = list(scan(log_path(run_dir)).events())
    alice = Pseudonymizer(KEY).user("alice@example.com")
    assert [e["user_id"] for e in events] == [alice, alice, Pseudonymizer(KEY).user("bob")]
    assert events[1]["event"] == "search" and "query" not in events[1]
    raw = log_path(run_dir).read_bytes()
    assert b"alice" not in raw and b"blue kettle" not in raw


def test_a_bad_event_names_its_field_and_nothing_is_written(run_dir: Path, catalogue) -> None:
    item = catalogue["item_id"].iloc[0]
    good = {"user_id": "u1", "event": "click", "item_id": item}
    cases = [
        ({"events": [good, {**good, "item_id": "NOPE"}]}, ["body", "events", 1, "item_id"]),
        ({"events": [good, {**good, "event": "teleport"}]}, ["body", "events", 1, "event"]),
        ({"events": [good, {**good, "ts": "yesterday"}]}, ["body", "events", 1, "ts"]),
        ({"events": [good, {**good, "user_id": ""}]}, ["body", "events", 1, "user_id"]),
        ({"events": [good, {"user_id": "u", "event": "search"}]}, ["body", "events", 1, "query"]),
        ({**good, "type": "click"}, ["body", "type"]),
        ({**good, "weight": -1}, ["body", "weight"]),
        ({"events": []}, ["body", "events"]),
    ]
    with app_client(run_dir) as client:
        for body, loc in cases:
            response = client.post("/events", json=body)
            assert response.status_code == 422, body
            assert response.json()["detail"][0]["loc"] == loc
        wrong_type = client.post("/events", content=b'{"user_id": "u1"}',
                                 headers={"content-type": "text/plain"})
        assert wrong_type.status_code == 415
    assert scan(log_path(run_dir)).records == []


def test_without_a_key_or_a_log_events_are_refused(run_dir: Path, catalogue) -> None:
    event = {"user_id": "u1", "event": "click", "item_id": catalogue["item_id"].iloc[0]}
    with app_client(run_dir, user_key=None) as client:
        response = client.post("/events", json=event)
        assert response.status_code == 503 and "FIRSTCLICK_USER_KEY" in response.json()["detail"]
    with app_client(run_dir, event_log=None) as client:
        assert client.post("/events", json=event).status_code == 503
        assert client.delete("/users/u1").status_code == 503


def test_a_new_item_that_starts_selling_moves_up_in_the_fallback(run_dir: Path,
                                                                  catalogue) -> None:
    new_item = catalogue.loc[catalogue["popularity"] == 0, "item_id"].iloc[0]
    with app_client(run_dir) as client:
        before = client.post("/recommend", json={"events": [], "k": 10}).json()
        popular_before = [i["item_id"] for i in before["items"] if "popular" in i["because"]]
        assert new_item not in popular_before[:1]
        purchases = [{"user_id": f"shopper-{n}", "event": "purchase", "item_id": new_item}
                     for n in range(3)]
        assert client.post("/events", json={"events": purchases}).status_code == 200
        after = client.post("/recommend", json={"events": [], "k": 10}).json()
    first = after["items"][0]
    assert first["item_id"] == new_item
    assert "3 in the last 24 h" in first["because"]


def test_counts_survive_a_restart_and_a_deletion_removes_a_users_events(
        run_dir: Path, catalogue) -> None:
    items = catalogue["item_id"].tolist()
    with app_client(run_dir) as client:
        client.post("/events", json={"events": [
            {"user_id": "carol", "event": "click", "item_id": items[0]},
            {"user_id": "carol", "event": "click", "item_id": items[1]},
            {"user_id": "dave", "event": "click", "item_id": items[1]}]})
    with app_client(run_dir) as client:  # a restart: counts rebuilt from the log
        rec = client.app.state.serve.recommender
        assert rec.counts.snapshot() == {items[0]: (1, 1), items[1]: (2, 2)}
        response = client.delete("/users/carol")
        assert response.status_code == 200
        body = response.json()
        assert body["deleted_events"] == 2
        assert any("retrained from scratch" in line for line in body["not_undone"])
        assert rec.counts.snapshot() == {items[1]: (1, 1)}
        assert client.delete("/users/carol").json()["deleted_events"] == 0
    users = {e["user_id"] for e in scan(log_path(run_dir)).events()}
    assert users == {Pseudonymizer(KEY).user("dave")}


def test_the_user_key_file_is_created_private_and_never_inside_the_artifacts(
        tmp_path: Path, run_dir: Path) -> None:
    key_file = tmp_path / "secrets" / "user.key"
    key = key_from_file(key_file, run_dir)
    assert key_from_file(key_file, run_dir) == key and len(key) == 64
    assert key_file.stat().st_mode & 0o077 == 0
    with pytest.raises(UserKeyError, match="inside the artifacts"):
        key_from_file(run_dir / "user.key", run_dir)
    (tmp_path / "short.key").write_text("abc\n")
    with pytest.raises(UserKeyError, match="at least 16"):
        key_from_file(tmp_path / "short.key")
    assert "key hidden" in repr(Pseudonymizer(key))
