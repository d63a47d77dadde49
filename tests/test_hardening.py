"""Issue 11 ("no lost items, no silent auth-off, no 500 from input, bounded work per request"):
one test (or a parametrised family) per numbered case, on the tiny artifacts. The kill tests of
case 2 are in tests/test_storage.py.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import redirect_stderr
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import build_index
import query
from engine import ArtifactPaths, ArtifactsError, Recommender, load_catalogue
from engine.artifacts import catalogue_stamp, read_catalogue, write_catalogue
from engine.items import parse_item
from serve.__main__ import main as serve_main
from serve.app import create_app
from serve.auth import AuthConfigError, keys_from_env
from serve.models import InlineItem, ItemIn

ROOT = Path(__file__).resolve().parent.parent
SEARCH = {"events": [{"type": "search", "query": "usb lamp"}]}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def rec(tiny_artifacts: Path) -> Recommender:
    return Recommender.from_artifacts(tiny_artifacts, rerank=False)


@pytest.fixture(scope="module")
def client(rec: Recommender) -> TestClient:
    with TestClient(create_app(recommender=rec, api_keys=set())) as test_client:
        yield test_client


def run_build(root: Path, *overrides: str) -> None:
    # hydra's job logging would keep a handler on this test's captured (then closed) stdout
    build_index.main([f"run_name={root.name}", f"artifacts_dir={root.parent}", "progress=false",
                      "hydra/job_logging=disabled", *overrides])


def build_error(root: Path, capsys: pytest.CaptureFixture, *overrides: str) -> str:
    """build_index.py's stderr for an edit that must fail with exit 2 and one line."""
    with pytest.raises(SystemExit) as exit_info:
        run_build(root, *overrides)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def query_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert query.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    return err


# ---- 1. a CLI edit beside a running service is never lost ----------------------------------------
def test_1_cli_add_beside_a_running_service_is_kept(artifacts_copy: Path, tmp_path: Path) -> None:
    items = tmp_path / "cli.jsonl"
    items.write_text("".join(json.dumps({"item_id": f"CLI-{n}", "title": f"usb lamp {n}"}) + "\n"
                             for n in range(2)))
    with TestClient(create_app(artifacts_copy, api_keys=set(), rerank=False)) as live:
        n_items = live.get("/healthz").json()["items"]
        run_build(artifacts_copy, f"add={items}")  # another process, same artifacts
        added = live.post("/items", json={"item_id": "SVC-1", "title": "usb desk lamp"})
        assert added.status_code == 201 and added.json()["items"] == n_items + 3
        result = live.post("/recommend", params={"k": n_items + 3}, json=SEARCH).json()
        assert {"CLI-0", "CLI-1", "SVC-1"} <= {i["item_id"] for i in result["items"]}
    catalogue = load_catalogue(artifacts_copy)
    rec = Recommender.from_artifacts(artifacts_copy, rerank=False)
    assert {"CLI-0", "CLI-1", "SVC-1"} <= set(catalogue["item_id"])
    assert len(catalogue) == rec.n_items == n_items + 3


def test_1_a_stale_save_is_refused_not_overwriting(artifacts_copy: Path) -> None:
    first = Recommender.from_artifacts(artifacts_copy, rerank=False)
    second = Recommender.from_artifacts(artifacts_copy, rerank=False)
    first.edit_items(add=[{"item_id": "FIRST-1", "title": "usb lamp"}])
    second.add_items([{"item_id": "SECOND-1", "title": "usb kettle"}])
    with pytest.raises(ArtifactsError, match="changed since it was read.*would overwrite"):
        second.save()
    assert "FIRST-1" in set(load_catalogue(artifacts_copy)["item_id"])


