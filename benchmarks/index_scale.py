"""How CatalogueIndex kinds scale: recall@10 against exact search, query speed, build time, memory.

Like faiss ``benchs/bench_hnsw.py``: the machine and versions at the top, one line per setting,
results also written as JSON (and a recall-vs-QPS plot when matplotlib is importable).

Data: clustered synthetic vectors, L2-normalised: Gaussian blobs around ``--clusters`` centres
whose spread lies mostly in a shared ``--intrinsic-dim``-dimensional subspace, as sentence
embeddings' does (isotropic 384-d noise, ``--intrinsic-dim 0``, is a misleading worst case for
HNSW and IVF: within a blob every point is nearly equidistant). Ground truth is the
flat (exact) index's top-k. Single-query QPS loops one query at a time through
``CatalogueIndex.search`` (the serving path, Python overhead included); batch QPS sends all
queries in one call. The goal this answers: an approximate setting with recall@10 >= 0.95 at
>= 10x flat's single-query QPS at 1M items.

    python -m benchmarks.index_scale --sizes 100000 1000000 --dim 384 --queries 1000
    python -m benchmarks.index_scale --sizes 20000 --queries 200      # a quick check
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index import CatalogueIndex

log = logging.getLogger(__name__)

# kind -> (name of the search knob, its values when --ef-search / --nprobe are not given)
SWEEPS = {"hnsw": "ef_search", "ivf_flat": "nprobe", "ivf_pq": "nprobe"}
RECALL_GOAL, SPEEDUP_GOAL = 0.95, 10.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000],
                        help="catalogue sizes to index")
    parser.add_argument("--dim", type=int, default=384, help="vector dimension (MiniLM: 384)")
    parser.add_argument("--queries", type=int, default=1000, help="queries per setting (batch)")
    parser.add_argument("--single-queries", type=int, default=200,
                        help="how many of them also run one at a time (single-query QPS)")
    parser.add_argument("--k", type=int, default=10, help="top-k; recall is recall@k")
    parser.add_argument("--clusters", type=int, default=1000, help="Gaussian clusters in the data")
    parser.add_argument("--noise", type=float, default=1.0,
                        help="per-coordinate std of points around their (unit-variance) centre")
    parser.add_argument("--intrinsic-dim", type=int, default=32,
                        help="dims the within-cluster spread lives in (0 = isotropic noise)")
    parser.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivf_flat", "ivf_pq"],
                        choices=["flat", "hnsw", "ivf_flat", "ivf_pq"])
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--pq-m", type=int, default=None, help="PQ bytes per vector (None: auto)")
    parser.add_argument("--refine", type=int, nargs="+", default=[1, 4],
                        help="ivf_pq refine_factor values (1 = PQ scores only)")
    parser.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/index_scale.json"))
    return parser.parse_args(argv)


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "faiss_version": faiss.__version__,
        "faiss_compile_options": faiss.get_compile_options(),
        "gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
        "numpy_version": np.__version__,
        "python": sys.version.split()[0],
    }


def make_clustered(n_items: int, n_queries: int, dim: int, n_clusters: int, noise: float,
                   intrinsic_dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Items [n_items, dim] and queries [n_queries, dim] around shared centres, L2-normalised.

    Spread = noise * (z @ basis) + 0.1 * noise * isotropic, z ~ N(0, I_r), basis [r, dim]
    orthonormal rows scaled so each coordinate still has variance ~noise**2.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    basis = None
    if 0 < intrinsic_dim < dim:
        q, _ = np.linalg.qr(rng.standard_normal((dim, intrinsic_dim)))  # (dim, r) orthonormal
        basis = (q.T * np.sqrt(dim / intrinsic_dim)).astype(np.float32)  # (r, dim)

    def sample(n: int) -> np.ndarray:
        out = np.empty((n, dim), np.float32)
        for lo in range(0, n, 100_000):  # chunks keep the peak small at 1M x 384
            hi = min(n, lo + 100_000)
            out[lo:hi] = centres[rng.integers(0, n_clusters, hi - lo)]
            if basis is None:
                out[lo:hi] += noise * rng.standard_normal((hi - lo, dim), dtype=np.float32)
            else:
                latent = rng.standard_normal((hi - lo, len(basis)), dtype=np.float32)
                out[lo:hi] += noise * (latent @ basis)
                out[lo:hi] += 0.1 * noise * rng.standard_normal((hi - lo, dim), dtype=np.float32)
        faiss.normalize_L2(out)
        return out

    return sample(n_items), sample(n_queries)


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def time_search(index: CatalogueIndex, query_emb: np.ndarray, k: int,
                n_single: int) -> dict[str, Any]:
    start = time.perf_counter()
    _, found_ids = index.search(query_emb, k)
    batch_s = time.perf_counter() - start
    latencies = []
    for query in query_emb[:n_single]:
        start = time.perf_counter()
        index.search(query[None, :], k)
        latencies.append(time.perf_counter() - start)
    latencies_ms = 1000 * np.array(latencies)
    return {
        "found_ids": found_ids,
        "batch_qps": len(query_emb) / batch_s,
        "single_qps": len(latencies) / (latencies_ms.sum() / 1000),
        "single_ms_p50": float(np.percentile(latencies_ms, 50)),
        "single_ms_p99": float(np.percentile(latencies_ms, 99)),
    }


def recall_at_k(found_ids: np.ndarray, true_ids: np.ndarray) -> float:
    hits = [len(set(found) & set(true)) for found, true in zip(found_ids, true_ids)]
    return float(np.sum(hits) / true_ids.size)


def settings_for(kind: str, args: argparse.Namespace) -> list[dict[str, int]]:
    if kind == "hnsw":
        return [{"ef_search": ef} for ef in args.ef_search]
    if kind == "ivf_flat":
        return [{"nprobe": n} for n in args.nprobe]
    if kind == "ivf_pq":
        return [{"nprobe": n, "refine_factor": r} for r in args.refine for n in args.nprobe]
    return [{}]


def build_kwargs(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    if kind == "hnsw":
        return {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction}
    if kind == "ivf_pq":
        return {"pq_m": args.pq_m}
    return {}


def bench_size(n_items: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    item_emb, query_emb = make_clustered(n_items, args.queries, args.dim, args.clusters,
                                         args.noise, args.intrinsic_dim, args.seed)
    item_ids = [f"item{i}" for i in range(n_items)]
    rows, true_ids = [], None
    for kind in ["flat"] + [k for k in args.kinds if k != "flat"]:  # flat first: ground truth
        rss_before = rss_bytes()
        index = CatalogueIndex.build(item_emb, item_ids, kind, use_gpu=False,
                                     **build_kwargs(kind, args))
        rss_after = rss_bytes()
        memory = {
            "index_bytes": len(faiss.serialize_index(index.faiss_index)),
            "vectors_bytes": n_items * args.dim * 4,
            "rss_delta_bytes": None if rss_before is None else rss_after - rss_before,
        }
        for setting in settings_for(kind, args):
            index.set_search_params(**setting)
            timing = time_search(index, query_emb, args.k, args.single_queries)
            found_ids = timing.pop("found_ids")
            if true_ids is None:
                true_ids = found_ids
            if kind == "flat" and "flat" not in args.kinds:
                break
            row = {"size": n_items, "kind": kind, "factory": index.factory_string,
                   "setting": setting, "recall@k": recall_at_k(found_ids, true_ids),
                   **timing, "build_s": index.build_time_s, **memory}
            rows.append(row)
            print_row(row)
        del index
    return rows


def print_row(row: dict[str, Any]) -> None:
    setting = " ".join(f"{k}={v}" for k, v in row["setting"].items()) or "-"
    print(f"{row['size']:>9,d} {row['factory']:<20} {setting:<26} "
          f"recall@k {row['recall@k']:.4f}  single {row['single_qps']:9.1f} q/s "
          f"(p50 {row['single_ms_p50']:7.3f} ms, p99 {row['single_ms_p99']:7.3f} ms)  "
          f"batch {row['batch_qps']:10.1f} q/s  build {row['build_s']:7.1f} s  "
          f"index {row['index_bytes'] / 2**20:8.1f} MiB", flush=True)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size: the fastest single-query setting with recall >= RECALL_GOAL, vs flat."""
    summary = []
    for size in sorted({r["size"] for r in rows}):
        at_size = [r for r in rows if r["size"] == size]
        flat = next((r for r in at_size if r["kind"] == "flat"), None)
        good = [r for r in at_size if r["kind"] != "flat" and r["recall@k"] >= RECALL_GOAL]
        best = max(good, key=lambda r: r["single_qps"], default=None)
        speedup = best["single_qps"] / flat["single_qps"] if best and flat else None
        summary.append({"size": size, "flat_single_qps": flat and flat["single_qps"],
                        "best": best and {k: best[k] for k in ("factory", "setting", "recall@k",
                                                               "single_qps")},
                        "speedup_vs_flat": speedup,
                        "goal_met": bool(speedup and speedup >= SPEEDUP_GOAL)})
        verdict = (f"{best['factory']} {best['setting']} recall {best['recall@k']:.3f}, "
                   f"{speedup:.1f}x flat" if best and speedup else "no setting reached the recall")
        print(f"size {size:,d}: goal recall@k >= {RECALL_GOAL} at >= {SPEEDUP_GOAL:.0f}x flat "
              f"single-query QPS -> {'MET' if summary[-1]['goal_met'] else 'NOT MET'}: {verdict}")
    return summary


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        refine = row["setting"].get("refine_factor", 1)
        label = f"{row['factory']}{f' refine {refine}' if refine > 1 else ''} n={row['size']:,d}"
        series.setdefault(label, []).append(row)
    for label, points in series.items():
        ax.plot([p["single_qps"] for p in points], [p["recall@k"] for p in points],
                marker="o", label=label)
    ax.set(xscale="log", xlabel="single-query QPS (log)", ylabel="recall@k vs exact",
           title="CatalogueIndex: recall vs speed")
    ax.axhline(RECALL_GOAL, color="grey", linestyle=":", linewidth=1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    machine = machine_info()
    print("# " + " | ".join(f"{k}: {v}" for k, v in machine.items()), flush=True)
    print(f"# dim {args.dim}, {args.queries} queries ({args.single_queries} one at a time), "
          f"k {args.k}, {args.clusters} clusters, noise {args.noise}, intrinsic dim "
          f"{args.intrinsic_dim}", flush=True)
    rows = [row for size in args.sizes for row in bench_size(size, args)]
    summary = summarise(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine, "args": {k: str(v) if isinstance(v, Path) else v
                                            for k, v in vars(args).items()},
               "results": rows, "summary": summary}
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    plotted = plot(rows, args.out.with_suffix(".png"))
    print(f"# wrote {args.out}" + (f" and {plotted}" if plotted else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
