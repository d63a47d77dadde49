"""Cross-encoder speed vs quality on CPU: fp32 torch, ONNX fp32, ONNX int8, ``rerank=fast``.

For each engine: latency of one session's 20 (context, item) pairs at 1 and 2 threads (p50 /
p99 over seeded validation sessions, warm-up excluded, tokenisation included and also timed
apart), and NDCG@10 of the cross-encoder alone (all top-20 re-scored) on the same rows next
to the towers' own order. Then the whole request through ``engine.Recommender`` for cold
sessions (contexts cut to the last item event, all 20 candidates re-scored) with the served
engine, with its stage timings. Validation rows only: this picks nothing, it measures.

    python -m benchmarks.rerank_speed --artifacts artifacts/amazon_scientific_bert \\
        --fast-artifacts artifacts/amazon_scientific_bert_fast

``--fast-artifacts``: a run dir with the same towers and a reranker trained with
``rerank=fast`` (``python train.py experiment=amazon_scientific stage=reranker rerank=fast
run_name=amazon_scientific_bert_fast`` after linking the towers, catalogue.parquet and
config.yaml of the main run into it). Writes ``benchmarks/results/rerank_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("rerank_speed")
LIBRARIES = ("torch", "onnxruntime", "onnx", "sentence-transformers", "transformers")


def _split(run_dir: Path) -> Any:
    import yaml

    from recdata import load_dataset, split_dataset

    data = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
    return split_dataset(load_dataset(data["source"], **data["options"]), **data["split"])


def _rows(run_dir: Path, n: int, seed: int) -> tuple[Any, Any, list, dict, dict]:
    from engine.artifacts import load_catalogue
    from engine.rerank_sources import retrieve_candidates
    from towers import load_towers

    valid = _split(run_dir).valid
    valid = valid.sample(n=min(n, len(valid)), random_state=seed)
    model = load_towers(run_dir / "towers")
    catalogue = load_catalogue(run_dir)
    cands = retrieve_candidates(model, valid, 20)
    return valid, model, cands, dict(zip(catalogue["item_id"], catalogue["text"])), dict(
        zip(catalogue["item_id"], catalogue["title"]))


def _engine(path: Path, name: str, threads: int) -> Any:
    from rerank import Reranker

    overrides = {"fp32 torch": {"backend": "torch", "quantize": "none"},
                 "ONNX fp32": {"backend": "onnx", "quantize": "none"}}.get(name, {})
    return Reranker.load(path, threads=threads, **overrides)


def measure(reranker: Any, contexts: list[str], texts: list[list[str]], warmup: int = 5
            ) -> dict[str, Any]:
    from benchmarks.latency import percentiles

    for context, items in zip(contexts[:warmup], texts[:warmup]):
        reranker.score(context, items)
    total, tokenise, scores = [], [], []
    for context, items in zip(contexts, texts):
        started = time.perf_counter()
        scores.append(reranker.score(context, items))
        total.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        reranker.encoder.encode([context] * len(items), items)
        tokenise.append((time.perf_counter() - started) * 1000)
    return {"ms": percentiles(total), "tokenise_ms": percentiles(tokenise), "scores": scores}


def engine_latency(run_dir: Path, valid: Any, n: int, threads: int) -> dict[str, Any]:
    """Cold sessions (last item event only) through Recommender, every candidate re-scored."""
    import torch

    from benchmarks.latency import replay
    from engine import Recommender
    from engine.session import sessions_from_examples
    from recdata import truncate_history
    from rerank import RerankPolicy

    torch.set_num_threads(threads)
    rows = truncate_history(valid.iloc[:n], 1)
    sessions = sessions_from_examples(rows["hist_items"], rows["hist_types"],
                                      rows["hist_queries"], k=10)
    recommender = Recommender.from_artifacts(run_dir, policy=RerankPolicy(mode="always",
                                                                          top_n=20))
    out = replay(recommender, sessions)
    out["engine"] = recommender.reranker.engine if recommender.reranker else None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", type=Path, required=True)
    p.add_argument("--fast-artifacts", type=Path)
    p.add_argument("--rows", type=int, default=400, help="validation rows (NDCG, 2-thread run)")
    p.add_argument("--latency-rows", type=int, default=150, help="rows timed at 1 thread")
    p.add_argument("--engine-sessions", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/rerank_speed.json")
    args = p.parse_args(argv)
    from benchmarks.machine import provenance
    from engine.artifacts import save_json
    from rerank.train import rank_metrics

    for run in filter(None, (args.artifacts, args.fast_artifacts)):
        if not (run / "reranker" / "reranker_config.json").is_file():
            print(f"error: no trained reranker in {run}/reranker; train it with `python "
                  f"train.py stage=reranker run_name={run.name}`", file=sys.stderr)
            return 2
    load_start = os.getloadavg()
    valid, _, cands, texts, titles = _rows(args.artifacts, args.rows, args.seed)
    targets = valid["target"].astype(str).tolist()
    positive = [c.index(t) if t in c else -1 for c, t in zip(cands, targets)]
    towers_ndcg = float(np.mean([rank_metrics(-np.arange(len(c)), pos)[0]
                                 for c, pos in zip(cands, positive)]))
    engines = [("fp32 torch", args.artifacts), ("ONNX fp32", args.artifacts),
               ("ONNX int8", args.artifacts)]
    if args.fast_artifacts:
        engines.append(("rerank=fast", args.fast_artifacts))
    results: dict[str, Any] = {}
    for name, run in engines:
        entry: dict[str, Any] = {}
        for threads in (1, 2):
            import torch

            torch.set_num_threads(threads)
            reranker = _engine(run / "reranker", name, threads)
            contexts = [reranker.context_text(list(i), list(t), list(q), titles) for i, t, q in
                        zip(valid["hist_items"], valid["hist_types"], valid["hist_queries"])]
            item_texts = [[texts[c] for c in row] for row in cands]
            n = len(contexts) if threads == 2 else args.latency_rows
            timed = measure(reranker, contexts[:n], item_texts[:n])
            entry[f"threads_{threads}"] = {"ms": timed["ms"], "tokenise_ms": timed["tokenise_ms"]}
            if threads == 2:
                entry["ndcg_at_10"] = float(np.mean([rank_metrics(s, pos)[0] for s, pos in
                                                     zip(timed["scores"], positive)]))
                lengths = np.concatenate([reranker.encoder.pair_lengths(c, t) for c, t in
                                          zip(contexts[:100], item_texts[:100])])
                entry.update(engine=reranker.engine, layers=reranker.num_layers,
                             max_length=reranker.max_length,
                             pair_tokens={"p50": float(np.median(lengths)),
                                          "p95": float(np.percentile(lengths, 95)),
                                          "max": int(lengths.max()),
                                          "share_cut": float((lengths > reranker.max_length)
                                                             .mean())})
        results[name] = entry
        log.info("%s: %s", name, entry)
    fp32, int8 = results["ONNX fp32"]["ndcg_at_10"], results["ONNX int8"]["ndcg_at_10"]
    engine = {"threads_2": engine_latency(args.artifacts, valid, args.engine_sessions, 2)}
    report = {**provenance("python -m benchmarks.rerank_speed " + " ".join(argv or sys.argv[1:]),
                           args.seed, LIBRARIES),
              "load_average_start_end": [load_start, os.getloadavg()],
              "rows": len(valid), "split": "valid", "towers_ndcg_at_10": towers_ndcg,
              "rows_with_target_in_top20": int(sum(p >= 0 for p in positive)),
              "engines": results,
              "int8_vs_fp32_rel_ndcg": (int8 / fp32 - 1.0) if fp32 else None,
              "engine_cold_sessions": engine}
    save_json(args.out, report)
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Cross-encoder speed on CPU\n\n`{report['command']}` (commit "
             f"{report['commit'][:10]}, seed {report['seed']}, "
             f"{report['machine']['cpu_model']}, {report['machine']['cpu_cores']} cores; load "
             f"average at start/end {report['load_average_start_end']}: timings on a shared "
             "machine are noisy)\n",
             f"{report['rows']} validation rows ({report['rows_with_target_in_top20']} with the "
             f"target in the towers' top 20); towers' order NDCG@10 "
             f"{report['towers_ndcg_at_10']:.4f}.\n",
             "| engine | layers | max_length | 20 pairs p50 / p99 ms, 1 thread | 2 threads | "
             "tokenise p50 ms | cross-encoder alone NDCG@10 |",
             "|---|---|---|---|---|---|---|"]
    for name, e in report["engines"].items():
        one, two = e["threads_1"]["ms"], e["threads_2"]["ms"]
        lines.append(f"| {name} ({e['engine']}) | {e['layers']} | {e['max_length']} | "
                     f"{one['p50']:.1f} / {one['p99']:.1f} | {two['p50']:.1f} / {two['p99']:.1f}"
                     f" | {e['threads_2']['tokenise_ms']['p50']:.2f} | {e['ndcg_at_10']:.4f} |")
    rel = report["int8_vs_fp32_rel_ndcg"]
    lines.append(f"\nONNX int8 vs ONNX fp32 NDCG@10: {rel:+.2%} relative (goal: within 1%).\n")
    for name, e in report["engines"].items():
        pt = e["pair_tokens"]
        lines.append(f"- {name}: pair length p50 {pt['p50']:.0f}, p95 {pt['p95']:.0f}, max "
                     f"{pt['max']} tokens; {pt['share_cut']:.1%} of pairs cut at "
                     f"{e['max_length']}")
    lines.append("\nCold sessions through `engine.Recommender` (all 20 candidates re-scored):\n")
    lines.append("| threads | engine | stage | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for key, run in report["engine_cold_sessions"].items():
        for stage, stats in run["stages_ms"].items():
            lines.append(f"| {key[-1]} | {run['engine']} | {stage} | {stats['p50']} | "
                         f"{stats['p99']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