# ---- 3. auth never turns off silently -----------------------------------------------------------
@pytest.mark.parametrize("value", ["#secret", " ", ",", " , # x"])
def test_3_an_api_key_variable_without_a_usable_key_refuses_to_start(
        value: str, rec: Recommender, tiny_artifacts: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRSTCLICK_API_KEYS", value)
    with pytest.raises(AuthConfigError, match="is set but holds no usable key"):
        keys_from_env()
    with pytest.raises(AuthConfigError, match="holds no usable key"):
        create_app(recommender=rec)
    err = io.StringIO()
    with redirect_stderr(err):
        assert serve_main(["--artifacts", str(tiny_artifacts)]) == 2
    assert err.getvalue().startswith("error: FIRSTCLICK_API_KEYS is set but holds no usable")


def test_3_no_keys_needs_an_explicit_no_auth_which_is_logged(
        rec: Recommender, artifacts_copy: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import uvicorn

    tiny_artifacts = artifacts_copy  # a started service opens its event log in the run dir

    monkeypatch.delenv("FIRSTCLICK_API_KEYS", raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    monkeypatch.setattr("torch.set_num_threads", lambda n: None)
    err = io.StringIO()
    with redirect_stderr(err):
        assert serve_main(["--artifacts", str(tiny_artifacts), "--no-rerank"]) == 2
    assert "no API key configured" in err.getvalue() and "--no-auth" in err.getvalue()
    with redirect_stderr(io.StringIO()):
        assert serve_main(["--artifacts", str(tiny_artifacts), "--no-rerank", "--no-auth",
                           "--log-level", "error"]) == 0
    caplog.clear()
    caplog.set_level("WARNING", logger="serve.app")
    # hydra (build_index.main in the fixtures) disables the loggers that existed before it ran
    monkeypatch.setattr(logging.getLogger("serve.app"), "disabled", False)
    create_app(recommender=rec, api_keys=set())
    assert any(r.levelname == "WARNING" and "auth is OFF" in r.message for r in caplog.records)


# ---- 4. body routes need application/json -------------------------------------------------------
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
@pytest.mark.parametrize("path", ["/items", "/recommend", "/recommend/batch"])
def test_4_body_routes_refuse_other_content_types(client: TestClient, path: str,
                                                  content_type: str | None) -> None:
    body = json.dumps({"item_id": "X-1", "title": "usb lamp"} if path == "/items" else SEARCH)
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 415 and "application/json" in response.json()["detail"]
    assert "X-1" not in client.app.state.serve.engine.index  # nothing was added
    charset = client.post("/recommend", content=json.dumps(SEARCH),
                          headers={"content-type": "application/json; charset=utf-8"})
    assert charset.status_code == 200


# ---- 5. no 500 and no traceback from hostile input ----------------------------------------------
DEEP = "[" * 10_000 + "]" * 10_000


@pytest.mark.parametrize(("body", "fragment"), [
    ('{"events": [{"type": "search", "query": "\\ud83d lamp"}]}', "lone UTF-16 surrogate"),
    ('{"user_id": "\\ud83d", "events": []}', "lone UTF-16 surrogate"),
    ('{"events": [{"type": "click", "item": {"title": "\\udc00"}}]}', "lone UTF-16 surrogate"),
    ('{"events": ' + DEEP + "}", "nested deeper than"),
    ('{"events": [], "k": NaN}', "NaN is not a JSON number"),
])
def test_5_hostile_sessions_get_422_from_the_service(client: TestClient, body: str,
                                                     fragment: str) -> None:
    response = client.post("/recommend", content=body, headers=JSON)
    assert response.status_code == 422 and fragment in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("session", [
    '{"events": [{"type": "search", "query": "\\ud83d lamp"}]}',
    '{"events": [{"type": "click", "item": {"title": "\\ud83d lamp"}}]}',
    DEEP,
])
def test_5_hostile_sessions_are_one_error_line_in_query_py(
        session: str, tiny_artifacts: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "s.json"
    path.write_text(session)
    err = query_error(["--session", str(path), "--artifacts", str(tiny_artifacts)], capsys)
    assert "surrogate" in err or "nested" in err


def test_5_an_endless_session_file_is_refused_unread(tiny_artifacts: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    err = query_error(["--session", "/dev/zero", "--artifacts", str(tiny_artifacts)], capsys)
    assert "is larger than 256 MiB" in err


@pytest.mark.parametrize(("item", "loc", "fragment"), [
    ({"item_id": "T-1", "title": "lamp", "created_ts": 1e30}, "created_ts", "integer unix time"),
    ({"item_id": "T-1", "title": "lamp \ud83d"}, "title", "surrogate"),
    ({"item_id": "T-1", "title": "lamp", "attributes": {"w": float("inf")}}, "attributes",
     "not a JSON number"),
])
def test_5_hostile_items_get_422(client: TestClient, item: dict, loc: str, fragment: str) -> None:
    body = json.dumps({"items": [item]}, allow_nan=True)
    response = client.post("/items", content=body, headers=JSON)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert fragment in error["msg"]
    assert error["loc"][-1] == loc or error["loc"] == ["body"]


@pytest.mark.parametrize("where", ["towers/item_tower/item_bert/pytorch_model.bin",
                                   "reranker/model/pytorch_model.bin"])
def test_5_a_planted_pickle_is_refused_by_name(where: str, artifacts_copy: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    import pickle

    planted = artifacts_copy / where
    planted.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    (planted.parent / "model.safetensors").unlink()
    session = tmp_path / "s.json"
    session.write_text(json.dumps(SEARCH))
    err = query_error(["--session", str(session), "--artifacts", str(artifacts_copy)], capsys)
    assert str(planted) in err and "pickle" in err and "never unpickles" in err


def test_5_damaged_safetensors_are_one_error_line(artifacts_copy: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    weights = artifacts_copy / "towers" / "user_tower.safetensors"
    weights.write_bytes(b"\x80\x04not safetensors at all")
    session = tmp_path / "s.json"
    session.write_text(json.dumps(SEARCH))
    err = query_error(["--session", str(session), "--artifacts", str(artifacts_copy)], capsys)
    assert str(weights) in err and "safetensors" in err


# ---- 6. ts checked; one item schema for the CLI and the service ---------------------------------
@pytest.mark.parametrize("ts", ['"yesterday"', "NaN", "-5", "1e400", "1.5", "true"])
def test_6_bad_session_ts_is_refused_by_both(ts: str, client: TestClient, tiny_artifacts: Path,
                                             tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    body = '{"events": [{"type": "click", "item_id": "I00001", "ts": ' + ts + "}]}"
    response = client.post("/recommend", content=body, headers=JSON)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    session = tmp_path / "s.json"
    session.write_text(body)
    err = query_error(["--session", str(session), "--artifacts", str(tiny_artifacts)], capsys)
    for message in (error["msg"], err):
        assert ("\"ts\" must be an integer unix time" in message
                or "NaN is not a JSON number" in message)
    ok = client.post("/recommend", json={"events": [{"type": "click", "item_id": "I00001",
                                                     "ts": 1_700_000_000}]})
    assert ok.status_code == 200


BAD_ITEMS = [
    ({"item_id": "Z-1", "title": "lamp", "price": 3}, "unknown key(s) ['price']"),
    ({"item_id": 5, "title": "lamp"}, "quote numeric ids"),
    ({"item_id": "Z-1", "title": "lamp", "category": 5}, "\"category\" must be a string"),
    ({"item_id": "Z-1", "title": "lamp", "created_ts": "tomorrow"}, "integer unix time"),
    ({"item_id": "", "title": "lamp"}, "\"item_id\" must be a non-empty string"),
    ({"item_id": "Z-1", "title": "lamp", "attributes": {"a": {"b": 1}}}, "nested objects"),
]


@pytest.mark.parametrize(("item", "fragment"), BAD_ITEMS)
def test_6_the_cli_and_the_service_refuse_the_same_items(
        item: dict, fragment: str, client: TestClient, artifacts_copy: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    response = client.post("/items", json={"items": [item]})
    assert response.status_code == 422 and fragment in response.json()["detail"][0]["msg"]
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(item) + "\n")
    assert fragment in build_error(artifacts_copy, capsys, f"add={path}")


def test_6_created_ts_is_kept_and_item_ids_are_not_coerced(artifacts_copy: Path) -> None:
    rec = Recommender.from_artifacts(artifacts_copy, rerank=False)
    rec.edit_items(add=[{"item_id": "TS-1", "title": "usb lamp", "created_ts": 1_600_000_000}])
    row = load_catalogue(artifacts_copy).set_index("item_id").loc["TS-1"]
    assert row["created_ts"] == 1_600_000_000


@pytest.mark.parametrize("item", [
    {"item_id": "A", "title": "t"},
    {"item_id": "A", "title": "t", "category": ["x", "y"], "attributes": {"n": 1, "s": "v"},
     "created_ts": 5, "brand": "b", "description": "d"},
    {"item_id": "A", "title": "t", "price": 1},
    {"item_id": 5, "title": "t"},
    {"item_id": "A", "title": "t", "category": 5},
    {"item_id": "A", "title": "t", "created_ts": "tomorrow"},
    {"item_id": "A", "title": "t", "created_ts": -1},
    {"item_id": "A", "title": "t", "created_ts": 1e30},
    {"item_id": "A", "title": "t", "attributes": {"a": {"b": 1}}},
    {"item_id": "A", "title": 7},
    {"title": "t"},
])
def test_6_the_documented_models_agree_with_the_validators(item: dict) -> None:
    """serve/models.py documents the API; engine.items validates it: same verdicts."""
    from pydantic import ValidationError

    def verdict(check) -> bool:
        try:
            check()
            return True
        except (ValidationError, ValueError):
            return False

    assert verdict(lambda: ItemIn.model_validate(item)) == verdict(lambda: parse_item(item))
    inline = {k: v for k, v in item.items() if k != "item_id" or isinstance(v, str)}
    assert verdict(lambda: InlineItem.model_validate(inline)) == verdict(
        lambda: parse_item(inline, inline=True))


# ---- 7. the text cache: capped text, hashed keys, bounded bytes ---------------------------------
def test_7_text_vectors_are_capped_hashed_and_bounded_in_bytes(rec: Recommender) -> None:
    from engine.encoding import CHARS_PER_TOKEN, SessionEncoder

    encoder = SessionEncoder(rec.model, cache_bytes=2_000)  # ~10 of the tiny model's vectors
    seen: list[int] = []
    real = rec.model.item_tower.encode_texts

    def spy(texts: list[str]):
        seen.extend(len(t) for t in texts)
        return real(texts)

    rec.model.item_tower.encode_texts = spy
    try:
        for n in range(60):
            encoder.text_emb([f"{n} " + "x" * 1_000_000])
    finally:
        del rec.model.item_tower.encode_texts
    assert max(seen) <= encoder.max_tokens * CHARS_PER_TOKEN
    assert 0 < encoder.cached_bytes() <= 2_000 and 0 < len(encoder._text_cache) < 60
    assert all(isinstance(key, bytes) and len(key) == 16 for key in encoder._text_cache)


# ---- 8. bounded k x batch; /healthz answers during heavy requests -------------------------------
def test_8_a_request_asking_for_too_many_items_is_refused(rec: Recommender) -> None:
    with TestClient(create_app(recommender=rec, api_keys=set(), max_results=1000)) as small:
        body = {"sessions": [SEARCH] * 20}
        response = small.post("/recommend/batch", params={"k": 100}, json=body)
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == ["query", "k"] and "asks for 2000 items" in error["msg"]
        assert small.post("/recommend/batch", params={"k": 50}, json=body).status_code == 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_8_healthz_answers_while_a_large_response_is_serialised(
        rec: Recommender, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch's JSON is rendered off the event loop: held mid-render here (until /healthz
    has answered), it must not stop the loop from answering /healthz."""
    import uvicorn
    from starlette.responses import JSONResponse

    rendering, healthz_done = threading.Event(), threading.Event()
    real_render = JSONResponse.render

    def held_render(self: JSONResponse, content: object) -> bytes:
        if isinstance(content, dict) and "results" in content:
            rendering.set()
            healthz_done.wait(timeout=20)
        return real_render(self, content)

    monkeypatch.setattr(JSONResponse, "render", held_render)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(recommender=rec, api_keys=set()),
                                           host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    codes: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)

        def heavy() -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                codes.append(http.post("/recommend/batch", params={"k": 30},
                                       json={"sessions": [SEARCH] * 64}).status_code)

        worker = threading.Thread(target=heavy)
        worker.start()
        assert rendering.wait(timeout=30)
        health = httpx.get(f"{url}/healthz", timeout=10)  # times out if the loop is blocked
        healthz_done.set()
        worker.join(timeout=60)
        assert health.status_code == 200 and codes == [200]
    finally:
        healthz_done.set()
        server.should_exit = True
        thread.join(timeout=10)


# ---- 9. huge inputs are refused before any encoding ---------------------------------------------
def test_9_a_huge_inline_title_is_refused_before_encoding(tiny_artifacts: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    session = tmp_path / "big.json"
    session.write_text(json.dumps({"events": [{"type": "click",
                                               "item": {"title": "lamp " * 400_000}}]}))
    err = query_error(["--session", str(session), "--artifacts", str(tiny_artifacts)], capsys)
    assert "\"title\" is 2,000,000 characters long; at most 10,000" in err


# ---- 10. parts of different runs are refused ----------------------------------------------------
def test_10_another_runs_catalogue_is_refused_in_one_line(artifacts_copy: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    path = ArtifactPaths(artifacts_copy).catalogue
    frame, stamp = read_catalogue(path), catalogue_stamp(path)
    path.unlink()  # files of a generation are shared by hard links: replace, never rewrite
    write_catalogue(path, frame, {**stamp, "run_id": "another-run"})  # as another run wrote it
    session = tmp_path / "s.json"
    session.write_text(json.dumps(SEARCH))
    err = query_error(["--session", str(session), "--artifacts", str(artifacts_copy)], capsys)
    assert "mixes parts of different training runs" in err and "catalogue run id another-run" in err
    assert "python train.py run_name=tiny" in err
    with pytest.raises(ArtifactsError, match="mixes parts"):
        Recommender.from_artifacts(artifacts_copy, rerank=False)


def test_10_another_runs_reranker_is_refused(artifacts_copy: Path) -> None:
    stamp_file = artifacts_copy / "reranker" / "run.json"
    stamp_file.write_text(json.dumps({**json.loads(stamp_file.read_text()),
                                      "run_id": "another-run"}))
    with pytest.raises(ArtifactsError, match=r"reranker run id another-run.*stage=reranker"):
        Recommender.from_artifacts(artifacts_copy)
    assert Recommender.from_artifacts(artifacts_copy, rerank=False).reranker is None


# ---- 11. damaged json named; add= checked before models; ids with "/" ---------------------------
@pytest.mark.parametrize("where", ["reranker/blend.json", "reranker/reranker_config.json",
                                   "towers/item_tower/item_tower.json"])
def test_11_a_damaged_json_file_is_named(where: str, artifacts_copy: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    damaged = artifacts_copy / where
    damaged.write_text('{"blend_alpha": 0.2,,}')
    session = tmp_path / "s.json"
    session.write_text(json.dumps(SEARCH))
    err = query_error(["--session", str(session), "--artifacts", str(artifacts_copy)], capsys)
    assert str(damaged) in err


def test_11_add_is_validated_before_any_model_is_loaded(artifacts_copy: Path,
                                                        tmp_path: Path) -> None:
    items = tmp_path / "empty_id.jsonl"
    items.write_text('{"item_id": "", "title": "usb lamp"}\n')
    code = ("import sys, build_index\n"
            "try:\n"
            "    build_index.main(sys.argv[1:])\n"
            "finally:\n"
            "    print('torch' in sys.modules, flush=True)")
    proc = subprocess.run(
        [sys.executable, "-c", code, f"run_name={artifacts_copy.name}",
         f"artifacts_dir={artifacts_copy.parent}", f"add={items}"], cwd=ROOT,
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and proc.stdout.split() == ["False"], proc.stderr
    assert proc.stderr.startswith(f"error: add={items} line 1: \"item_id\" must be a non-empty")


def test_11_ids_with_a_slash_can_be_added_and_deleted(artifacts_copy: Path) -> None:
    with TestClient(create_app(artifacts_copy, api_keys=set(), rerank=False)) as live:
        n_items = live.get("/healthz").json()["items"]
        for item_id in ("A/1", "B/2/c"):
            assert live.post("/items", json={"item_id": item_id, "title": "lamp"}
                             ).status_code == 201
        assert live.delete("/items/A/1").json() == {"removed": "A/1", "items": n_items + 1}
        assert live.delete("/items/B%2F2%2Fc").json()["removed"] == "B/2/c"
        assert live.delete("/items/A/1").status_code == 404
