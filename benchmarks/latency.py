"""Speed figures: per-stage serving latency, catalogue encoding throughput, peak memory per step.

- Latency replays sampled test sessions one at a time through ``engine.Recommender.recommend``
  (the serving path), after a warm-up, and reports p50/p95/p99 of the engine's own per-stage
  timings (encode, search, rank, rerank, total) plus the wall time around the call.
- Encoding throughput: the towers' text path (BERT -> adapter, no cache: what new items cost)
  against a bare ``SentenceTransformer.encode`` of the same BERT over the same texts, in the same
  process; the ratio is the towers' overhead. What ``build_index`` does from trained towers
  (``engine.encode_catalogue`` reads the saved item table, then a flat index) is timed beside.
- Peak memory: :class:`StepMemory` resets the kernel's peak-RSS mark before each step
  (``/proc/self/clear_refs`` = 5) and reads ``VmHWM`` after it, so each step's figure is its own
  peak resident set (the process baseline included). Where that is not allowed it falls back to
  ``getrusage`` maxrss, a high-water mark over the whole run so far (the method is recorded).
"""

from __future__ import annotations

import logging
import os
import re
import resource
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from engine.cli import DEFAULT_SERVE_THREADS

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("encode", "search", "rank", "rerank", "total")


def _status_kb(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class StepMemory:
    """Peak resident memory of named steps, measured in this process (see module docstring)."""

    def __init__(self) -> None:
        self.method = ("VmHWM after resetting it with /proc/self/clear_refs (per-step peak RSS)"
                       if _reset_peak() and _status_kb("VmHWM") is not None else
                       "getrusage ru_maxrss (process high-water mark so far; not per step)")
        self.steps: dict[str, dict[str, float]] = {}

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        per_step = self.method.startswith("VmHWM")
        if per_step:
            _reset_peak()
        start_kb = _status_kb("VmRSS")
        started = time.perf_counter()
        try:
            yield
        finally:
            peak_kb = (_status_kb("VmHWM") if per_step
                       else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            self.steps[name] = {
                "peak_rss_mb": round((peak_kb or 0) / 1024, 1),
                "start_rss_mb": round((start_kb or 0) / 1024, 1),
                "seconds": round(time.perf_counter() - started, 2),
            }

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "steps": self.steps}


def percentiles(values_ms: Sequence[float]) -> dict[str, float | int | None]:
    """p50 / p95 / p99 / mean of a list of milliseconds (None when empty), and the count."""
    values = np.asarray([v for v in values_ms if v is not None], dtype=np.float64)
    if not values.size:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "n": 0}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3),
            "p99": round(float(p99), 3), "mean": round(float(values.mean()), 3),
            "n": int(values.size)}


def replay(recommender: Any, sessions: Sequence[dict[str, Any]], warmup: int = 5
           ) -> dict[str, Any]:
    """Send ``sessions`` one at a time through ``recommender.recommend``; per-stage percentiles.

    The first ``warmup`` sessions are sent once beforehand and not counted. ``reranked_only``
    holds the same figures over the sessions the engine actually re-scored.
    """
    for session in sessions[:warmup]:
        recommender.recommend(session)
    timings: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "wall")}
    reranked: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "wall")}
    errors: list[str] = []
    for session in sessions:
        started = time.perf_counter()
        try:
            result = recommender.recommend(session)
        except ValueError as err:  # a session the engine refuses is counted, not fatal
            errors.append(str(err)[:200])
            continue
        wall_ms = 1000.0 * (time.perf_counter() - started)
        stages = {**{s: result.get("timings_ms", {}).get(s) for s in STAGES}, "wall": wall_ms}
        for stage, value in stages.items():
            timings[stage].append(value)
            if result.get("reranked"):
                reranked[stage].append(value)
    return {
        "sessions": len(sessions) - len(errors), "errors": len(errors),
        "first_errors": errors[:3], "reranked_sessions": len(reranked["wall"]),
        "stages_ms": {stage: percentiles(values) for stage, values in timings.items()},
        "reranked_only_ms": {stage: percentiles(values) for stage, values in reranked.items()},
    }


