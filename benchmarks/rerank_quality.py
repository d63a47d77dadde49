"""The reranker against the towers' order on the full TEST split, per segment, with CIs.

Reporting only: the policy (``reranker/policy.json``) was decided on validation by the reranker
stage; nothing here chooses anything. Rows: every test row (warm contexts) plus every test row
with its context cut to its last 1-3 item events (cold, seeded per row, as in the stage). For
each user group and each target segment (head, long_tail, new): NDCG@10 of the towers' order,
of the cross-encoder alone (all top-20 re-scored) and of the served policy, with paired
bootstrap 95% CIs of the lift.

    python -m benchmarks.rerank_quality --artifacts artifacts/amazon_scientific_bert

Writes ``benchmarks/results/rerank_quality_<run>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("torch", "onnxruntime", "sentence-transformers")
log = logging.getLogger("rerank_quality")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", type=Path, required=True)
    p.add_argument("--rows", type=int, default=None, help="cap on test rows (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from benchmarks.machine import provenance
    from benchmarks.rerank_speed import _split
    from engine.artifacts import ArtifactPaths, load_catalogue, save_json
    from engine.loading import load_reranker, run_policy
    from pipeline.reranker_stage import cold_variant, score_rows
    from rerank.evaluate import segment_report
    from towers import load_towers

    paths = ArtifactPaths(args.artifacts)
    policy_file = paths.reranker / "policy.json"
    if not policy_file.is_file():
        print(f"error: {policy_file} is missing; train the reranker with "
              f"`{paths.command_for('reranker')}`", file=sys.stderr)
        return 2
    started = time.perf_counter()
    test = _split(paths.root).test
    if args.rows:
        test = test.sample(n=min(args.rows, len(test)), random_state=args.seed)
    model, catalogue = load_towers(paths.towers), load_catalogue(paths.root)
    reranker, policy = load_reranker(paths, "cpu"), run_policy(paths)
    rows = score_rows(model, reranker, policy, test, catalogue, policy.top_n)
    cold = score_rows(model, reranker, policy, cold_variant(test, args.seed), catalogue,
                      policy.top_n)
    for field in ("retrieval", "rerank", "segments", "positive", "user_group", "target_segment"):
        getattr(rows, field).extend(getattr(cold, field))
    report = segment_report(rows, policy.rules, policy.standardize, seed=args.seed)
    out = args.out or ROOT / f"benchmarks/results/rerank_quality_{paths.run}.json"
    result = {**provenance("python -m benchmarks.rerank_quality "
                           + " ".join(argv or sys.argv[1:]), args.seed, LIBRARIES),
              "split": "test", "test_rows": len(test),
              "rows_by_group": {g: rows.user_group.count(g) for g in sorted(set(rows.user_group))},
              "engine": reranker.engine, "policy_rules": policy.rules,
              "policy_decided_on": json.loads(policy_file.read_text()).get("decided_on"),
              "seconds": round(time.perf_counter() - started, 1),
              "segments": report}
    save_json(out, result)
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def _fmt(stats: dict[str, Any]) -> str:
    lo, hi = stats["rel_lift_ci"]
    return (f"{stats['new']:.4f} ({stats['rel_lift']:+.1%}, CI {lo:+.1%} .. {hi:+.1%})"
            if stats["base"] > 0 else f"{stats['new']:.4f}")


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Reranker vs the towers' order, test split\n\n`{result['command']}` (commit "
             f"{result['commit'][:10]}, seed {result['seed']}, engine {result['engine']}); "
             f"{result['test_rows']} test rows, as warm contexts and cut to 1-3 item events "
             f"(cold); policy decided on validation: `{result['policy_rules']}`.\n",
             "NDCG@10 (relative lift over the towers, bootstrap 95% CI):\n",
             "| user group / target | n | towers | cross-encoder alone | policy (served) |",
             "|---|---|---|---|---|"]
    for name, seg in result["segments"].items():
        alone, served = seg["cross_encoder_alone"], seg["policy"]
        policy = _fmt(served) if seg["policy_enabled"] else "off (towers' order)"
        lines.append(f"| {name} | {alone['n']} | {alone['base']:.4f} | {_fmt(alone)} | "
                     f"{policy} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
