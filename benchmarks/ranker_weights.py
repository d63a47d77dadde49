"""Choose the ranker's segment weights (``ranking.segment_weights``) on VALIDATION: the
ranker's held-out user fold, never test.

Issue 12's bar: on long-tail and on cold (new/unseen) targets the ranked result must be no
worse than the best single signal (the towers', BM25's or the zero-shot order) on the same
rows, and overall it must beat the unlearned fusion baseline. Trained with every group
weighing the same, the ranker follows the head (most of its rows) and falls below BM25 on the
long tail. Weighing the groups whose target is long-tail by ``a`` and those whose target is
cold (unseen or new) by ``b`` trades head targets for them; this sweep measures that trade
for each pair on the held-out users' rows, history masked as the benchmark's headline
(``pipeline.ranker_stage.held_out_view``), and picks:

  among the pairs at which the ranker's held-out masked R@10 on long-tail and on cold targets
  is at least the best single signal's and its overall NDCG@10 at least the fusion's, the one
  with the highest overall NDCG@10 (the bar met at the least cost to the rest); if none
  qualifies, the pair with the highest segment objective (mean of overall, long-tail and cold
  NDCG@10: the objective the fusion weights are chosen by).

The rows (``pipeline.ranker_stage.ranker_examples``, cut contexts as configured) are collected
once; each ``w`` trains LightGBM as the ranker stage does (early stopping on the held-out
users), over a few fold seeds. The fusion reference is tuned on each fold's fitted groups.

    python -m benchmarks.ranker_weights --artifacts artifacts/amazon_scientific_bert

Writes ``benchmarks/results/ranker_weights_<data>.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEGMENTS = ("overall", "head", "long_tail", "cold")
log = logging.getLogger("ranker_weights")


def mean_view(views: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over fold seeds of ``held_out_view`` outputs (masked protocol only); a
    segment no fold held out is None."""

    def mean(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return float(np.mean(present)) if present else None

    return {system: {segment: {metric: mean([v["masked"][system][segment][metric]
                                             for v in views])
                               for metric in ("ndcg_at_10", "recall_at_10")}
                     for segment in SEGMENTS}
            for system in views[0]["masked"]}


def verdict(view: dict[str, Any]) -> dict[str, Any]:
    """Issue 12's bar on one (mean) view: long tail and cold R@10 vs the best single signal,
    overall NDCG@10 vs the fusion; and the segment objective."""
    singles = ("towers", "bm25", "zero_shot")
    ranker = view["ranker"]
    out: dict[str, Any] = {}
    for segment in ("long_tail", "cold"):
        if ranker[segment]["recall_at_10"] is None:  # no such target held out: nothing to fail
            out[segment] = {"ranker": None, "met": True}
            continue
        best = max(singles, key=lambda s: view[s][segment]["recall_at_10"])
        out[segment] = {"ranker": ranker[segment]["recall_at_10"], "best_single": best,
                        "best_single_value": view[best][segment]["recall_at_10"],
                        "met": ranker[segment]["recall_at_10"]
                        >= view[best][segment]["recall_at_10"]}
    out["overall_vs_fusion"] = {"ranker": ranker["overall"]["ndcg_at_10"],
                                "fusion": view["fusion"]["overall"]["ndcg_at_10"],
                                "met": ranker["overall"]["ndcg_at_10"]
                                >= view["fusion"]["overall"]["ndcg_at_10"]}
    out["segment_objective"] = float(np.mean([
        ranker[s]["ndcg_at_10"] for s in ("overall", "long_tail", "cold")
        if ranker[s]["ndcg_at_10"] is not None]))
    out["met"] = all(out[k]["met"] for k in ("long_tail", "cold", "overall_vs_fusion"))
    return out


def choose(table: dict[str, Any]) -> str:
    """The rule of the module doc over ``table`` (setting -> {"verdict": ...}); ties go to
    the first setting in ``table``'s order."""
    met = [k for k in table if table[k]["verdict"]["met"]]
    if met:
        return max(met, key=lambda k: table[k]["verdict"]["overall_vs_fusion"]["ranker"])
    return max(table, key=lambda k: table[k]["verdict"]["segment_objective"])


def settings(long_tail: list[float], cold: list[float]) -> dict[str, dict[str, float]]:
    """Each (long-tail, cold) weight pair as ``ranking.segment_weights`` (cold = unseen and
    new), keyed ``long_tail=a,cold=b``."""
    return {f"long_tail={a:g},cold={b:g}": {"long_tail": float(a), "unseen": float(b),
                                             "new": float(b)}
            for a in long_tail for b in cold}


def validate(run_dir: Path, split: Any, seed: int, grid: dict[str, dict[str, float]],
             fold_seeds: list[int]) -> dict[str, Any]:
    """Collect the ranker's rows once, then train and score each weight (module doc)."""
    from benchmarks.ranker_cuts import collect_rows
    from pipeline.ranker_stage import group_weights, held_out_view, subset_rows, tune_fusion
    from ranking.scorers import FUSION_SIGNALS, Fusion, group_split, train_lambdarank

    started = time.perf_counter()
    cfg, examples, rows = collect_rows(run_dir, split, seed, None)
    collect_s = time.perf_counter() - started
    starts = np.concatenate([[0], np.cumsum(rows["sizes"])])

    def fusion_scores(weights_: dict[str, float], held: np.ndarray) -> np.ndarray:
        fusion = Fusion(weights_)
        return np.concatenate([fusion.score(rows["features"][starts[g]:starts[g + 1]])
                               for g in np.flatnonzero(held)])

    folds: dict[str, Any] = {}
    for fold_seed in fold_seeds:
        held = group_split(rows["users"], 0.2, fold_seed)  # train_lambdarank's default fold
        tuned = tune_fusion(subset_rows(rows, ~held))["weights"]
        folds[str(fold_seed)] = {"held": held, "fusion": tuned,
                                 "fusion_scores": fusion_scores(tuned, held)}
    table: dict[str, Any] = {}
    for w, named in grid.items():
        views, runs = [], {}
        for fold_seed in fold_seeds:
            fold = folds[str(fold_seed)]
            _, info = train_lambdarank(rows["features"], rows["labels"], rows["sizes"],
                                       rows["users"], dict(cfg["lightgbm"]), fold_seed,
                                       group_weights=group_weights(rows["segments"], named),
                                       keep_held_scores=True, refit=False)
            held = info.pop("held_out_groups_mask")
            view = held_out_view(rows, held, info.pop("held_out_scores"))
            fused = held_out_view(rows, held, fold["fusion_scores"])
            for protocol in ("masked", "unmasked"):
                view[protocol]["fusion"] = fused[protocol]["ranker"]
            views.append(view)
            runs[str(fold_seed)] = {"best_round": info["best_round"],
                                    "held_out_groups": view["groups"]}
            log.info("w=%s seed %s: ranker %s", w, fold_seed, view["masked"]["ranker"])
        mean = mean_view(views)
        table[w] = {"weights": named, "mean_over_seeds": mean,
                                "verdict": verdict(mean), "by_seed": runs}
    chosen = choose(table)
    return {
        "fold_seeds": list(fold_seeds),
        "fusion_weights_by_fold": {s: folds[s]["fusion"] for s in folds},
        "fusion_signals": list(FUSION_SIGNALS),
        "ranker_examples": {"by_context": examples["context"].value_counts().to_dict(),
                            "groups_found": int(len(rows["sizes"])),
                            "by_target_segment": {str(k): int(v) for k, v in zip(
                                *np.unique(rows["segments"], return_counts=True))}},
        "metric": "R@10 / NDCG@10 of the positive among the merged candidates, history masked "
                  "(the session's other items sunk), held-out users' rows whose target a "
                  "source returned; mean over fold seeds",
        "weights": table, "chosen": chosen, "chosen_weights": table[chosen]["weights"],
        "seconds": {"collect": round(collect_s, 1),
                    "validate": round(time.perf_counter() - started, 1)}}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| weights | system | " + " | ".join(f"{s} R@10 / N@10" for s in SEGMENTS) + " |",
             "|---" * (len(SEGMENTS) + 2) + "|"]
    for w, entry in result["weights"].items():
        for system, values in entry["mean_over_seeds"].items():
            if system != "ranker" and w != next(iter(result["weights"])):
                continue  # references are the same rows for every weight
            lines.append(f"| {w} | {system} | " + " | ".join(
                "–" if values[s]["recall_at_10"] is None else
                f"{values[s]['recall_at_10']:.4f} / {values[s]['ndcg_at_10']:.4f}"
                for s in SEGMENTS) + " |")
    lines.append(f"\nchosen: {result['chosen']} (bar met: "
                 f"{result['weights'][result['chosen']]['verdict']['met']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", type=Path, required=True, help="a run with trained towers")
    p.add_argument("--long-tail", type=float, nargs="+", default=[1.0, 1.5, 2.0, 2.5, 3.0],
                   help="weights of groups whose target is long-tail (head stays 1)")
    p.add_argument("--cold", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0],
                   help="weights of groups whose target is unseen or new")
    p.add_argument("--fold-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if any(w <= 0 for w in [*args.long_tail, *args.cold]):
        p.error(f"weights must be > 0, got --long-tail {args.long_tail} --cold {args.cold}")
    from benchmarks.ranker_cuts import run_validation
    from engine.artifacts import ArtifactPaths

    paths = ArtifactPaths(args.artifacts)
    return run_validation(
        paths, "ranker_weights", argv, lambda seed, split: validate(
            paths.root, split, seed, settings(args.long_tail, args.cold), args.fold_seeds),
        lambda seed: {"rows": seed, "fold_seeds": list(args.fold_seeds)},
        args.out, "ranker_weights", markdown)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sys.exit(main())