def measure_latency(
    artifacts_dir: str | Path,
    sessions: Sequence[dict[str, Any]],
    n_plain: int,
    n_rerank: int,
    warmup: int = 5,
    threads: int = DEFAULT_SERVE_THREADS,
) -> dict[str, Any]:
    """Latency without rerank (``n_plain`` sessions) and with it (``n_rerank``) through
    ``engine.Recommender.from_artifacts`` with ``threads`` intra-op threads (torch and FAISS;
    the service's default), restored afterwards; an unavailable engine is reported, not
    raised."""
    try:
        from engine import Recommender
        from engine.loading import restore_compute_threads, set_compute_threads
    except ImportError as err:
        return {"error": f"engine.Recommender is not importable: {err}"}
    out: dict[str, Any] = {"artifacts": str(artifacts_dir), "warmup_sessions": warmup,
                           "threads": threads}
    before = set_compute_threads(threads)
    try:
        for label, rerank, count in (("without_rerank", False, n_plain),
                                     ("with_rerank", True, n_rerank)):
            if count <= 0:
                out[label] = {"skipped": "0 sessions requested"}
                continue
            try:
                recommender = Recommender.from_artifacts(artifacts_dir, rerank=rerank)
            except (ValueError, OSError) as err:
                out[label] = {"error": f"Recommender.from_artifacts({str(artifacts_dir)!r}, "
                                       f"rerank={rerank}) failed: {err}"}
                continue
            out[label] = replay(recommender, list(sessions[:count]), warmup)
            log.info("latency %s: %s", label, out[label]["stages_ms"]["total"])
            del recommender
    finally:
        restore_compute_threads(before)
    return out


def _items_per_s(n_items: int, seconds: float) -> float:
    return round(n_items / seconds, 1) if seconds > 0 else float("inf")


def encode_throughput(model: Any, texts: Sequence[str], batch_size: int = 64) -> dict[str, Any]:
    """Items/s of the towers' text path (new items: BERT -> adapter, no cache) vs. a bare
    ``SentenceTransformer.encode`` of the same BERT over the same texts; and of what
    ``build_index`` does from saved towers (``engine.encode_catalogue``: the item table, no
    BERT pass, then a flat index)."""
    from engine.encoding import encode_catalogue
    from index import CatalogueIndex

    texts = list(texts)
    out: dict[str, Any] = {"items": len(texts), "batch_size": batch_size}
    tower = model.item_tower
    if getattr(tower, "supports_text", False):
        bert = tower.bert
        bert.encode(texts[:8], batch_size=batch_size, show_progress_bar=False)  # warm-up
        started = time.perf_counter()
        bert.encode(texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True,
                    normalize_embeddings=True)
        bare = _items_per_s(len(texts), time.perf_counter() - started)
        started = time.perf_counter()
        model.item_emb_from_texts(texts)
        towers = _items_per_s(len(texts), time.perf_counter() - started)
        out.update(bare_sentence_transformer_items_per_s=bare,
                   towers_text_path_items_per_s=towers,
                   towers_vs_bare_ratio=round(towers / bare, 3) if bare else None)
    item_ids = list(model.item_ids)
    started = time.perf_counter()
    item_emb = encode_catalogue(model, item_ids, [""] * len(item_ids), progress=False)
    encoded = time.perf_counter()
    CatalogueIndex.build(item_emb, item_ids, "flat", use_gpu=False)
    done = time.perf_counter()
    out.update(build_index_items=len(item_ids),
               build_index_encode_items_per_s=_items_per_s(len(item_ids), encoded - started),
               build_index_flat_build_s=round(done - encoded, 4),
               build_index_items_per_s=_items_per_s(len(item_ids), done - started))
    return out


def ensure_index(run_dir: Path) -> dict[str, Any] | None:
    """``pipeline.index_stage.ensure_index`` for a run directory."""
    from engine.artifacts import ArtifactPaths
    from pipeline.index_stage import ensure_index as ensure

    return ensure(ArtifactPaths(run_dir))


