"""The event log (recdata.eventlog): framing, torn-tail recovery, one writer, user deletion,
reading it back as a training source, and ``python -m recdata events``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from recdata import load_dataset
from recdata.__main__ import main as recdata_main
from recdata.eventlog import (
    EventLog,
    EventLogCorrupt,
    EventLogError,
    encode_record,
    read_events,
    scan,
)
from recdata.eventlog_source import with_event_log
from recdata.schema import DataError


def click(user: str, item: str, ts: int = 1_700_000_000) -> dict:
    return {"user_id": user, "event": "click", "item_id": item, "ts": ts, "weight": 1.0}


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return tmp_path / "events" / "events.log"


def test_appends_are_one_verified_record_each_with_growing_seq(log_file: Path) -> None:
    with EventLog.open(log_file) as event_log:
        first = event_log.append([click("u_a", "I00001")])
        batch = event_log.append([click("u_b", "I00002"), click("u_b", "I00003")])
    assert [e["seq"] for e in first + batch] == [1, 2, 3]
    found = scan(log_file)
    assert len(found.records) == 2 and found.torn_bytes == 0 and found.last_seq == 3
    assert [e["item_id"] for e in found.events()] == ["I00001", "I00002", "I00003"]
    assert all(line.startswith(b'{"crc":"') for line in log_file.read_bytes().splitlines())
    assert json.loads(log_file.read_bytes().splitlines()[1])["r"]["seq"] == 3  # valid JSON


def test_a_missing_ts_is_the_time_of_receipt(log_file: Path) -> None:
    with EventLog.open(log_file) as event_log:
        (event,) = event_log.append([{**click("u_a", "I00001"), "ts": None}])
    assert event["ts"] == event["received"] > 1_600_000_000


def test_a_torn_last_record_is_truncated_on_open_and_nothing_acknowledged_is_lost(
        log_file: Path) -> None:
    with EventLog.open(log_file) as event_log:
        event_log.append([click("u_a", "I00001")])
        event_log.append([click("u_a", "I00002"), click("u_a", "I00003")])
    good = log_file.read_bytes()
    torn = encode_record([{**click("u_c", "I00004"), "seq": 4}], 4)[:-9]  # cut mid-record
    log_file.write_bytes(good + torn)
    assert scan(log_file).torn_bytes == len(torn)
    assert [e["item_id"] for e in scan(log_file).events()] == ["I00001", "I00002", "I00003"]
    with EventLog.open(log_file) as event_log:
        assert event_log.recovered_bytes == len(torn) and event_log.last_seq == 3
        event_log.append([click("u_a", "I00005")])
    assert log_file.read_bytes().startswith(good)
    assert [e["seq"] for e in scan(log_file).events()] == [1, 2, 3, 4]
    # a complete last line whose checksum fails is a torn append too
    lines = log_file.read_bytes().splitlines(keepends=True)
    log_file.write_bytes(b"".join(lines[:-1]) + lines[-1].replace(b"I00005", b"I00006"))
    assert scan(log_file).torn_bytes == len(lines[-1])


def test_damage_before_the_end_is_refused_not_guessed(log_file: Path) -> None:
    with EventLog.open(log_file) as event_log:
        for n in range(3):
            event_log.append([click("u_a", f"I0000{n}")])
    lines = log_file.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"I00001", b"I00009")  # a flipped byte, not a crash
    log_file.write_bytes(b"".join(lines))
    with pytest.raises(EventLogCorrupt, match="byte .* fails its checksum.*repair"):
        scan(log_file)
    assert recdata_main(["events", "repair", str(log_file)]) == 0
    assert [e["item_id"] for e in scan(log_file).events()] == ["I00000", "I00002"]


def test_a_log_has_one_writer(log_file: Path) -> None:
    with EventLog.open(log_file):
        with pytest.raises(EventLogError, match="another process is writing"):
            EventLog.open(log_file)
    EventLog.open(log_file).close()  # released on close


def test_remove_user_rewrites_atomically_and_seq_never_goes_back(log_file: Path) -> None:
    with EventLog.open(log_file) as event_log:
        event_log.append([click("u_a", "I00001"), click("u_b", "I00002")])
        event_log.append([click("u_b", "I00003")])
        inode = os.stat(log_file).st_ino
        assert event_log.remove_user("u_b") == 2
        assert event_log.remove_user("u_nobody") == 0
        assert os.stat(log_file).st_ino != inode  # a new file renamed over the old one
        (event,) = event_log.append([click("u_c", "I00004")])
    assert event["seq"] == 4  # not 2: the emptied last record kept the high-water mark
    events = list(scan(log_file).events())
    assert [(e["user_id"], e["seq"]) for e in events] == [("u_a", 1), ("u_c", 4)]
    assert not [p for p in log_file.parent.iterdir() if p.name.endswith(".tmp")]


def test_read_events_gives_the_events_contract(log_file: Path) -> None:
    with EventLog.open(log_file) as event_log:
        event_log.append([click("u_a", "I00001"),
                          {"user_id": "u_a", "event": "search", "item_id": None, "ts": 5,
                           "weight": 1.0}])
    frame = read_events(log_file)
    assert list(frame.columns) == ["user_id", "item_id", "ts", "event", "query", "weight", "seq"]
    assert frame["query"].isna().all()  # search words are never stored
    assert read_events(log_file.parent / "missing.log").empty


def test_training_sources_take_the_log_and_count_what_they_drop(log_file: Path) -> None:
    base = load_dataset("synthetic", n_items=60, n_users=20, seed=0)
    known = base.catalogue["item_id"].tolist()
    with EventLog.open(log_file) as event_log:
        event_log.append([click("u_new", known[0], 10), click("u_new", known[1], 11),
                          click("u_new", "NOT-IN-CATALOGUE", 12),
                          {"user_id": "u_new", "event": "search", "item_id": None, "ts": 13}])
    merged = load_dataset("synthetic", n_items=60, n_users=20, seed=0,
                          event_log=str(log_file.parent.parent))  # a run's artifacts dir
    assert len(merged.events) == len(base.events) + 2
    assert merged.events.loc[merged.events["user_id"] == "u_new", "item_id"].tolist() == known[:2]
    assert merged.report["event_log_events"] == 2
    assert merged.report["event_log_searches_dropped"] == 1
    assert merged.report["event_log_unknown_items_dropped"] == 1
    since = with_event_log(base, log_file, since_seq=1)
    assert since.report["event_log_events"] == 1
    with pytest.raises(DataError, match="no event log there"):
        with_event_log(base, log_file.parent / "nowhere")


def test_a_fixed_split_source_refuses_the_log(log_file: Path) -> None:
    base = load_dataset("synthetic", n_items=60, n_users=20, seed=0)
    base.predefined = {"train": base.events}
    EventLog.open(log_file).close()
    with pytest.raises(DataError, match="split is fixed"):
        with_event_log(base, log_file)


def test_cli_check_and_export(log_file: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    with EventLog.open(log_file) as event_log:
        event_log.append([click("u_a", "I00001"), click("u_b", "I00002")])
    assert recdata_main(["events", "check", str(log_file.parent)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["events"] == 2 and report["users"] == 2 and report["last_seq"] == 2
    out = tmp_path / "events.jsonl"
    assert recdata_main(["events", "export", str(log_file), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["item_id"] for r in rows] == ["I00001", "I00002"] and "seq" not in rows[0]
    assert recdata_main(["events", "export", str(log_file), "--out", str(tmp_path / "x.txt")]) == 2
    assert "expected a .jsonl" in capsys.readouterr().err


def test_train_py_reads_the_log_through_data_options_event_log(log_file: Path) -> None:
    from hydra import compose, initialize_config_dir

    from pipeline.config import load_split

    base = load_dataset("synthetic", n_items=60, n_users=20, seed=0)
    known = base.catalogue["item_id"].tolist()
    with EventLog.open(log_file) as event_log:
        event_log.append([click("u_logged", item, 100 + n) for n, item in enumerate(known[:5])])
    from pipeline.config import CONF_DIR as conf
    overrides = ["data.options.n_items=60", "data.options.n_users=20",
                 "data.split.new_item_share=0.0"]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        plain = load_split(compose(config_name="train", overrides=overrides))
        cfg = compose(config_name="train",
                      overrides=[*overrides, f"data.options.event_log={log_file.parent}"])
    split = load_split(cfg)
    logged = split.train.loc[split.train["user_id"] == "u_logged"]
    assert len(logged) == 2 and len(plain.train.loc[plain.train["user_id"] == "u_logged"]) == 0
    assert split.test.loc[split.test["user_id"] == "u_logged", "target"].tolist() == [known[4]]
