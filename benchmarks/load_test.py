"""HTTP load test of ``python -m serve``: throughput and latency per client concurrency.

    python -m benchmarks.load_test --artifacts artifacts/demo                   # defaults below
    python -m benchmarks.load_test --artifacts A --requests 300 --duration 20 --concurrency 1,2,4

Starts the server in a subprocess on a free port of 127.0.0.1 (loopback only), over a private
copy of the artifacts (``--in-place`` to skip the copy: the live adds are then deleted again at
the end of each level), with a random API key so the auth path is part of what is measured.
Waits for ``/healthz``, warms up, then for each concurrency runs that many asyncio httpx
clients, each level bounded by ``--requests`` AND ``--duration``: a mix of sessions built from
the catalogue's item ids (new users who only searched, cold users with 1-3 clicks, warm users
with 5-12 events) and ``--adds`` live ``POST /items`` spread over the level. Reports, per level,
throughput, p50/p95/p99 latency and errors; stops the server; writes JSON (``--out``) and prints
a table. The goal: 0 errors, and p99 within 3x p50 at the concurrency that saturates the CPU
(the smallest one reaching 95 % of the best throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

from benchmarks.machine import provenance  # noqa: E402
from engine.artifacts import ArtifactPaths, save_json  # noqa: E402 - json-only, no torch
from engine.cli import RERANK_MODES  # noqa: E402

HOST = "127.0.0.1"  # never any other address: the server under test is not for the network
SATURATION_SHARE = 0.95
ADD_EVERY = 25  # requests between two live item adds
P99_OVER_P50 = 3.0
LIBRARIES = ("torch", "faiss-cpu", "fastapi", "uvicorn", "httpx", "sentence-transformers")


def concurrency_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values


def positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value <= 0:
            raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="load_test.py", description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts", default="artifacts/demo", help="artifacts dir of a run")
    parser.add_argument("--requests", type=positive(int), default=2000,
                        help="most /recommend requests per concurrency level")
    parser.add_argument("--duration", type=positive(float), default=60.0,
                        help="most seconds per concurrency level")
    parser.add_argument("--concurrency", type=concurrency_list, default=[1, 2, 4, 8],
                        help="client concurrency levels, e.g. 1,2,4,8")
    parser.add_argument("--adds", type=int, default=3, help="live item adds per level")
    parser.add_argument("--warmup", type=int, default=20, help="requests before measuring")
    parser.add_argument("--k", type=positive(int), default=10, help="items per request")
    parser.add_argument("--no-rerank", action="store_true", help="serve without the reranker")
    parser.add_argument("--rerank-mode", choices=RERANK_MODES, default=None,
                        help="the service's --rerank-mode (default: the run's policy)")
    parser.add_argument("--engine-threads", type=positive(int), default=2,
                        help="server --engine-threads")
    parser.add_argument("--torch-threads", type=positive(int), default=1,
                        help="server --torch-threads")
    parser.add_argument("--in-place", action="store_true",
                        help="serve the artifacts dir itself instead of a temporary copy")
    parser.add_argument("--startup-timeout", type=positive(float), default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/load_test.json")
    return parser


# ---- sessions -----------------------------------------------------------------------------------
def build_sessions(ids: list[str], titles: list[str], n: int, k: int,
                   rng: random.Random) -> list[dict[str, Any]]:
    """``n`` sessions, in turn: a new user's search, a cold user's 1-3 clicks, a warm user's
    5-12 views/clicks/carts with a search among them."""
    def query() -> str:
        words = titles[rng.randrange(len(titles))].split()
        start = rng.randrange(max(1, len(words) - 2))
        return " ".join(words[start:start + rng.randint(2, 3)]).lower()

    sessions = []
    for number in range(n):
        kind = ("new_user", "cold_user", "warm_user")[number % 3]
        if kind == "new_user":
            events = [{"type": "search", "query": query()}]
        elif kind == "cold_user":
            events = [{"type": "click", "item_id": rng.choice(ids)}
                      for _ in range(rng.randint(1, 3))]
        else:
            events = [{"type": rng.choice(("view", "click", "click", "cart")),
                       "item_id": rng.choice(ids)} for _ in range(rng.randint(5, 12))]
            events.insert(rng.randrange(len(events)), {"type": "search", "query": query()})
        sessions.append({"user_id": f"load-{number}", "k": k, "events": events})
    return sessions


def percentiles(values_ms: list[float]) -> dict[str, float | None]:
    import numpy as np

    if not values_ms:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    p50, p95, p99 = np.percentile(values_ms, [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2),
            "p99": round(float(p99), 2), "mean": round(float(np.mean(values_ms)), 2)}


# ---- one level ----------------------------------------------------------------------------------
async def run_level(url: str, headers: dict[str, str], sessions: list[dict[str, Any]],
                    concurrency: int, max_requests: int, duration: float, adds: list[dict],
                    ) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    server_ms: list[float] = []
    reranked = 0  # answers the cross-encoder re-scored
    errors: dict[str, int] = {}
    add_ms: list[float] = []
    issued = 0
    # early in the level (every ADD_EVERY requests), so the time limit never skips them
    add_at = {min(max_requests - 1, ADD_EVERY * (n + 1)): item for n, item in enumerate(adds)}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60.0,
                                 limits=limits) as client:
        start = time.perf_counter()
        deadline = start + duration

        async def post(path: str, body: dict) -> tuple[str, float, dict | None]:
            began = time.perf_counter()
            try:
                response = await client.post(path, json=body)
                outcome = str(response.status_code)
                payload = response.json() if response.status_code < 300 else None
            except httpx.HTTPError as err:
                outcome, payload = type(err).__name__, None
            return outcome, (time.perf_counter() - began) * 1000.0, payload

        async def worker() -> None:
            nonlocal issued, reranked
            while issued < max_requests and time.perf_counter() < deadline:
                number, issued = issued, issued + 1
                if number in add_at:
                    outcome, ms, _ = await post("/items", add_at.pop(number))
                    add_ms.append(ms)
                    if outcome != "201":
                        errors[f"add {outcome}"] = errors.get(f"add {outcome}", 0) + 1
                outcome, ms, payload = await post("/recommend", sessions[number % len(sessions)])
                latencies.append(ms)
                if outcome == "200" and payload is not None:
                    server_ms.append(payload["timings_ms"]["total"])
                    reranked += bool(payload.get("reranked"))
                else:
                    errors[outcome] = errors.get(outcome, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": len(latencies),
            "errors": sum(errors.values()), "error_kinds": errors,
            "seconds": round(elapsed, 3), "throughput_rps": round(len(latencies) / elapsed, 2),
            "latency_ms": percentiles(latencies), "server_total_ms": percentiles(server_ms),
            "reranked": reranked, "adds": len(add_ms), "add_latency_ms": percentiles(add_ms)}


async def delete_items(url: str, headers: dict[str, str], ids: list[str]) -> int:
    import httpx

    failed = 0
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120.0) as client:
        for item_id in ids:
            response = await client.delete(f"/items/{item_id}")
            failed += response.status_code != 200
    return failed


# ---- the server ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def copy_artifacts(root: Path, into: Path) -> Path:
    """The parts the server reads (no checkpoints or logs) into ``into/<run>``: the top-level
    parts, and the serving state's current generation as the copy's own first one."""
    from engine.state import state_store
    from storage import link_tree

    target = into / root.name
    target.mkdir(parents=True)
    paths = ArtifactPaths(root)
    for part in ("config", "towers", "reranker", "metrics"):
        source: Path = getattr(paths, part)
        if source.is_dir():
            shutil.copytree(source, target / source.name)
        elif source.exists():
            shutil.copy2(source, target / source.name)
    store = state_store(root)
    current = store.current()
    for part in store.parts.values():  # top-level paths: read as the copy's generation 0
        if current is not None and current.has(part):
            link_tree(current.path(part), target / part.path)
    return target


def start_server(args: argparse.Namespace, root: Path, port: int, api_key: str,
                 log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "FIRSTCLICK_API_KEYS": api_key, "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                         if p)}
    command = [sys.executable, "-m", "serve", "--artifacts", str(root), "--host", HOST,
               "--port", str(port), "--log-level", "warning",
               "--engine-threads", str(args.engine_threads),
               "--torch-threads", str(args.torch_threads)]
    if args.no_rerank:
        command.append("--no-rerank")
    if args.rerank_mode:
        command += ["--rerank-mode", args.rerank_mode]
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT)


def wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> dict[str, Any]:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}")
        try:
            response = httpx.get(f"{url}/healthz", timeout=2.0)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no healthy server after {timeout:.0f} s")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# ---- report -------------------------------------------------------------------------------------
def judge(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """The saturating level (smallest concurrency within 95 % of the best throughput) and the
    goal: no errors anywhere, p99 <= 3 x p50 there."""
    best = max(level["throughput_rps"] for level in levels)
    saturating = next(level for level in levels
                      if level["throughput_rps"] >= SATURATION_SHARE * best)
    p50, p99 = saturating["latency_ms"]["p50"], saturating["latency_ms"]["p99"]
    zero_errors = all(level["errors"] == 0 for level in levels)
    tail_ok = p50 is not None and p99 is not None and p99 <= P99_OVER_P50 * p50
    return {"saturating_concurrency": saturating["concurrency"], "best_throughput_rps": best,
            "zero_errors": zero_errors, "p99_over_p50": round(p99 / p50, 2) if p50 else None,
            "p99_within_3x_p50": tail_ok, "met": zero_errors and tail_ok}


def table(result: dict[str, Any]) -> str:
    machine, config = result["machine"], result["config"]
    lines = [f"# {machine['cpu_model']}, {machine['cpu_cores']} cores, python "
             f"{machine['python']}, {machine['libraries']}",
             f"# artifacts {config['artifacts']} ({result['server']['items']} items), rerank "
             f"{not config['no_rerank']} (mode {config.get('rerank_mode') or 'policy'}), engine "
             f"threads {config['engine_threads']}, torch threads {config['torch_threads']}",
             f"{'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} "
             f"{'p95 ms':>8} {'p99 ms':>8} {'srv p50':>8} {'rerank':>6} {'adds':>4} "
             f"{'add p50':>8}"]
    for level in result["levels"]:
        lat, srv, add = level["latency_ms"], level["server_total_ms"], level["add_latency_ms"]
        lines.append(f"{level['concurrency']:>7} {level['requests']:>8} {level['errors']:>6} "
                     f"{level['throughput_rps']:>8.1f} {lat['p50'] or 0:>8.1f} "
                     f"{lat['p95'] or 0:>8.1f} {lat['p99'] or 0:>8.1f} {srv['p50'] or 0:>8.1f} "
                     f"{level.get('reranked', 0):>6} {level['adds']:>4} {add['p50'] or 0:>8.1f}")
    goal = result["goal"]
    lines.append(f"goal (0 errors, p99 <= 3x p50 at saturation = {goal['saturating_concurrency']}"
                 f" clients): {'met' if goal['met'] else 'NOT met'} (errors "
                 f"{'none' if goal['zero_errors'] else 'seen'}, p99/p50 {goal['p99_over_p50']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the load test; 0 when it ran (the goal is reported, not enforced), 2 on bad input
    or a server that does not come up."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.no_rerank and args.rerank_mode:
        parser.error(f"--rerank-mode {args.rerank_mode} needs the cross-encoder; drop "
                     "--no-rerank (or --rerank-mode)")
    source = Path(args.artifacts)
    try:
        ArtifactPaths(source).check(("towers", "catalogue", "index"))
        import pandas as pd

        catalogue = pd.read_parquet(ArtifactPaths(source).catalogue,
                                    columns=["item_id", "title"])
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    ids, titles = catalogue["item_id"].astype(str).tolist(), catalogue["title"].tolist()
    k = min(args.k, len(ids))
    sessions = build_sessions(ids, titles, max(300, min(args.requests, 5000)), k, rng)
    with tempfile.TemporaryDirectory(prefix="firstclick-load-") as tmp:
        root = source if args.in_place else copy_artifacts(source, Path(tmp))
        port, api_key = free_port(), secrets.token_urlsafe(24)
        url, headers = f"http://{HOST}:{port}", {"X-API-Key": api_key}
        log_path = Path(tmp) / "server.log"
        server = start_server(args, root, port, api_key, log_path)
        try:
            try:
                health = wait_healthy(url, server, args.startup_timeout)
            except RuntimeError as err:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                print(f"error: {err}; server log: {' | '.join(tail)}", file=sys.stderr)
                return 2
            asyncio.run(run_level(url, headers, sessions, 1, args.warmup, 3600.0, []))
            levels = []
            for level_no, concurrency in enumerate(args.concurrency):
                adds = [{"item_id": f"LOADTEST-{level_no}-{n}",
                         "title": f"{rng.choice(titles)} (load test {n})"}
                        for n in range(args.adds)]
                level = asyncio.run(run_level(url, headers, sessions, concurrency,
                                              args.requests, args.duration, adds))
                level["delete_errors"] = asyncio.run(
                    delete_items(url, headers, [a["item_id"] for a in adds][:level["adds"]]))
                levels.append(level)
                print(f"  {concurrency} clients: {level['throughput_rps']:.1f} req/s, p50 "
                      f"{level['latency_ms']['p50']} ms, errors {level['errors']}", flush=True)
        finally:
            stop_server(server)
    result = {**provenance("python -m benchmarks.load_test " + " ".join(
                  sys.argv[1:] if argv is None else argv), args.seed, LIBRARIES),
              "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "server": health,
              "config": {"artifacts": str(source), "requests": args.requests,
                         "duration_s": args.duration, "concurrency": args.concurrency,
                         "adds": args.adds, "k": k, "no_rerank": args.no_rerank,
                         "rerank_mode": args.rerank_mode,
                         "engine_threads": args.engine_threads,
                         "torch_threads": args.torch_threads, "host": HOST},
              "levels": levels}
    result["goal"] = judge(levels)
    out = Path(args.out)
    save_json(out, result)  # atomic: a killed run leaves the previous file whole
    print(table(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
