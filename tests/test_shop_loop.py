"""The real service on loopback under the two promises of the shop loop: an acknowledged event
survives a crash (``python -m serve`` in a child process, SIGKILL mid-traffic, restart, log
intact), and nothing the run writes holds a raw user id or a search string (``python -m serve``'s
``main`` in this process at debug log level; every file under the test's folder, the server's
log included, is scanned)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from engine import load_catalogue
from recdata.eventlog import encode_record, log_path, scan
from serve.__main__ import main as serve_main
from serve.app import create_app
from serve.privacy import key_from_file

ROOT = Path(__file__).resolve().parent.parent
RAW_USERS = ("alice.smith@example.com", "cust-7781-zulu")
SEARCHES = ("hand stitched yak wool", "quietest espresso grinder xq")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``python -m serve`` on a free port, its stdout+stderr in ``log_file``."""

    def __init__(self, run_dir: Path, key_file: Path, log_file: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("FIRSTCLICK_USER_KEY", None)
        env.pop("FIRSTCLICK_API_KEYS", None)
        self.log = log_file.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serve", "--artifacts", str(run_dir), "--port",
             str(self.port), "--no-rerank", "--no-auth", "--log-level", "debug",
             "--user-key-file", str(key_file), "--engine-threads", "2"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}: "
                                     f"{log_file.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError("the server did not start within 120 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def run(artifacts_copy: Path, tmp_path: Path) -> dict:
    return {"dir": artifacts_copy, "key": tmp_path / "secrets" / "user.key",
            "log": tmp_path / "server.log",
            "items": load_catalogue(artifacts_copy)["item_id"].tolist()}


def test_a_crash_never_loses_an_acknowledged_event_nor_leaves_a_torn_record(run: dict) -> None:
    server = Server(run["dir"], run["key"], run["log"])
    acked: set[int] = set()
    stop = threading.Event()
    counter = iter(range(1, 10**9))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            while not stop.is_set():
                with lock:
                    stamp = next(counter)
                batch = [{"user_id": f"user-{stamp % 7}", "event": "click", "ts": stamp * 10 + j,
                          "item_id": run["items"][stamp % len(run["items"])]} for j in range(3)]
                try:
                    response = http.post("/events", json={"events": batch})
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 200:
                    with lock:
                        acked.update(e["ts"] for e in batch)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.stop(signal.SIGKILL)  # mid-traffic: appends in flight
    stop.set()
    for thread in threads:
        thread.join()
    assert len(acked) >= 150
    found = scan(log_path(run["dir"]))  # raises on a damaged record
    logged = [e["ts"] for e in found.events()]
    assert acked <= set(logged)
    assert len(logged) == len(set(logged)) and len(logged) % 3 == 0  # whole batches only

    # a crash inside one write(2) cannot be caused by SIGKILL: leave a torn append by hand,
    # then restart (in this process: the same EventLog.open recovery the server runs first)
    torn = encode_record([{"user_id": "u_x", "event": "click", "item_id": run["items"][0],
                           "ts": 1, "seq": found.last_seq + 1}], found.last_seq + 1)[:-7]
    with log_path(run["dir"]).open("ab") as handle:
        handle.write(torn)
    app = create_app(run["dir"], api_keys=set(), rerank=False, web=False,
                     event_log=run["dir"] / "events", user_key=key_from_file(run["key"]))
    with TestClient(app) as client:
        response = client.post("/events", json={
            "user_id": "after-restart", "event": "click", "item_id": run["items"][1], "ts": 42})
        assert response.status_code == 200
        assert response.json()["last_seq"] == found.last_seq + 1
        counts = client.app.state.serve.recommender.counts
        assert sum(total for total, _ in counts.snapshot().values()) == len(logged) + 1
    again = scan(log_path(run["dir"]))
    assert again.torn_bytes == 0
    assert acked | {42} <= {e["ts"] for e in again.events()}


