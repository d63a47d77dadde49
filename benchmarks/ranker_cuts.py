"""Choose the ranker's cut contexts (``ranking.cut_contexts``) on VALIDATION: the ranker's
held-out user fold, never test.

The ranker's rows (``pipeline.ranker_stage.ranker_examples``) are collected once with every
cut copy (share 1); each candidate share then trains LightGBM exactly as the ranker stage does
with that share (its fit rows and its early-stopping fold), and the early-stopped model is
scored on the SAME held-out rows for every share: the held-out users' full-history rows and
all their cut copies, NDCG@10 per kind of row (the positive's rank among the merged
candidates; rows whose target no source returned are left out, as in training). The towers'
and the zero-shot order on those rows are the references. Repeated over a few fold seeds.

    python -m benchmarks.ranker_cuts --artifacts artifacts/amazon_scientific_bert

Writes ``benchmarks/results/ranker_cut_contexts_<data>.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("lightgbm", "numpy", "pandas", "torch", "faiss-cpu")
log = logging.getLogger("ranker_cuts")


def choose(table: dict[str, Any], tolerance: float) -> str:
    """The share with the highest mean held-out NDCG@10 over the kinds of row (full, cut_1,
    ...), among those whose full-history figure is within ``tolerance`` of share 0's; ties go
    to the smaller share."""
    off = table["0.0"]["mean_over_seeds"]["full"]
    best, best_value = "0.0", -1.0
    for share, entry in sorted(table.items(), key=lambda kv: float(kv[0])):
        by_kind = entry["mean_over_seeds"]
        value = float(np.mean(list(by_kind.values())))
        if by_kind["full"] >= off - tolerance and value > best_value + 1e-9:
            best, best_value = share, value
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", type=Path, required=True, help="a run with trained towers")
    p.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--fold-seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="held-out user fold + LightGBM seeds (the cut copies use the run's)")
    p.add_argument("--tolerance", type=float, default=0.005,
                   help="largest drop of full-history NDCG@10 vs share 0 a choice may cost")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from engine.artifacts import ArtifactPaths

    paths = ArtifactPaths(args.artifacts)
    return run_validation(
        paths, "ranker_cuts", argv, lambda seed, split: validate(
            paths.root, split, seed, args.shares, args.ks, args.fold_seeds, args.tolerance),
        lambda seed: {"cut_copies": seed, "fold_seeds": list(args.fold_seeds)},
        args.out, "ranker_cut_contexts", markdown)


def run_validation(paths: Any, module: str, argv: list[str] | None,
                   validate_: Callable[[int, Any], dict[str, Any]],
                   seeds: Callable[[int], dict[str, Any]], out: Path | None, stem: str,
                   markdown_: Callable[[dict[str, Any]], str]) -> int:
    """The shared body of the ranker's validation tools: the run's split, ``validate_(seed,
    split)``, a results file with provenance (``benchmarks/results/<stem>_<data>.json``
    unless ``out``), its markdown printed."""
    from benchmarks.machine import provenance
    from engine.artifacts import save_json

    started = time.perf_counter()
    try:
        paths.check(("config", "towers"))
        seed, data_cfg, split = run_split(paths)
    except (ValueError, OSError) as err:  # engine and data errors are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    found = validate_(seed, split)
    result = {
        **provenance(f"python -m benchmarks.{module} " + " ".join(argv or sys.argv[1:]),
                     seeds(seed), LIBRARIES),
        "split": "validation (the ranker's held-out user fold; never test)",
        "artifacts": str(paths.root), "data": data_cfg["name"],
        "split_fingerprint": split.fingerprint, **found,
        "seconds": {**found["seconds"], "total": round(time.perf_counter() - started, 1)}}
    save_json(out or ROOT / f"benchmarks/results/{stem}_{data_cfg['name']}.json", result)
    print(markdown_(result))
    return 0


def run_split(paths: Any) -> tuple[int, dict[str, Any], Any]:
    """(seed, data config, split) of the run at ``paths`` (engine.artifacts.ArtifactPaths),
    as its towers were trained."""
    from omegaconf import OmegaConf

    from recdata import load_dataset, split_dataset

    run_cfg = OmegaConf.load(paths.config)
    data_cfg = OmegaConf.to_container(run_cfg.data, resolve=True)
    split = split_dataset(load_dataset(data_cfg["source"], **data_cfg["options"]),
                          **data_cfg["split"])
    return int(run_cfg.seed), data_cfg, split


def collect_rows(run_dir: Path, split: Any, seed: int, cut: dict[str, Any] | None
                 ) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """The ranking conf (``conf/ranking/default.yaml``), the ranker stage's examples with
    ``cut`` contexts (None: the conf's) and their candidate rows, ranked through the run's
    engine as the stage ranks them."""
    from omegaconf import OmegaConf

    from engine.artifacts import ArtifactPaths
    from pipeline.ranker_stage import candidate_rows, ranker_examples, ranker_recommender

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "ranking" / "default.yaml"))
    recommender, _, _ = ranker_recommender(ArtifactPaths(run_dir), split, cfg)
    examples = ranker_examples(split, cfg.get("max_rows"), seed,
                               cut=cfg.get("cut_contexts") if cut is None else cut)
    return cfg, examples, candidate_rows(recommender, examples)


def validate(run_dir: Path, split: Any, seed: int, shares: list[float], ks: list[int],
             fold_seeds: list[int], tolerance: float) -> dict[str, Any]:
    """The table (see the module doc) and the chosen share, for a run with trained towers."""
    from pipeline.ranker_stage import FULL, cut_selection
    from ranking.scorers import COLUMN, group_split, ndcg_of_positive, train_lambdarank

    started = time.perf_counter()
    cfg, examples, rows = collect_rows(run_dir, split, seed, {"ks": ks, "share": 1.0})
    collect_s = time.perf_counter() - started
    kinds = examples["context"].to_numpy()[rows["examples"]]
    source = examples["source_row"].to_numpy()[rows["examples"]]
    n_full = int((examples["context"] == FULL).sum())

    def reference(column: str, held: np.ndarray) -> dict[str, float]:
        row_held = np.repeat(held, rows["sizes"])
        scores = np.nan_to_num(rows["features"][row_held, COLUMN[column]].astype(np.float64),
                               nan=-np.inf)
        ndcg = ndcg_of_positive(scores, rows["labels"][row_held], rows["sizes"][held])
        return {str(k): float(ndcg[kinds[held] == k].mean()) for k in sorted(set(kinds[held]))}

    references: dict[str, Any] = {}
    for fold_seed in fold_seeds:
        held = group_split(rows["users"], 0.2, fold_seed)  # train_lambdarank's default fold
        references[str(fold_seed)] = {name: reference(col, held) for name, col in
                                      (("towers", "towers_score"),
                                       ("zero_shot", "zero_shot_score"))}
    table: dict[str, Any] = {}
    for share in shares:
        chosen = cut_selection(n_full, share, seed)
        score_only = (kinds != FULL) & ~chosen[source]  # what the stage at this share omits
        runs = {}
        for fold_seed in fold_seeds:
            _, info = train_lambdarank(rows["features"], rows["labels"], rows["sizes"],
                                       rows["users"], dict(cfg["lightgbm"]), fold_seed,
                                       group_kinds=kinds, score_only=score_only)
            runs[str(fold_seed)] = {k: info[k] for k in ("best_round", "held_out_ndcg_at_10",
                                                         "held_out_by_kind", "fit_groups",
                                                         "held_out_groups", "rows")}
            log.info("share %s seed %s: %s", share, fold_seed, info["held_out_by_kind"])
        kinds_seen = sorted(runs[str(fold_seeds[0])]["held_out_by_kind"])
        table[str(float(share))] = {
            "training_groups_by_kind": {str(k): int(((kinds == k) & ~score_only).sum())
                                        for k in sorted(set(kinds))},
            "mean_over_seeds": {k: float(np.mean([r["held_out_by_kind"][k]["ndcg_at_10"]
                                                  for r in runs.values()])) for k in kinds_seen},
            "by_seed": runs}
    ref_mean = {name: {k: float(np.mean([references[s][name][k] for s in references]))
                       for k in references[str(fold_seeds[0])][name]}
                for name in ("towers", "zero_shot")}
    return {
        "ks": list(ks), "ranker_examples": {
            "by_context": examples["context"].value_counts().to_dict(),
            "groups_found_by_context": {str(k): int((kinds == k).sum())
                                        for k in sorted(set(kinds))}},
        "metric": "NDCG@10 of the positive among the merged candidates (repeats allowed, as "
                  "the ranker trains), held-out users' rows whose target a source returned; "
                  "mean over fold seeds",
        "references_mean_over_seeds": ref_mean, "shares": table,
        "rule": f"highest mean over kinds of row, full-history NDCG@10 within {tolerance} "
                "of share 0; ties to the smaller share",
        "chosen_share": float(choose(table, tolerance)),
        "seconds": {"collect": round(collect_s, 1),
                    "validate": round(time.perf_counter() - started, 1)}}


def markdown(result: dict[str, Any]) -> str:
    kinds = list(next(iter(result["shares"].values()))["mean_over_seeds"])
    lines = ["| setting | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for name, ref in result["references_mean_over_seeds"].items():
        lines.append(f"| {name} order | " + " | ".join(f"{ref[k]:.4f}" for k in kinds) + " |")
    for share, entry in result["shares"].items():
        lines.append(f"| ranker, share {share} | "
                     + " | ".join(f"{entry['mean_over_seeds'][k]:.4f}" for k in kinds) + " |")
    lines.append(f"\nchosen share: {result['chosen_share']} ({result['rule']})")
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sys.exit(main())
