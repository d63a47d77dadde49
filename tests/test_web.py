"""The page (serve/web.py + serve/web/): its JSON routes through TestClient, and the page itself
in a real headless Chromium driven by Playwright: load, search, click two products, watch the
recommendations change and explain themselves, toggle the reranker, open the benchmark view.

The browser test needs the ``playwright`` package (dev extra) and the OS's Chromium
(``apt-get install -y chromium``; Playwright's own browser download is not used). Without them it
is skipped with the reason, unless ``FIRSTCLICK_REQUIRE_BROWSER=1`` (set by ``.ci/run`` once
Chromium is installed), which turns the skip into a failure. Its screenshot is kept in
``test-artifacts/`` (or ``$FIRSTCLICK_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from engine import Recommender, load_catalogue
from recdata.eventlog import log_path, scan
from serve.app import create_app

ROOT = Path(__file__).resolve().parent.parent
KEY = b"web-test-key-0123456789"
CHROMIUM = os.environ.get("FIRSTCLICK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def client(tiny_artifacts: Path) -> TestClient:
    app = create_app(recommender=Recommender.from_artifacts(tiny_artifacts, rerank=False),
                     api_keys=set())
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def catalogue(tiny_artifacts: Path):
    return load_catalogue(tiny_artifacts)


# ---- routes -------------------------------------------------------------------------------------
def test_the_page_and_its_files_are_served(client: TestClient) -> None:
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for src in ("/ui/static/app.js", "/ui/static/style.css"):
        assert src in page.text and client.get(src).status_code == 200


def test_catalogue_search_matches_every_word_title_hits_first(client: TestClient,
                                                              catalogue) -> None:
    title = catalogue["title"].iloc[0]
    word = title.split()[0].lower()
    items = client.post("/catalogue/search", json={"q": word, "limit": 50}).json()["items"]
    expected = catalogue.loc[(catalogue["title"] + " " + catalogue["category"].fillna("") + " "
                              + catalogue["brand"].fillna("")).str.lower().str.contains(word)]
    assert {i["item_id"] for i in items} == set(expected["item_id"])
    in_title = [word in i["title"].lower() for i in items]
    assert in_title == sorted(in_title, reverse=True)
    two = " ".join(title.lower().split()[:2])
    assert all(all(w in (i["title"] + " " + (i["category"] or "") + " " + (i["brand"] or ""))
                   .lower() for w in two.split())
               for i in client.post("/catalogue/search", json={"q": two}).json()["items"])
    assert client.post("/catalogue/search", json={"q": "zzqx nothing"}).json()["items"] == []
    popular = client.post("/catalogue/search", json={"q": "", "limit": 5}).json()["items"]
    assert [i["popularity"] for i in popular] == sorted(catalogue["popularity"], reverse=True)[:5]
    ids = catalogue["item_id"].tolist()[:3]
    looked_up = client.post("/catalogue/search", json={"ids": [*ids, "NOPE"]}).json()["items"]
    assert [i["item_id"] for i in looked_up] == ids


def test_catalogue_search_refuses_bad_bodies(client: TestClient) -> None:
    assert client.post("/catalogue/search", json={"q": 3}).json()["detail"][0]["loc"] == \
        ["body", "q"]
    assert client.post("/catalogue/search", json={"q": "", "limit": 0}).status_code == 422
    assert client.post("/catalogue/search", json={"query": "x"}).status_code == 422
    assert client.post("/catalogue/search", content=b'{"q": "x"}',
                       headers={"content-type": "text/plain"}).status_code == 415


def test_examples_and_reports(client: TestClient) -> None:
    examples = client.get("/ui/examples").json()["examples"]
    assert {e["name"] for e in examples} == {p.stem for p in (ROOT / "examples").glob("*.json")}
    reports = client.get("/ui/reports").json()["reports"]
    names = {p.stem for p in (ROOT / "benchmarks" / "results").glob("*.md")}
    assert {r["name"] for r in reports} == names
    if names:
        html = "".join(r["html"] for r in reports)
        assert "<table>" in html
        for src in [s.split('"')[0] for s in html.split('src="')[1:]]:
            assert src.startswith("/ui/reports/files/")
            assert client.get(src).headers["content-type"] == "image/png"
    assert client.get("/ui/reports/files/synthetic.json").status_code == 404
    assert client.get("/ui/reports/files/..%2F..%2Fpyproject.toml").status_code == 404


def test_with_api_keys_the_page_is_public_and_the_data_is_not(tiny_artifacts: Path) -> None:
    app = create_app(recommender=Recommender.from_artifacts(tiny_artifacts, rerank=False),
                     api_keys={"k1"})
    with TestClient(app) as keyed:
        assert keyed.get("/ui/").status_code == 200
        assert keyed.get("/ui/static/app.js").status_code == 200
        assert keyed.post("/catalogue/search", json={"q": ""}).status_code == 401
        assert keyed.post("/catalogue/search", json={"q": ""},
                          headers={"X-API-Key": "k1"}).status_code == 200


# ---- the page in a real browser -----------------------------------------------------------------
def _browser_or_skip() -> None:
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "the playwright package is not installed (pip install -e '.[dev]')"
    if problem is None and not Path(CHROMIUM).is_file():
        problem = f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    if problem:
        if os.environ.get("FIRSTCLICK_REQUIRE_BROWSER") == "1":
            pytest.fail(f"FIRSTCLICK_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live_url(artifacts_copy: Path):
    import uvicorn

    app = create_app(artifacts_copy, api_keys=set(), event_log=artifacts_copy / "events",
                     user_key=KEY)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


REC_IDS = ("() => JSON.stringify([...document.querySelectorAll('[data-testid=rec-item]')]"
           ".map(e => e.dataset.itemId))")


def test_the_page_in_a_real_browser(live_url: str, artifacts_copy: Path, catalogue) -> None:
    _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    word = catalogue["title"].iloc[0].split()[0]
    shots = Path(os.environ.get("FIRSTCLICK_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(live_url + "/ui/")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            expect(page.get_by_test_id("segment")).to_have_text("new user")
            before = page.evaluate(REC_IDS)
            assert len(json.loads(before)) == 10

            page.get_by_test_id("log-events").check()
            page.get_by_test_id("search-input").fill(word)
            results = page.get_by_test_id("result-item")
            expect(results.first).to_contain_text(word, ignore_case=True)
            first = results.first.get_attribute("data-item-id")
            results.first.click()  # product 1: from the search results
            expect(page.get_by_test_id("segment")).to_have_text("cold user")
            page.wait_for_function(f"prev => ({REC_IDS})() !== prev", arg=before)
            shown = page.evaluate(REC_IDS)
            after_one = json.loads(shown)
            assert first not in after_one and len(after_one) == 10

            card = page.get_by_test_id("rec-item").first
            second = card.get_attribute("data-item-id")
            card.click()  # product 2: a recommended one
            expect(page.get_by_test_id("session-event")).to_have_count(2)
            page.wait_for_function(f"prev => ({REC_IDS})() !== prev", arg=shown)
            after_two = json.loads(page.evaluate(REC_IDS))
            assert second not in after_two and first not in after_two
            expect(page.get_by_test_id("because").first).to_contain_text("you clicked")
            expect(page.get_by_test_id("timings")).to_contain_text("total")
            expect(page.get_by_test_id("reranked")).to_have_text("reranked")  # a cold user
            page.get_by_test_id("rerank").uncheck()
            expect(page.get_by_test_id("reranked")).to_have_text("not reranked")
            page.screenshot(path=str(shots / "web_page.png"), full_page=True)

            page.get_by_test_id("tab-bench").click()
            if list((ROOT / "benchmarks" / "results").glob("*.md")):
                expect(page.get_by_test_id("report").locator("table").first).to_be_visible()
            page.screenshot(path=str(shots / "web_benchmarks.png"))
            assert errors == []
        finally:
            browser.close()
    logged = [e["item_id"] for e in scan(log_path(artifacts_copy)).events()]
    assert logged == [first, second]  # "Send clicks to /events" logged both clicks
    assert (shots / "web_page.png").stat().st_size > 10_000