class InProcessServer:
    """``serve.__main__.main`` with its real arguments and uvicorn settings, the server run in a
    thread of this process (no second start-up cost); every log record, ours and uvicorn's,
    goes to ``log_file``."""

    def __init__(self, argv: list[str], log_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        import logging

        import uvicorn

        self.handler = logging.FileHandler(log_file)
        self.handler.setLevel(logging.DEBUG)
        # this test's own HTTP client logs its URLs: that is the shopper's side, not the
        # server; keep it quiet wherever other tests left handlers (stderr is scanned too)
        self.handler.addFilter(lambda r: not r.name.startswith(("httpx", "httpcore")))
        client_loggers = [logging.getLogger(n) for n in ("httpx", "httpcore")]
        for client_logger in client_loggers:  # (uvicorn's dictConfig resets ``disabled``)
            monkeypatch.setattr(client_logger, "level", logging.WARNING)
        # not "uvicorn.access": a handler there would switch uvicorn's access log on (it logs
        # when that logger has handlers); whatever it prints reaches stdout, which is scanned
        self.loggers = [logging.getLogger(n) for n in ("", "uvicorn", "uvicorn.error")]
        self.levels = [lg.level for lg in self.loggers]
        self.server: uvicorn.Server | None = None

        def run(app, **kwargs) -> None:  # what main() hands to uvicorn, served in a thread
            self.server = uvicorn.Server(uvicorn.Config(app, **kwargs))
            for logger in self.loggers:  # after uvicorn configured its loggers
                logger.addHandler(self.handler)
                logger.setLevel(logging.DEBUG)
            for client_logger in client_loggers:
                monkeypatch.setattr(client_logger, "disabled", True)
            self.thread = threading.Thread(target=self.server.run, daemon=True)
            self.thread.start()

        monkeypatch.setattr(uvicorn, "run", run)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        assert serve_main([*argv, "--port", str(port)]) == 0
        deadline = time.monotonic() + 60
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        for logger, level in zip(self.loggers, self.levels):
            logger.removeHandler(self.handler)
            logger.setLevel(level)
        self.handler.close()


def test_no_file_the_run_writes_holds_a_raw_user_id_or_a_search_string(
        run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FIRSTCLICK_API_KEYS", raising=False)
    server = InProcessServer(["--artifacts", str(run["dir"]), "--no-rerank", "--no-auth",
                              "--log-level", "debug", "--user-key-file", str(run["key"])],
                             run["log"], monkeypatch)
    items = run["items"]
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for user in RAW_USERS:
                events = [{"user_id": user, "event": "search", "query": SEARCHES[0]},
                          {"user_id": user, "event": "click", "item_id": items[2]},
                          {"user_id": user, "event": "purchase", "item_id": items[3]}]
                assert http.post("/events", json={"events": events}).status_code == 200
                session = {"user_id": user, "events": [
                    {"type": "search", "query": SEARCHES[1]},
                    {"type": "click", "item_id": items[2]}]}
                assert http.post("/recommend", json=session).status_code == 200
                assert http.post("/recommend/batch",
                                 json={"sessions": [session]}).status_code == 200
            bad = {"user_id": RAW_USERS[0], "event": "click", "item_id": SEARCHES[0]}
            assert http.post("/events", json=bad).status_code == 422
            assert http.post("/catalogue/search", json={"q": SEARCHES[1]}).status_code == 200
            assert http.get("/recommend", params={"user": RAW_USERS[1]}).status_code == 405
            deleted = http.delete("/users/" + urllib.parse.quote(RAW_USERS[0], safe=""))
            assert deleted.json()["deleted_events"] == 3
    finally:
        server.stop()
        out, err = capfd.readouterr()  # what the server printed (uvicorn's own handlers)
        (tmp_path / "server_stdio.log").write_text(out + err)
    assert len(list(scan(log_path(run["dir"])).events())) == 3  # the other user's events
    needles = [s.encode() for s in RAW_USERS + SEARCHES]
    needles += [urllib.parse.quote(s, safe="").encode() for s in RAW_USERS + SEARCHES]
    needles += [urllib.parse.quote_plus(s).encode() for s in SEARCHES]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert run["log"] in written and log_path(run["dir"]) in written
    leaks = [(str(path.relative_to(tmp_path)), line.decode(errors="replace")[:200])
             for path in written for line in path.read_bytes().splitlines()
             if any(needle.lower() in line.lower() for needle in needles)]
    assert leaks == []  # (file, the line that holds a raw id or search string)
    # the scan can see: the debug log does record every request, by its route template
    assert b"DELETE /users/{user_id} 200" in run["log"].read_bytes()
