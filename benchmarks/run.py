"""One benchmark run on one dataset: every system on the same split, speed, and the report.

    python -m benchmarks.run --data amazon_scientific            # make bench
    python -m benchmarks.run --data synthetic --train            # train the runs first
    python -m benchmarks.run --quick --out /tmp/bench            # tiny, ~1 min, for tests

The split is the one ``train.py`` uses: the data config ``conf/data/<name>.yaml`` composed with
Hydra (same overrides, same seed, same holdouts); towers trained on another split are refused.
Every system ranks through ``engine.Recommender`` (``benchmarks.systems``). Quality is full
ranking over the whole catalogue, history masked (unmasked beside it), overall and per segment.
Writes ``<out>/<name>.json``, ``<name>.md`` and PNG plots (``benchmarks/report.py``); a run in
which a requested system did not complete writes ``<name>.partial.*`` instead.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.latency import StepMemory, serving_speed
from benchmarks.machine import machine_info as base_machine_info
from benchmarks.systems import BenchmarkError
from pipeline.config import data_selector

ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("benchmarks.run")
SYSTEMS = ("popularity", "bm25", "zero_shot", "two_tower_id", "two_tower_bert",
           "two_tower_bert_graph", "fusion", "ranker", "two_tower_bert+rerank", "ranker+rerank")
# the default --systems: the graph towers (issue 16) are opted into with --systems
DEFAULT_SYSTEMS = tuple(s for s in SYSTEMS if s != "two_tower_bert_graph")
# tower runs: system -> (its run dir's args attribute, tower=, extra training overrides); every
# system not named here ranks from the BERT run (--artifacts-bert)
TOWER_RUNS = {"two_tower_id": ("artifacts_id", "id", []),
              "two_tower_bert": ("artifacts_bert", "bert", []),
              "two_tower_bert_graph": ("artifacts_graph", "bert", ["tower.graph=true"])}
OWN_RUN = {"two_tower_id", "two_tower_bert_graph"}  # systems that do not need the BERT run
RANKED = {"fusion": "fusion", "ranker": "ranker", "two_tower_bert+rerank": "towers",
          "ranker+rerank": "ranker"}  # system -> the engine's scorer
SOURCE_OF = {"popularity": "popularity", "bm25": "bm25", "zero_shot": "zero_shot",
             "two_tower_bert": "towers", "two_tower_id": "towers",
             "two_tower_bert_graph": "towers"}
ABLATE = ("towers", "bm25", "zero_shot", "popularity+fresh")
DATASETS = ("amazon_scientific", "movielens", "synthetic", "files")
QUICK_DATA = ["data.options.n_items=150", "data.options.n_users=80"]
QUICK_TRAIN = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "logger=none",
               "train.batch_size=32", "train.eval_batch_size=64"]
QUICK_RERANK = ["rerank.mining.max_train_examples=16", "rerank.max_valid_groups=8",
                "rerank.training.max_steps=2", "rerank.mining.candidates_n=20",
                "rerank.model.max_length=32", "rerank.training.groups_per_step=4"]
QUICK_RANKER = ["ranking.lightgbm.num_boost_round=20", "ranking.lightgbm.min_data_in_leaf=5"]
QUICK_INDEX_SCALE = ["--sizes", "2000", "--queries", "50", "--single-queries", "20", "--kinds",
                     "flat", "hnsw", "--ef-search", "16", "64", "--clusters", "20"]
LIBRARIES = ("torch", "faiss-cpu", "faiss-gpu-cu12", "sentence-transformers", "transformers",
             "numpy", "pandas", "bm25s", "lightgbm", "pytorch-lightning", "hydra-core")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=DATASETS, default=None,
                   help="a data config of conf/data/; `files` is your own catalogue + events "
                        "(--set data.options.catalogue=... --set data.options.events=...); "
                        "default amazon_scientific (synthetic with --quick)")
    p.add_argument("--name", help="report name: <out>/<name>.{json,md,png} (default: --data)")
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                   help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all but "
                        "two_tower_bert_graph)")
    p.add_argument("--artifacts-bert", type=Path,
                   help="run dir of the BERT towers (+ ranker/, reranker/)")
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
                   help="tiny towers, ranker and reranker, few sessions; tiny synthetic data "
                        "unless --data says otherwise (a few minutes)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/encoder"))
    p.add_argument("--ranker-ablations", action="store_true",
                   help="also train and score the ranker without each source (one at a time)")
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
        args.data = args.data or "synthetic"
        if args.data == "synthetic":
            args.overrides = QUICK_DATA + args.overrides
        args.train = args.train or not (args.artifacts_bert or args.artifacts_id
                                        or args.artifacts_graph)
        args.rerank_sample = min(args.rerank_sample, 20)
        args.latency_sessions = min(args.latency_sessions, 20)
        args.latency_rerank_sessions = min(args.latency_rerank_sessions, 5)
        if args.artifacts_root == Path("artifacts"):  # tiny runs stay inside --out
            args.artifacts_root = args.out / "artifacts"
        if args.cache_dir == Path(".cache/encoder"):
            args.cache_dir = args.out / "cache"
    args.data = args.data or "amazon_scientific"
    args.name = args.name or args.data
    args.artifacts_bert = args.artifacts_bert or args.artifacts_root / f"{args.data}_bert"
    args.artifacts_id = args.artifacts_id or args.artifacts_root / f"{args.data}_id"
    args.artifacts_graph = (args.artifacts_graph
                            or args.artifacts_root / f"{args.data}_bert_graph")
    return args


def required_artifacts(args: argparse.Namespace) -> dict[str, Path]:
    """The files the requested systems need: towers (each run), the ranker, the reranker."""
    need: dict[str, Path] = {}
    wanted = set(args.systems)
    if "two_tower_id" in wanted:
        need["two_tower_id"] = args.artifacts_id / "towers" / "towers.json"
    if wanted - OWN_RUN:
        need["two_tower_bert"] = args.artifacts_bert / "towers" / "towers.json"
    if "two_tower_bert_graph" in wanted:
        need["two_tower_bert_graph"] = args.artifacts_graph / "towers" / "towers.json"
    if wanted & {"fusion", "ranker", "ranker+rerank"}:
        need["ranker"] = args.artifacts_bert / "ranker" / "ranker.json"
    if wanted & {"two_tower_bert+rerank", "ranker+rerank"}:
        need["reranker"] = args.artifacts_bert / "reranker"
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
            f"{len(missing)} requested part(s) lack trained artifacts ({', '.join(missing)}; "
            f"first: {path} not found); train them with --train (make bench "
            f"BENCH_ARGS=--train: towers, ranker and reranker, see the README for how long), "
            "pass --artifacts-bert/--artifacts-id/--artifacts-graph, or drop the systems with "
            "--systems")


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
        cfg = compose("train", overrides=[data_selector(args.data), f"seed={args.seed}",
                                          *args.overrides])
    return OmegaConf.to_container(cfg.data, resolve=True)


def train_run(system: str, args: argparse.Namespace) -> dict[str, Any]:
    """``python train.py`` (a subprocess) for one tower run (``TOWER_RUNS``) into its run dir;
    the BERT run also trains the ranker (and the reranker when a +rerank system is wanted),
    the graph run (``tower.graph=true``) only its towers."""
    attr, tower, extra = TOWER_RUNS[system]
    bert = tower == "bert"
    run_dir = getattr(args, attr)
    rerank = bool({"two_tower_bert+rerank", "ranker+rerank"} & set(args.systems))
    ranked = bool({"fusion", "ranker", "ranker+rerank"} & set(args.systems))
    stage = "towers"
    if system == "two_tower_bert":
        stage = "+".join(["towers", *(["reranker"] if rerank else []),
                          *(["ranker"] if ranked else [])])
    argv = [data_selector(args.data), f"seed={args.seed}", f"run_name={run_dir.name}",
            f"artifacts_dir={run_dir.parent}", f"tower={'tiny' if bert and args.quick else tower}",
            f"stage={stage}", f"cache_dir={args.cache_dir}", *extra, *args.overrides]
    if args.quick and bert:
        argv += QUICK_TRAIN + QUICK_RERANK + QUICK_RANKER + [
            f"rerank.model_path={run_dir.parent / '_tiny_bert'}"]
    elif args.quick:
        argv += QUICK_TRAIN + ["embedding_dim=32"]
    argv += args.train_overrides
    command = "python train.py " + " ".join(shlex.quote(a) for a in argv)
    log.info("training: %s", command)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT)
    if done.returncode != 0:
        raise BenchmarkError(f"`{command}` exited with {done.returncode}; run it alone to see "
                             "the error")
    return {"wall_seconds": round(time.perf_counter() - started, 1), "command": command}


def training_info(run_dir: Path, trained: dict[str, Any] | None) -> dict[str, Any]:
    import json

    info: dict[str, Any] = {"artifacts": str(run_dir), **(trained or {})}
    for name, key in (("metrics.json", "towers"), ("ranker_metrics.json", "ranker"),
                      ("reranker_metrics.json", "reranker")):
        path = run_dir / name
        if path.exists():
            metrics = json.loads(path.read_text())
            info[key] = {k: metrics.get(k) for k in ("train_seconds", "epochs", "best_round",
                                                     "collect_seconds", "held_out_ndcg_at_10")
                         if metrics.get(k) is not None}
    return info


def _recommender(run_dir: Path, rerank: bool, ranking: bool = True) -> Any:
    from engine.artifacts import ArtifactPaths
    from engine.recommender import Recommender
    from pipeline.index_stage import ensure_index

    ensure_index(ArtifactPaths(run_dir), ranking=ranking)
    return Recommender.from_artifacts(run_dir, rerank=rerank, scorer="towers")


def _evaluate_ranked(rec: Any, name: str, variants: dict[str, Any], ev: tuple, rerank: bool
                     ) -> tuple[dict[str, Any], Any]:
    """An engine-ranked system: masked figures from a pass that excludes history (as served),
    unmasked ones from a pass on the test rows that lets history back (repeats)."""
    from benchmarks.systems import EngineSystem, evaluate

    rec.set_scorer(RANKED[name])
    item_ids = list(ev[0])
    served = EngineSystem(rec, item_ids, name, repeats=False, rerank=rerank)
    result = evaluate(served, variants, *ev)
    repeats = EngineSystem(rec, item_ids, name, repeats=True, rerank=rerank)
    unmasked = evaluate(repeats, {"test": variants["test"]}, *ev)
    result["unmasked"] = unmasked["unmasked"]
    result["eval_seconds"] = round(result["eval_seconds"] + unmasked["eval_seconds"], 2)
    return result, served


def run_all(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """Train (optional), split, evaluate every system, time the serving path; the payload."""
    from benchmarks.report import rerank_lifts
    from benchmarks.systems import SEGMENTS, SourceSystem, evaluate, evaluation_variants
    from recdata import load_dataset, split_dataset

    check_artifacts(args)
    memory, trained = StepMemory(), {}
    wanted = set(args.systems)
    runs = {"two_tower_id": "two_tower_id" in wanted, "two_tower_bert": bool(wanted - OWN_RUN),
            "two_tower_bert_graph": "two_tower_bert_graph" in wanted}
    for system, wants in runs.items():
        if args.train and wants:
            with memory.measure(f"train {system} run"):
                trained[system] = train_run(system, args)
    with memory.measure("load + split"):
        data_cfg = compose_data_config(args)
        split = split_dataset(load_dataset(data_cfg["source"], **data_cfg["options"]),
                              **data_cfg["split"])
    for name, path in required_artifacts(args).items():
        if name in TOWER_RUNS and path.exists():
            check_split(path.parent.parent, split.fingerprint)
    item_ids = split.catalogue["item_id"].astype(str).tolist()
    item_index = {i: n for n, i in enumerate(item_ids)}
    long_tail_mask = np.isin(item_ids, list(split.long_tail))
    variants = evaluation_variants(split.test)
    ev = (item_index, long_tail_mask, args.batch_size)
    systems: dict[str, Any] = {}
    comparison: dict[str, Any] = {}
    recs: dict[str, Any] = {}
    sample = split.test.sample(n=min(args.rerank_sample, len(split.test)),
                               random_state=args.seed)
    for name in args.systems:
        try:
            with memory.measure(f"eval {name}"):
                run_dir = getattr(args, TOWER_RUNS[name][0] if name in OWN_RUN
                                  else "artifacts_bert")
                rerank = name.endswith("+rerank")
                key = f"{run_dir}:{rerank}"
                if key not in recs:
                    recs[key] = _recommender(run_dir, rerank, ranking=name not in OWN_RUN)
                rec = recs[key]
                if name in SOURCE_OF:
                    systems[name] = {"status": "ok", **evaluate(
                        SourceSystem(rec, SOURCE_OF[name], item_ids, name), variants, *ev)}
                elif not rerank:
                    result, served = _evaluate_ranked(rec, name, variants, ev, False)
                    systems[name] = {"status": "ok", **result,
                                     "candidate_recall": served.stats()["candidate_recall"]}
                else:  # the cross-encoder on a seeded sample, beside its base on the same rows
                    base_name = "two_tower_bert" if name == "two_tower_bert+rerank" else "ranker"
                    rows = evaluation_variants(sample)
                    base, _ = _evaluate_ranked(rec, name, rows, ev, False)
                    result, served = _evaluate_ranked(rec, name, rows, ev, True)
                    systems[name] = {"status": "ok", "sample": len(sample), **result}
                    comparison[name] = {
                        "sample_size": len(sample), "seed": args.seed, "base": base_name,
                        base_name: base, name: result,
                        "ndcg_at_10_lift": rerank_lifts(base, result),
                        "rerank_stats": served.stats()}
        except BenchmarkError as err:
            systems[name] = {"status": "skipped", "reason": str(err)}
        except Exception as err:  # one broken system must not lose the others' figures
            log.exception("system %s failed", name)
            systems[name] = {"status": "error", "reason": f"{type(err).__name__}: {err}"}
        log.info("%s: %s", name, {k: v for k, v in systems[name].items()
                                  if k in ("status", "reason", "eval_seconds")})
    bert_rec = recs.get(f"{args.artifacts_bert}:False") or recs.get(f"{args.artifacts_bert}:True")
    payload: dict[str, Any] = {
        "dataset": args.data, "systems": systems, "segments": list(SEGMENTS),
        "rerank_comparison": comparison, "data_config": data_cfg,
        "split": {"protocol": split.protocol, "items": len(item_ids),
                  "test_rows": len(split.test), "new_items_held_out": len(split.new_items),
                  "ranker_items_held_out": len(split.ranker_items),
                  "long_tail_items": len(split.long_tail), "fingerprint": split.fingerprint,
                  "variant_rows": {k: len(v) for k, v in variants.items()}},
        "training": {name: training_info(getattr(args, attr), trained.get(name))
                     for name, (attr, _, _) in TOWER_RUNS.items()
                     if (runs[name] or name not in OWN_RUN - {"two_tower_id"})
                     and (getattr(args, attr) / "towers").exists()},
    }
    if bert_rec is not None and bert_rec.ranking_parts is not None:
        with memory.measure("candidate recall"):
            from benchmarks.candidates import candidate_recall

            payload["candidate_recall"] = candidate_recall(bert_rec, split.test,
                                                           args.batch_size)
        payload["ranker"] = ranker_report(args.artifacts_bert)
        if args.ranker_ablations:
            with memory.measure("ranker ablations"):
                payload["ranker_ablations"] = ranker_ablations(args, split, variants, ev)
    payload.update(speed(args, split, memory))
    payload["memory"] = memory.to_dict()
    return payload, any(s["status"] == "error" for s in systems.values())


def ranker_report(run_dir: Path) -> dict[str, Any] | None:
    """What the run's ranker.json says of its training: rows, rounds, importances, fusion."""
    import json

    path = run_dir / "ranker" / "ranker.json"
    if not path.exists():
        return None
    meta = json.loads(path.read_text())
    return {k: meta.get(k) for k in ("best_round", "held_out_ndcg_at_10", "examples",
                                     "candidate_recall", "importance_gain", "fusion",
                                     "candidates", "params", "cut_contexts",
                                     "segment_weights", "held_out_by_kind", "held_out_view",
                                     "collect_seconds", "train_seconds")}


