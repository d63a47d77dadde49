"""The shop loop on the demo run, measured: new shoppers' events in, a refresh while the service
answers, no failed request, and what the refresh did to quality.

    python -m benchmarks.refresh_demo --artifacts artifacts/demo

1. copies the run (``--work``; the original is not touched) and starts ``python -m serve`` on it
   (loopback, ``--reload-every 1``, no reranker);
2. replays ``--new-users`` synthetic shoppers the towers never saw (users past the demo's 1,000 of
   the same seeded shop, same catalogue) through ``POST /events``;
3. keeps ``--clients`` clients posting the demo test split's sessions while
   ``python -m pipeline.refresh`` runs, until the server has swapped the new towers in and a few
   seconds after; counts every status code and the latency before / during / after;
4. evaluates the old and the refreshed towers on the demo's own test split (full ranking, history
   masked) and reports the refresh's held-out figures on the new shoppers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

import numpy as np  # noqa: E402

from benchmarks.load_test import free_port  # noqa: E402
from benchmarks.machine import provenance  # noqa: E402


def replay(url: str, n_users: int, seed: int) -> int:
    """POST the events of ``n_users`` shoppers beyond the demo's 1,000 (one batch per user)."""
    import httpx

    from recdata import load_dataset

    dataset = load_dataset("synthetic", n_items=1500, n_users=1000 + n_users, seed=seed)
    fresh = dataset.events.loc[dataset.events["user_id"] > "U1000"]
    sent = 0
    with httpx.Client(base_url=url, timeout=60) as http:
        for user_id, group in fresh.groupby("user_id", sort=True):
            events = [{"user_id": f"replay-{user_id}", "event": e.event, "ts": int(e.ts),
                       **({"query": e.query} if e.event == "search" else {"item_id": e.item_id})}
                      for e in group.itertuples()]
            response = http.post("/events", json={"events": events})
            response.raise_for_status()
            sent += len(events)
    return sent


def test_sessions(run: Path, limit: int) -> list[dict]:
    """Sessions (JSON) from the demo's test split contexts."""
    from omegaconf import OmegaConf

    from pipeline.config import load_split

    cfg = OmegaConf.load(run / "config.yaml")
    split = load_split(cfg)
    out = []
    for row in split.test.head(limit).itertuples():
        events = [{"type": "search", "query": q} if t == "search" else
                  {"type": t, "item_id": i}
                  for i, t, q in zip(row.hist_items, row.hist_types, row.hist_queries)]
        out.append({"events": events[-20:]})
    return out


def evaluate(run: Path, towers_dir: Path) -> dict[str, Any]:
    """Masked test figures of the towers in ``towers_dir`` on the run's own split."""
    from omegaconf import OmegaConf

    from pipeline.config import load_split
    from towers import SessionDataModule, TwoTowerModule, load_towers
    from towers.losses import FullSoftmaxLoss

    cfg = OmegaConf.load(run / "config.yaml")
    split = load_split(cfg)
    model = load_towers(towers_dir)
    data = SessionDataModule(split, max_seq_len=model.user_tower.max_seq_len)
    model.item_tower.set_query_texts(data.query_texts)  # the split's search queries
    module = TwoTowerModule(model.item_tower, model.user_tower, FullSoftmaxLoss(),
                            item_ids=model.item_ids, long_tail_mask=data.long_tail_mask)
    result = module.evaluate(data.test)["masked"]
    pick = ("recall_at_10", "ndcg_at_10")
    return {"overall": {k: round(result["overall"][k], 4) for k in pick},
            "by_segment": {name: {**{k: round(seg[k], 4) for k in pick}, "n": seg["count"]}
                           for name, seg in result["by_segment"].items()}}


def load(url: str, sessions: list[dict], stop: threading.Event, out: list[tuple]) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=120) as http:
        n = 0
        while not stop.is_set():
            start = time.perf_counter()
            try:
                code = http.post("/recommend", json=sessions[n % len(sessions)]).status_code
            except httpx.HTTPError:
                code = -1
            out.append((time.monotonic(), code, (time.perf_counter() - start) * 1e3))
            n += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", default="artifacts/demo")
    parser.add_argument("--work", default="artifacts/demo_refresh")
    parser.add_argument("--new-users", type=int, default=400)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--holdout-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/refresh_demo.json")
    args = parser.parse_args(argv)
    source, work = Path(args.artifacts), Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, work, ignore=shutil.ignore_patterns("events", "refresh.json"))
    shutil.copytree(work / "towers", work.parent / f".{work.name}-old-towers", dirs_exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = (work.parent / f"{work.name}-server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "serve", "--artifacts", str(work), "--port", str(port),
         "--no-rerank", "--reload-every", "1", "--user-key-file", ".secrets/user.key"],
        cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        sent = replay(url, args.new_users, args.seed)
        sessions = test_sessions(work, 300)
        stop, samples = threading.Event(), []
        clients = [threading.Thread(target=load, args=(url, sessions, stop, samples))
                   for _ in range(args.clients)]
        for client in clients:
            client.start()
        time.sleep(5)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pipeline.refresh", "--artifacts",
                               str(work), "--holdout-every", str(args.holdout_every),
                               "--seed", str(args.seed)],
                              cwd=ROOT, capture_output=True, text=True)
        committed = time.monotonic()
        if proc.returncode != 0:
            raise SystemExit(f"refresh failed: {proc.stderr[-2000:]}")
        summary = json.loads(proc.stdout)
        swapped = None
        while swapped is None and time.monotonic() < committed + 120:
            if "reload: now serving" in (work.parent / f"{work.name}-server.log").read_text():
                swapped = time.monotonic()
            time.sleep(0.2)
        time.sleep(5)
        stop.set()
        for client in clients:
            client.join()
    finally:
        server.terminate()
        server.wait(timeout=60)
        log_file.close()

    def window(lo: float, hi: float) -> dict[str, Any]:
        rows = [(c, ms) for t, c, ms in samples if lo <= t < hi]
        ms = np.array([m for _, m in rows]) if rows else np.zeros(1)
        return {"requests": len(rows), "errors": sum(c != 200 for c, _ in rows),
                "p50_ms": round(float(np.percentile(ms, 50)), 1),
                "p95_ms": round(float(np.percentile(ms, 95)), 1)}

    end = max(t for t, _, _ in samples) + 1
    swap_at = swapped or end
    report = {
        **provenance(" ".join(["python", "benchmarks/refresh_demo.py", *sys.argv[1:]]),
                     args.seed, ["torch", "faiss-cpu", "pytorch-lightning", "fastapi"]),
        "events_replayed": sent, "new_users": args.new_users, "clients": args.clients,
        "refresh": summary, "refresh_wall_s": round(committed - started, 1),
        "swap_after_commit_s": round(swap_at - committed, 1) if swapped else None,
        "status_codes": {str(c): sum(1 for _, x, _ in samples if x == c)
                         for c in sorted({x for _, x, _ in samples})},
        "latency": {"before_refresh": window(0, started),
                    "during_refresh": window(started, swap_at),
                    "after_swap": window(swap_at, end)},
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")  # before the slow part
    report["demo_test_split"] = {
        "before": evaluate(work, work.parent / f".{work.name}-old-towers"),
        "after": evaluate(work, work / "towers")}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("events_replayed", "refresh_wall_s",
                                             "swap_after_commit_s", "status_codes", "latency")},
                     indent=1))
    print(json.dumps(report["demo_test_split"]["before"]["overall"]),
          json.dumps(report["demo_test_split"]["after"]["overall"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
