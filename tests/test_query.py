"""Tests of query.py on tiny artifacts: every session shape, output formats, and every kind of
bad input (one ``error:`` line on stderr, exit 2, nothing on stdout)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import query
from engine import ArtifactPaths, load_catalogue, parse_sessions_text

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
RESULT_KEYS = {"user_id", "segment", "reranked", "items", "timings_ms", "warnings"}


@pytest.fixture(scope="module")
def tiny_ids(tiny_artifacts: Path) -> dict[str, list[str]]:
    catalogue = load_catalogue(tiny_artifacts)
    return {seg: catalogue.loc[catalogue["segment"] == seg, "item_id"].tolist()
            for seg in ("head", "long_tail", "new")}


@pytest.fixture(scope="module")
def sessions(tiny_ids: dict) -> dict[str, dict]:
    """The three example shapes, with ids of the tiny shop."""
    head = tiny_ids["head"]
    return {
        "new_user": {"user_id": "n", "k": 5,
                     "events": [{"type": "search", "query": "led stereo microscope"}]},
        "cold_user": {"user_id": "c", "k": 5, "events": [{"type": "click", "item_id": head[0]},
                                                         {"type": "click", "item_id": head[1]}]},
        "warm_user": {"user_id": "w", "k": 5, "exclude": [head[6]], "events": [
            {"type": "view", "item_id": head[2]}, {"type": "click", "item_id": head[2]},
            {"type": "cart", "item_id": head[2]}, {"type": "view", "item_id": head[3]},
            {"type": "search", "query": "usb lamp"}, {"type": "click", "item_id": head[4]},
            {"type": "click", "item": {"title": "Acme usb lab lamp", "brand": "Acme"}}]},
    }


def run_query(argv: list[str], capsys: pytest.CaptureFixture, stdin: str = "") -> tuple[int, str,
                                                                                        str]:
    code = query.main(argv, stdin=io.StringIO(stdin))
    out, err = capsys.readouterr()
    return code, out, err


def check_output(result: dict, k: int) -> None:
    assert RESULT_KEYS <= set(result) <= RESULT_KEYS | {"fallback"}
    assert [item["rank"] for item in result["items"]] == list(range(1, k + 1))
    assert set(result["timings_ms"]) == {"encode", "search", "rank", "rerank", "total",
                                          "batch_size"}


@pytest.mark.parametrize("name", ["new_user", "cold_user", "warm_user"])
def test_each_session_shape(name: str, sessions: dict, tiny_artifacts: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture) -> None:
    session_file = tmp_path / "s.json"
    session_file.write_text(json.dumps(sessions[name]))
    code, out, err = run_query(["--session", str(session_file), "--artifacts",
                                str(tiny_artifacts)], capsys)
    assert code == 0, err
    result = json.loads(out)
    check_output(result, 5)
    assert result["segment"] == name and result["user_id"] == sessions[name]["user_id"]
    assert result["reranked"] is True  # the tiny run has a reranker; each shape re-scores some
    if name == "warm_user":
        assert sessions[name]["exclude"][0] not in {i["item_id"] for i in result["items"]}


def test_jsonl_gives_one_result_per_line_and_no_rerank(sessions: dict, tiny_artifacts: Path,
                                                       tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps(s) + "\n" for s in sessions.values()) + "\n")
    code, out, err = run_query(["--session", str(many), "--artifacts", str(tiny_artifacts),
                                "--no-rerank", "--k", "3", "--timings"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    results = [json.loads(line) for line in lines]
    assert [r["segment"] for r in results] == ["new_user", "cold_user", "warm_user"]
    for result in results:
        check_output(result, 3)  # --k overrides the sessions' k=5
        assert result["reranked"] is False
        assert all(item["rerank_score"] is None for item in result["items"])
    assert "timings (ms, median of 3): encode" in err


def test_stdin_and_pretty(tiny_artifacts: Path, capsys: pytest.CaptureFixture,
                          tiny_ids: dict) -> None:
    session = {"events": [{"type": "click", "item_id": tiny_ids["head"][0]},
                          {"type": "click", "item_id": "NOPE"}]}
    code, out, err = run_query(["--session", "-", "--artifacts", str(tiny_artifacts), "--pretty",
                                "--k", "4"], capsys, stdin=json.dumps(session))
    assert code == 0, err
    assert out.startswith("cold_user | reranked |")
    assert out.count("because similar to") == 4 and "  4. " in out
    assert "warning: 1 event(s) name item ids not in the catalogue ('NOPE')" in out


def test_empty_session_gets_the_fallback(tiny_artifacts: Path, capsys: pytest.CaptureFixture
                                         ) -> None:
    code, out, _ = run_query(["--session", "-", "--artifacts", str(tiny_artifacts)], capsys,
                             stdin='{"events": []}')
    assert code == 0
    result = json.loads(out)
    assert result["fallback"] == "no events: popular and new items"
    check_output(result, 10)


@pytest.mark.parametrize(("content", "extra", "fragment"), [
    (None, [], "cannot read --session"),
    ("{\"events\": [", [], "not valid JSON"),
    ('{"events": [{"type": "like", "item_id": "I1"}]}', [], "\"type\" must be one of"),
    ('{"events": [{"type": "click", "item_id": 12}]}', [], "\"item_id\" must be a non-empty"),
    ('{"events": "click"}', [], "needs \"events\""),
    ('{"events": [], "k": 0}', [], "\"k\" must be an integer >= 1"),
    ('{"events": [], "k": 100000}', [], "is larger than the catalogue"),
    ('{"events": []}', ["--k", "100000"], "is larger than the catalogue"),
    ('{"events": [{"type": "click", "item": {"title": ""}}]}', [], "\"title\" must be a non-empty"),
])
def test_bad_session_input_exits_2_with_one_line(content: str | None, extra: list[str],
                                                  fragment: str, tiny_artifacts: Path,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    session_file = tmp_path / "bad.json"
    if content is not None:
        session_file.write_text(content)
    code, out, err = run_query(["--session", str(session_file), "--artifacts",
                                str(tiny_artifacts), *extra], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and fragment in err and err.count("\n") == 1


def test_bad_jsonl_line_is_named(tiny_artifacts: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    many = tmp_path / "many.jsonl"
    many.write_text('{"events": []}\n{"events": [}\n')
    code, out, err = run_query(["--session", str(many), "--artifacts", str(tiny_artifacts)],
                               capsys)
    assert (code, out) == (2, "") and err.startswith("error: line 2: not valid JSON")


def test_missing_and_mismatched_artifacts(artifacts_copy: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    session_file = tmp_path / "s.json"
    session_file.write_text('{"events": [{"type": "search", "query": "lamp"}]}')
    code, out, err = run_query(["--session", str(session_file), "--artifacts",
                                str(tmp_path / "none")], capsys)
    assert (code, out) == (2, "") and "no artifacts directory" in err and "train.py" in err
    paths = ArtifactPaths(artifacts_copy)
    manifest_file = paths.index / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["model_fingerprint"] = "f" * 64
    manifest_file.write_text(json.dumps(manifest))
    code, out, err = run_query(["--session", str(session_file), "--artifacts",
                                str(artifacts_copy)], capsys)
    assert (code, out) == (2, "") and "built from other towers" in err
    assert "python build_index.py run_name=tiny" in err
    for part in ("index", "towers"):
        import shutil

        shutil.rmtree(getattr(paths, part))
        code, out, err = run_query(["--session", str(session_file), "--artifacts",
                                    str(artifacts_copy)], capsys)
        assert (code, out) == (2, "") and f"{part} is missing" in err


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        query.main(["--session", "x.json", "--k", "0"])
    assert exit_info.value.code == 2
    assert "expected an integer >= 1" in capsys.readouterr().err


def test_bad_input_fails_before_importing_torch(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"events": [{"type": "like"}]}')
    code = ("import sys, query; rc = query.main(['--session', sys.argv[1]]); "
            "print(rc, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(bad)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.split() == ["2", "False"], proc.stderr


def test_examples_parse_and_name_coherent_default_catalogue_items() -> None:
    from recdata import load_dataset

    # the items come first from the seed, so n_users does not change the catalogue
    catalogue = load_dataset("synthetic", n_items=1500, n_users=1, seed=0).catalogue
    category = catalogue.set_index("item_id")["category"]
    texts = {name: (EXAMPLES / f"{name}.json").read_text()
             for name in ("new_user_search", "cold_user_two_clicks", "warm_user")}
    parsed = {name: parse_sessions_text(text)[0][0] for name, text in texts.items()}
    many, is_many = parse_sessions_text((EXAMPLES / "many.jsonl").read_text(), jsonl=True)
    assert is_many and [s.user_id for s in many] == [s.user_id for s in parsed.values()]
    assert [e.type for e in parsed["new_user_search"].events] == ["search"]
    assert parsed["cold_user_two_clicks"].n_item_events == 2
    warm = parsed["warm_user"]
    assert 6 <= len(warm.events) <= 10 and warm.n_item_events > 3
    assert {e.type for e in warm.events} >= {"view", "click", "cart", "search"}
    assert any(e.item is not None for e in warm.events)
    for session in parsed.values():
        item_ids = [e.item_id for e in session.events if e.item_id] + session.exclude
        assert set(item_ids) <= set(category.index)
        assert category.loc[item_ids].nunique() <= 1  # one subcategory per example