def ranker_ablations(args: argparse.Namespace, split: Any, variants: dict[str, Any],
                     ev: tuple) -> dict[str, Any]:
    """The ranker retrained without each source (its candidates and its features), scored on
    the test rows (masked) beside the full ranker."""
    from omegaconf import OmegaConf

    from benchmarks.systems import EngineSystem, evaluate
    from engine.recommender import Recommender
    from pipeline.ranker_stage import train_ranker_for_run

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "ranking" / "default.yaml"))
    out: dict[str, Any] = {}
    for dropped in ABLATE:
        sources = tuple(dropped.split("+"))
        target = args.artifacts_bert / f"ranker_without_{dropped.replace('+', '_')}"
        started = time.perf_counter()
        train_ranker_for_run(args.artifacts_bert, split, cfg, args.seed, drop_sources=sources,
                             out_dir=target)
        rec = Recommender.from_artifacts(args.artifacts_bert, rerank=False, scorer="ranker",
                                         ranker_dir=target)
        result = evaluate(EngineSystem(rec, list(ev[0]), f"ranker-{dropped}"),
                          {"test": variants["test"]}, *ev)
        out[dropped] = {"masked": result["masked"], "seconds":
                        round(time.perf_counter() - started, 1), "dir": str(target)}
    return out


def speed(args: argparse.Namespace, split: Any, memory: StepMemory) -> dict[str, Any]:
    """Serving latency and encoding throughput of the BERT run; the index-scale benchmark."""
    import json

    out: dict[str, Any] = {"latency": {"error": f"no BERT towers at {args.artifacts_bert}"},
                           "encode_throughput": None, "index_scale": None}
    if (args.artifacts_bert / "towers").exists():
        try:
            from towers import load_towers

            out.update(serving_speed(
                args.artifacts_bert, split.test, load_towers(args.artifacts_bert / "towers"),
                [str(t) for t in __import__("recdata").catalogue_texts(split.catalogue)],
                memory, args.latency_sessions, args.latency_rerank_sessions, args.seed,
                args.encode_items))
        except Exception as err:  # the quality figures are still worth a report
            log.exception("speed measurements failed")
            out["latency"] = {"error": f"{type(err).__name__}: {err}"}
    if args.index_scale:
        from benchmarks import index_scale

        scale_args = (shlex.split(args.index_scale_args) if args.index_scale_args
                      else QUICK_INDEX_SCALE if args.quick else [])
        path = args.out / f"{args.name}_index_scale.json"
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
        command="python -m benchmarks.run " + " ".join(shlex.quote(a) for a in argv),
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