def serving_speed(
    run_dir: Path,
    test: Any,
    model: Any,
    texts: Sequence[str],
    memory: StepMemory,
    n_plain: int,
    n_rerank: int,
    seed: int,
    encode_items: int | None = None,
) -> dict[str, Any]:
    """Latency of ``run_dir`` through the engine on seeded test sessions, and the encoding
    throughput of its towers (``model``); each step's peak memory goes to ``memory``."""
    from engine.session import sessions_from_examples

    n = max(n_plain, n_rerank)
    rows = test.sample(n=n, replace=n > len(test), random_state=seed)
    sessions = sessions_from_examples(rows["hist_items"], rows["hist_types"],
                                      rows["hist_queries"], k=10)
    if not (Path(run_dir) / "reranker").is_dir():
        n_rerank = 0
    with memory.measure("build index (if missing or stale)"):
        built = ensure_index(run_dir)
    with memory.measure("latency"):
        latency = measure_latency(run_dir, sessions, n_plain, n_rerank)
    latency.update(sampled_with_replacement=n > len(test), sample_seed=seed,
                   index_built_by_this_run=built)
    with memory.measure("encode throughput"):
        throughput = encode_throughput(model, list(texts)[:encode_items])
    return {"latency": latency, "encode_throughput": throughput}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.latency --artifacts RUN --data amazon_scientific``: the serving
    latency alone (one session at a time through the engine), on a quiet machine, into a
    results file with its provenance; the full benchmark report times the same path."""
    import argparse
    import json
    import sys

    from benchmarks.machine import provenance
    from engine.cli import positive_int
    from engine.session import sessions_from_examples
    from pipeline.config import compose, data_selector, load_split

    p = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=main.__doc__)
    p.add_argument("--artifacts", type=Path, required=True, help="a run dir (towers + state)")
    p.add_argument("--data", required=True, help="the run's benchmark setting: experiment=DATA "
                   "where conf/experiment has one, else data=DATA")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--sessions", type=positive_int, default=1000)
    p.add_argument("--rerank-sessions", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=DEFAULT_SERVE_THREADS,
                   help="intra-op threads (torch, FAISS) per call; default "
                        f"{DEFAULT_SERVE_THREADS}, as `python -m serve`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        split = load_split(compose([data_selector(args.data), f"seed={args.seed}",
                                    *args.overrides]))
    except Exception as err:  # hydra's config errors, DataError: one line, not a traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: --data {args.data} {' '.join(args.overrides)}".rstrip()
              + f": {first} (a conf/data or conf/experiment name, valid --set overrides)",
              file=sys.stderr)
        return 2
    if not (args.artifacts / "towers" / "towers.json").is_file():
        print(f"error: {args.artifacts} holds no trained towers (towers/towers.json); pass a run "
              "directory made by train.py", file=sys.stderr)
        return 2
    n = max(args.sessions, args.rerank_sessions)
    rows = split.test.sample(n=n, replace=n > len(split.test), random_state=args.seed)
    sessions = sessions_from_examples(rows["hist_items"], rows["hist_types"],
                                      rows["hist_queries"], k=10)
    load = os.getloadavg()
    latency = measure_latency(args.artifacts, sessions, args.sessions, args.rerank_sessions,
                              threads=args.threads)
    report = {**provenance("python -m benchmarks.latency " + " ".join(argv or sys.argv[1:]),
                           args.seed, ("torch", "faiss-cpu", "lightgbm", "bm25s")),
              "threads": args.threads, "load_average_start_end": [load, os.getloadavg()],
              "test_rows_sampled": n, "latency": latency}
    from storage import write_file

    text = json.dumps(report, indent=1, default=str) + "\n"
    write_file(args.out, lambda temp: temp.write_text(text))
    print(json.dumps({k: v.get("stages_ms", v) for k, v in latency.items()
                      if isinstance(v, dict)}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
