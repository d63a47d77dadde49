"""benchmarks/train_speed.py: runs train.py's training step per setting and writes its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import train_speed


@pytest.mark.slow  # eight short Lightning fits: ~30 s of CPU
def test_train_speed_writes_one_row_per_setting_and_length(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    code = train_speed.main([
        "--experiment", "demo", "--override", "tower=tiny", "--override",
        "data.options.n_items=60", "--override", "data.options.n_users=40",
        "--override", f"artifacts_dir={tmp_path}", "--cache-dir", str(tmp_path / "cache"),
        "--seq-lens", "4", "6", "--steps", "2", "--warmup", "1", "--repeats", "2",
        "--setting", "full:", "--setting", "narrow:user.hidden_dim=8", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    rows = {(r["setting"], r["max_seq_len"]): r for r in report["results"]}
    assert sorted(rows) == [("full", 4), ("full", 6), ("narrow", 4), ("narrow", 6)]
    for row in rows.values():
        assert row["examples_per_s"] > 0 and len(row["rounds"]) == 2
        assert all(r["steps"] == 2 for r in row["rounds"])
    assert rows[("narrow", 4)]["user_tower_params"] < rows[("full", 4)]["user_tower_params"]
    assert report["commit"] and report["machine"]["cpu_cores"] >= 1 and report["seed"] == 0


def test_a_setting_without_a_name_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_speed.parse_args(["--setting", "user.hidden_dim=8"])
    assert exit_info.value.code == 2
