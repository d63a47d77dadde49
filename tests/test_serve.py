"""Tests of serve/: the HTTP API over the tiny artifacts (conftest ``tiny_artifacts``).

FastAPI's TestClient for the routes, errors, auth and live edits (``artifacts_copy`` for what
writes); one real uvicorn server on a free 127.0.0.1 port for concurrency. The tiny towers are
untrained, so tests check the contract, never ranking quality.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import query
from engine import ArtifactPaths, Recommender, load_catalogue
from serve.__main__ import main as serve_main
from serve.app import create_app
from serve.auth import UNAUTHORIZED_DETAIL, ApiKeyCheck, AuthConfigError, keys_from_file
from serve.models import error_loc

ITEM_KEYS = {"rank", "item_id", "title", "score", "retrieval_score", "rerank_score",
             "item_segment", "because", "signal", "sources"}
RESULT_KEYS = {"user_id", "segment", "reranked", "items", "timings_ms", "warnings"}
SEARCH = {"user_id": "u1", "events": [{"type": "search", "query": "usb lamp"}]}


def check_result(result: dict, k: int) -> None:
    """The output contract (README "Contracts")."""
    assert RESULT_KEYS <= set(result) <= RESULT_KEYS | {"fallback"}
    assert result["segment"] in ("new_user", "cold_user", "warm_user")
    assert set(result["timings_ms"]) == {"encode", "search", "rank", "rerank", "total",
                                          "batch_size"}
    assert [item["rank"] for item in result["items"]] == list(range(1, k + 1))
    assert all(set(item) == ITEM_KEYS for item in result["items"])


def without_timings(result: dict) -> dict:
    return {key: value for key, value in result.items() if key != "timings_ms"}


@pytest.fixture(scope="module")
def rec(tiny_artifacts: Path) -> Recommender:
    return Recommender.from_artifacts(tiny_artifacts)


@pytest.fixture(scope="module")
def client(rec: Recommender) -> TestClient:
    with TestClient(create_app(recommender=rec, api_keys=set())) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def item_ids(tiny_artifacts: Path) -> list[str]:
    return load_catalogue(tiny_artifacts)["item_id"].tolist()


# ---- happy paths --------------------------------------------------------------------------------
def test_recommend_answers_exactly_what_query_py_prints(client: TestClient, tiny_artifacts: Path,
                                                        tmp_path: Path) -> None:
    response = client.post("/recommend", json=SEARCH)
    assert response.status_code == 200 and response.headers["x-request-id"]
    result = response.json()
    check_result(result, 10)
    assert result["user_id"] == "u1" and result["segment"] == "new_user"
    session_file = tmp_path / "s.json"
    session_file.write_text(json.dumps(SEARCH))
    out = io.StringIO()
    assert query.main(["--session", str(session_file), "--artifacts", str(tiny_artifacts)],
                      stdout=out) == 0
    assert without_timings(result) == without_timings(json.loads(out.getvalue()))


def test_recommend_query_parameters_override_k_and_rerank(client: TestClient) -> None:
    result = client.post("/recommend", params={"k": 3, "rerank": "false"},
                         json={**SEARCH, "k": 7}).json()
    check_result(result, 3)
    assert result["reranked"] is False
    assert all(item["rerank_score"] is None for item in result["items"])


def test_batch_matches_single_requests(client: TestClient, item_ids: list[str]) -> None:
    sessions = [SEARCH, {"events": [{"type": "click", "item_id": item_ids[3]}], "k": 4},
                {"events": []}]
    response = client.post("/recommend/batch", json={"sessions": sessions})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [len(r["items"]) for r in results] == [10, 4, 10]
    for session, result in zip(sessions, results):
        single = client.post("/recommend", json=session).json()
        assert without_timings(result) == without_timings(single)


def test_empty_events_get_the_fallback_not_an_error(client: TestClient) -> None:
    result = client.post("/recommend", json={"events": [], "k": 5}).json()
    check_result(result, 5)
    assert result["segment"] == "new_user" and result["fallback"]


def test_long_sessions_are_cut_and_unknown_ids_ignored_with_warnings(client: TestClient) -> None:
    events = [{"type": "search", "query": f"lamp {n}"} for n in range(12)]
    result = client.post("/recommend", json={"events": events}).json()
    assert any("kept the most recent 8" in w for w in result["warnings"])
    result = client.post("/recommend", json={"events": [
        {"type": "click", "item_id": "NOPE-1"}, {"type": "search", "query": "lamp"}]}).json()
    assert any("'NOPE-1'" in w and "ignored" in w for w in result["warnings"])


def test_healthz_reports_the_loaded_index(client: TestClient, item_ids: list[str]) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "loaded": True,
                                             "items": len(item_ids), "run": "tiny",
                                             "reranker": True}


def test_metrics_parse_as_prometheus_text(client: TestClient, item_ids: list[str]) -> None:
    client.post("/recommend", json=SEARCH)
    client.post("/recommend", json={"events": "nope"})
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    requests = {(s.labels["route"], s.labels["status"]): s.value
                for s in families["firstclick_http_requests"].samples
                if s.name.endswith("_total")}
    assert requests[("/recommend", "200")] >= 1 and requests[("/recommend", "422")] >= 1
    stages = {s.labels["stage"] for s in families["firstclick_engine_stage_duration_seconds"]
              .samples if s.name.endswith("_count") and s.labels["route"] == "/recommend"}
    assert stages == {"encode", "search", "rank", "rerank", "total"}
    assert "firstclick_http_request_duration_seconds" in families
    assert families["firstclick_index_items"].samples[0].value == len(item_ids)


def test_openapi_documents_the_request_and_response_models(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"Session", "Event", "InlineItem", "Recommendation", "RecommendResponse", "Timings",
            "BatchRequest", "BatchResponse", "ItemIn", "HealthResponse"} <= set(
        schema["components"]["schemas"])
    recommend = schema["paths"]["/recommend"]["post"]
    assert (recommend["requestBody"]["content"]["application/json"]["schema"]
            == {"$ref": "#/components/schemas/Session"})
    assert "securitySchemes" not in schema["components"]


# ---- bad requests -------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "loc", "fragment"), [
    ({"events": [{"type": "bogus", "item_id": "I1"}]}, ["body", "events", 0, "type"],
     "must be one of"),
    ({"events": [{"type": "search"}]}, ["body", "events", 0, "query"], "non-empty string"),
    ({"events": [{"type": "click", "item_id": 5}]}, ["body", "events", 0, "item_id"],
     "quote numeric ids"),
    ({"events": [{"type": "click", "item": {"title": "x", "category": 3}}]},
     ["body", "events", 0, "item", "category"], "list of strings"),
    ({"events": [{"type": "click", "item": {"name": "x"}}]},
     ["body", "events", 0, "item", "name"], "unknown key"),
    ({"events": "click"}, ["body", "events"], "a list of events"),
    ({"events": [], "k": 0}, ["body", "k"], "integer >= 1"),
    ({"events": [], "k": "5"}, ["body", "k"], "integer >= 1"),
    ({"events": [], "k": 121}, ["body", "k"], "larger than the catalogue (120 items)"),
    ({"events": [], "colour": "red"}, ["body", "colour"], "unknown session key"),
    ({"events": [], "user_id": 7}, ["body", "user_id"], "must be a string"),
    ([{"events": []}], ["body"], "expected a session object"),
])
def test_bad_sessions_get_422_naming_the_field(client: TestClient, body: object, loc: list,
                                               fragment: str) -> None:
    response = client.post("/recommend", json=body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == loc and error["type"] == "value_error" and fragment in error["msg"]


@pytest.mark.parametrize(("params", "fragment"), [({"k": 0}, "greater than or equal to 1"),
                                                  ({"k": 500}, "larger than the catalogue"),
                                                  ({"k": "many"}, "valid integer")])
def test_bad_k_parameter_gets_422(client: TestClient, params: dict, fragment: str) -> None:
    response = client.post("/recommend", params=params, json=SEARCH)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", "k"] and fragment in error["msg"]


@pytest.mark.parametrize(("content", "kind", "fragment"), [
    (b'{"events": [', "json_invalid", "not valid JSON"),
    (b"", "missing", "no body"),
    (b'\xff{"events": []}', "json_invalid", "not UTF-8"),
])
def test_malformed_bodies_get_422(client: TestClient, content: bytes, kind: str,
                                  fragment: str) -> None:
    response = client.post("/recommend", content=content,
                           headers={"content-type": "application/json"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["type"] == kind and fragment in error["msg"] and error["loc"][0] == "body"


def test_oversized_bodies_get_413_with_or_without_content_length(client: TestClient) -> None:
    big = json.dumps({"events": [{"type": "search", "query": "x" * (1 << 20)}]}).encode()
    headers = {"content-type": "application/json"}
    assert client.post("/recommend", content=big, headers=headers).status_code == 413
    chunked = client.post("/recommend", content=iter([big[:1000], big[1000:]]), headers=headers)
    assert chunked.status_code == 413 and "larger than 1048576 bytes" in chunked.json()["detail"]


@pytest.mark.parametrize(("body", "loc", "fragment"), [
    ({"sessions": [{"events": []}] * 257}, ["body", "sessions"], "1 to 256 sessions"),
    ({"sessions": []}, ["body", "sessions"], "1 to 256 sessions"),
    ({"session": []}, ["body", "sessions"], "expected {\"sessions\""),
    ({"sessions": [{"events": []}], "k": 3}, ["body", "k"], "query parameters"),
    ({"sessions": [{"events": []}, {"events": [{"type": "nap"}]}]},
     ["body", "sessions", 1, "events", 0, "type"], "must be one of"),
    ({"sessions": [{"events": []}, {"events": [], "k": 999}]}, ["body", "sessions", 1, "k"],
     "larger than the catalogue"),
])
def test_bad_batches_get_422(client: TestClient, body: dict, loc: list, fragment: str) -> None:
    response = client.post("/recommend/batch", json=body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == loc and fragment in error["msg"]


def test_unexpected_engine_errors_are_500_with_a_request_id(
        rec: Recommender, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("faiss exploded")

    with TestClient(create_app(recommender=rec, api_keys=set())) as test_client:
        monkeypatch.setattr(rec, "recommend", boom)
        response = test_client.post("/recommend", json=SEARCH)
        assert response.status_code == 500
        body = response.json()
        assert body == {"detail": "internal server error",
                        "request_id": response.headers["x-request-id"]}
        assert body["request_id"] in caplog.text and "faiss exploded" in caplog.text
        monkeypatch.undo()
        assert test_client.post("/recommend", json=SEARCH).status_code == 200  # still serving


def test_error_loc_reads_engine_messages() -> None:
    assert error_loc('event 3: "type" must be one of [...]') == ["body", "events", 3, "type"]
    assert error_loc("a session needs \"events\": a list") == ["body", "events"]
    assert error_loc("something else", ("body", "sessions", 2)) == ["body", "sessions", 2]


# ---- auth ---------------------------------------------------------------------------------------
def test_api_keys_guard_every_route_but_healthz(rec: Recommender) -> None:
    with TestClient(create_app(recommender=rec, api_keys={"key-one", "key-two"})) as keyed:
        missing = keyed.post("/recommend", json=SEARCH)
        wrong = keyed.post("/recommend", json=SEARCH, headers={"X-API-Key": "key-on"})
        assert missing.status_code == wrong.status_code == 401
        assert missing.json() == wrong.json() == {"detail": UNAUTHORIZED_DETAIL}
        for path in ("/metrics", "/openapi.json", "/no/such/path"):
            assert keyed.get(path).status_code == 401
        assert keyed.delete("/items/I00001").status_code == 401
        assert keyed.get("/healthz").status_code == 200
        right = keyed.post("/recommend", json=SEARCH, headers={"X-API-Key": "key-two"})
        assert right.status_code == 200
        schema = keyed.get("/openapi.json", headers={"X-API-Key": "key-one"}).json()
        assert schema["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
        assert schema["paths"]["/healthz"]["get"]["security"] == []


def test_api_keys_come_from_the_environment_or_a_file(
        rec: Recommender, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FIRSTCLICK_API_KEYS", "alpha, beta")
    with TestClient(create_app(recommender=rec)) as keyed:
        assert keyed.post("/recommend", json=SEARCH).status_code == 401
        assert keyed.post("/recommend", json=SEARCH,
                          headers={"X-API-Key": "beta"}).status_code == 200
    keys = tmp_path / "keys"
    keys.write_text("# ops keys\ngamma\n\ndelta\n")
    assert keys_from_file(keys) == {"gamma", "delta"}
    keys.write_text("# none\n")
    with pytest.raises(AuthConfigError, match="holds no key"):
        keys_from_file(keys)
    check = ApiKeyCheck({"gamma"})
    assert check.allows(b"gamma") and not check.allows(b"gamm") and not check.allows(None)
    assert not ApiKeyCheck(set()).enabled


# ---- live edits ---------------------------------------------------------------------------------
def test_add_recommend_restart_delete(artifacts_copy: Path) -> None:
    new = {"item_id": "NEW-1", "title": "Acme pro usb microscope lamp", "brand": "Acme",
           "category": "Lab > Microscopes"}
    with TestClient(create_app(artifacts_copy, api_keys=set(), rerank=False)) as live:
        n_items = live.get("/healthz").json()["items"]
        added = live.post("/items", json=new)
        assert added.status_code == 201 and added.json() == {"added": ["NEW-1"],
                                                             "items": n_items + 1}
        result = live.post("/recommend", params={"k": n_items + 1}, json=SEARCH).json()
        [item] = [i for i in result["items"] if i["item_id"] == "NEW-1"]
        assert item["item_segment"] == "new" and item["title"] == new["title"]
        assert live.post("/items", json=new).status_code == 409
        assert live.post("/items", params={"upsert": "true"},
                         json={**new, "title": "Acme lamp v2"}).status_code == 201
        bad = live.post("/items", json={"items": [{"item_id": "NEW-2", "title": " "}]})
        assert bad.status_code == 422 and "title" in bad.json()["detail"][0]["msg"]
        unknown = live.post("/items", json={"items": [{"item_id": "NEW-3", "title": "t",
                                                       "price": 3}]})
        assert unknown.json()["detail"][0]["loc"] == ["body", "items", 0, "price"]
    with TestClient(create_app(artifacts_copy, api_keys=set(), rerank=False)) as restarted:
        assert restarted.get("/healthz").json()["items"] == n_items + 1
        result = restarted.post("/recommend", params={"k": n_items + 1}, json=SEARCH).json()
        assert "Acme lamp v2" in {i["title"] for i in result["items"]}
        assert restarted.delete("/items/NEW-1").json() == {"removed": "NEW-1", "items": n_items}
        assert restarted.delete("/items/NEW-1").status_code == 404
        result = restarted.post("/recommend", params={"k": n_items}, json=SEARCH).json()
        assert "NEW-1" not in {i["item_id"] for i in result["items"]}
    with TestClient(create_app(artifacts_copy, api_keys=set(), rerank=False)) as again:
        assert again.get("/healthz").json()["items"] == n_items


# ---- a real server ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_real_server_answers_concurrent_requests_during_edits(artifacts_copy: Path,
                                                              item_ids: list[str]) -> None:
    import uvicorn

    port = free_port()
    app = create_app(artifacts_copy, api_keys=set(), rerank=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        sessions = [SEARCH, {"events": [{"type": "click", "item_id": item_ids[5]}]},
                    {"events": []}] * 4

        def post(session: dict) -> int:
            with httpx.Client(base_url=url, timeout=30) as http:
                return http.post("/recommend", json=session).status_code

        with ThreadPoolExecutor(6) as pool, httpx.Client(base_url=url, timeout=30) as http:
            codes = pool.map(post, sessions)
            assert http.post("/items", json={"item_id": "LIVE-1",
                                             "title": "usb lamp"}).status_code == 201
            assert http.delete("/items/LIVE-1").status_code == 200
            assert list(codes) == [200] * len(sessions)
            assert http.get("/healthz").json()["items"] == len(item_ids)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive()


# ---- the CLI ------------------------------------------------------------------------------------
def run_main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err):
        status = serve_main(argv)
    return status, err.getvalue()


def test_cli_refuses_missing_or_mismatched_artifacts_in_one_line(
        tmp_path: Path, artifacts_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIRSTCLICK_API_KEYS", raising=False)
    status, err = run_main(["--artifacts", str(tmp_path / "nothing"), "--no-auth"])
    assert status == 2 and err.startswith("error: no artifacts directory")
    assert len(err.strip().splitlines()) == 1
    manifest = ArtifactPaths(artifacts_copy).index / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()),
                                    "model_fingerprint": "0" * 16}))
    status, err = run_main(["--artifacts", str(artifacts_copy), "--no-auth"])
    assert status == 2 and "built from other towers" in err
    status, err = run_main(["--artifacts", str(artifacts_copy), "--api-keys-file",
                            str(tmp_path / "no-keys")])
    assert status == 2 and "cannot read --api-keys-file" in err


def test_cli_serves_the_loaded_artifacts(tiny_artifacts: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import uvicorn

    torch_threads: list[int] = []  # process-wide: recorded, not applied to the test process
    monkeypatch.setattr(torch, "set_num_threads", torch_threads.append)
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append({"app": app,
                                                                            **kwargs}))
    monkeypatch.delenv("FIRSTCLICK_API_KEYS", raising=False)
    keys = tmp_path / "keys"
    keys.write_text("s3cret\n")
    status, _ = run_main(["--artifacts", str(tiny_artifacts), "--port", "8123", "--no-rerank",
                          "--api-keys-file", str(keys), "--log-level", "error",
                          "--no-event-log"])  # tiny_artifacts is shared and read-only
    assert status == 0
    [call] = calls
    assert (call["host"], call["port"], call["workers"]) == ("127.0.0.1", 8123, 1)
    assert torch_threads == [1]
    with TestClient(call["app"]) as cli_client:
        assert cli_client.post("/recommend", json=SEARCH).status_code == 401
        result = cli_client.post("/recommend", json=SEARCH, headers={"X-API-Key": "s3cret"})
        assert result.json()["reranked"] is False


def test_cli_rerank_mode_overrides_the_runs_policy(tiny_artifacts: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import uvicorn

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append({"app": app}))
    monkeypatch.delenv("FIRSTCLICK_API_KEYS", raising=False)
    common = ["--artifacts", str(tiny_artifacts), "--no-auth", "--log-level", "error",
              "--no-event-log"]
    session = {"events": [{"type": "click", "item_id": i} for i in
                          Recommender.from_artifacts(tiny_artifacts, rerank=False).index.ids[:4]]}
    answers = {}
    for mode in ("never", "always"):
        assert run_main([*common, "--rerank-mode", mode])[0] == 0
        with TestClient(calls[-1]["app"]) as cli_client:
            answers[mode] = cli_client.post("/recommend", json=session).json()["reranked"]
    assert answers == {"never": False, "always": True}
    with pytest.raises(SystemExit) as stop, redirect_stderr(io.StringIO()) as err:
        serve_main([*common, "--rerank-mode", "sometimes"])
    assert stop.value.code == 2 and "invalid choice: 'sometimes'" in err.getvalue()
    with pytest.raises(SystemExit) as stop, redirect_stderr(io.StringIO()) as err:
        serve_main([*common, "--rerank-mode", "always", "--no-rerank"])
    assert stop.value.code == 2 and "needs the cross-encoder" in err.getvalue()


def test_a_reload_keeps_the_rerank_mode(tiny_artifacts: Path) -> None:
    import threading
    from types import SimpleNamespace

    from serve.reload import reload_watcher

    state = SimpleNamespace(recommender=Recommender.from_artifacts(tiny_artifacts,
                                                                   rerank_mode="always"),
                            write_lock=threading.Lock())
    watcher = reload_watcher(state, SimpleNamespace(counts=None), every_s=60.0)
    reloaded = watcher.load()
    assert (reloaded.rerank_mode, reloaded.policy.mode) == ("always", "always")


# ---- the load test ------------------------------------------------------------------------------
def test_load_test_sessions_mix_new_cold_and_warm_users(item_ids: list[str]) -> None:
    import random

    from benchmarks.load_test import build_sessions

    sessions = build_sessions(item_ids, ["Acme usb lamp", "Brand kettle 1 l"], 6, 5,
                              random.Random(0))
    kinds = [[e["type"] for e in s["events"]] for s in sessions]
    assert kinds[0] == ["search"] and kinds[3] == ["search"]
    assert all(1 <= len(k) <= 3 and "search" not in k for k in (kinds[1], kinds[4]))
    assert all(len(k) >= 6 and k.count("search") == 1 for k in (kinds[2], kinds[5]))
    assert {e["item_id"] for s in sessions for e in s["events"] if "item_id" in e} <= set(item_ids)


def test_load_test_runs_against_a_real_server(tiny_artifacts: Path, tmp_path: Path) -> None:
    from benchmarks import load_test

    before = ArtifactPaths(tiny_artifacts).catalogue.read_bytes()
    out = tmp_path / "load.json"
    assert load_test.main(["--artifacts", str(tiny_artifacts), "--requests", "24",
                           "--duration", "30", "--concurrency", "1,3", "--adds", "1",
                           "--warmup", "2", "--rerank-mode", "always", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [level["concurrency"] for level in result["levels"]] == [1, 3]
    for level in result["levels"]:
        assert (level["requests"], level["errors"], level["adds"]) == (24, 0, 1)
        assert level["delete_errors"] == 0 and level["latency_ms"]["p50"] > 0
        assert level["reranked"] == level["requests"]  # always: every answer re-scored
    assert result["config"]["host"] == "127.0.0.1" and result["goal"]["zero_errors"]
    assert result["command"].startswith("python -m benchmarks.load_test --artifacts")
    assert {"commit", "dirty", "seed", "machine"} <= set(result)
    assert ArtifactPaths(tiny_artifacts).catalogue.read_bytes() == before  # served a copy
