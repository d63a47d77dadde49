"""Training ablations: one grid of ``train.py`` runs, each row's validation and test figures.

    python -m benchmarks.ablations benchmarks/grids/amazon_full.yaml
    python -m benchmarks.ablations benchmarks/grids/amazon_full.yaml --only text_only

A grid file (YAML) names the results file, the overrides every row shares and one row per
setting (a short ``key``, a ``label`` and its own overrides). Each row is a fresh
``python train.py`` subprocess (towers stage, its own run dir); its ``metrics.json`` gives the
validation figures that choose a setting and the test figures that report it. Writes
``<out>/<name>.json`` (every figure, and per row its command, commit, seed and wall time) and
``<out>/<name>.md``. ``--only`` re-runs some rows and keeps the others from the existing file.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import provenance
from benchmarks.report import _write_text

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("torch", "sentence-transformers", "transformers", "pytorch-lightning", "hydra-core",
             "faiss-cpu", "numpy", "pandas")
FIGURES = ("recall_at_10", "ndcg_at_10", "recall_at_50", "mrr")


class GridError(ValueError):
    """A bad grid file or argument; the message says what was expected."""


def load_grid(path: Path) -> dict[str, Any]:
    """Read and check a grid file: ``name``, ``title``, ``base`` (list), ``rows`` (list of
    ``{key, label, overrides}``) with unique keys."""
    import yaml

    try:
        grid = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise GridError(f"{path}: cannot read the grid ({err})") from None
    if not isinstance(grid, dict) or not {"name", "base", "rows"} <= set(grid):
        raise GridError(f"{path}: expected a mapping with name, base and rows")
    keys = [row.get("key") for row in grid["rows"]]
    if not all(isinstance(k, str) and k for k in keys) or len(set(keys)) != len(keys):
        raise GridError(f"{path}: every row needs a unique non-empty key; got {keys}")
    return grid


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in ("valid", "test"):
        for view in ("masked", "unmasked"):
            block = metrics[split][view]
            out[f"{split}_{view}"] = {k: block["overall"][k] for k in FIGURES}
            out[f"{split}_{view}"]["segments"] = {
                seg: {"count": v["count"], "recall_at_10": v["recall_at_10"],
                      "ndcg_at_10": v["ndcg_at_10"]} for seg, v in block["by_segment"].items()}
    return out


def run_row(grid: dict[str, Any], row: dict[str, Any], artifacts_dir: Path) -> dict[str, Any]:
    """Train one row's towers in a subprocess and return its figures and provenance."""
    run_name = f"{grid['name']}_{row['key']}"
    argv = [*grid["base"], *row.get("overrides", []), "stage=towers",
            f"run_name={run_name}", f"artifacts_dir={artifacts_dir}"]
    command = "python train.py " + " ".join(shlex.quote(a) for a in argv)
    print(f"[{row['key']}] {command}", flush=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT)
    if done.returncode != 0:
        raise GridError(f"row {row['key']!r}: `{command}` exited with {done.returncode}")
    metrics = json.loads((artifacts_dir / run_name / "metrics.json").read_text())
    return {"key": row["key"], "label": row.get("label", row["key"]),
            "overrides": row.get("overrides", []), "wall_seconds":
            round(time.perf_counter() - started, 1), "train_seconds": metrics["train_seconds"],
            "epochs": metrics["epochs"], **_summary(metrics),
            **provenance(command, seed=_seed(argv), libraries=LIBRARIES)}


def _seed(argv: list[str]) -> int:
    seeds = [int(a.split("=", 1)[1]) for a in argv if a.startswith("seed=")]
    return seeds[-1] if seeds else 0


def markdown(result: dict[str, Any]) -> str:
    """The grid's table: validation (which chose) beside test (which reports)."""
    lines = [f"# {result['title']}", "", f"Command: `{result['command']}`", "",
             "Settings are chosen on **validation**; test figures only report them. Each row "
             "is one `train.py` run (its command and commit in the JSON).", "",
             "| row | overrides | valid R@10 | valid N@10 | test R@10 | test N@10 | test R@10 "
             "unmasked | test N@10 unmasked | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        v, t, u = row["valid_masked"], row["test_masked"], row["test_unmasked"]
        lines.append(f"| {row['label']} | `{' '.join(row['overrides']) or '(defaults)'}` | "
                     f"{v['recall_at_10']:.4f} | {v['ndcg_at_10']:.4f} | {t['recall_at_10']:.4f} "
                     f"| {t['ndcg_at_10']:.4f} | {u['recall_at_10']:.4f} | {u['ndcg_at_10']:.4f} "
                     f"| {row['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("grid", type=Path, help="grid YAML (benchmarks/grids/*.yaml)")
    p.add_argument("--only", nargs="+", metavar="KEY", help="re-run these rows, keep the rest")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--artifacts-dir", type=Path, default=ROOT / "artifacts" / "ablations")
    args = p.parse_args(argv)
    try:
        grid = load_grid(args.grid)
        keys = [row["key"] for row in grid["rows"]]
        unknown = sorted(set(args.only or []) - set(keys))
        if unknown:
            raise GridError(f"--only: unknown row key(s) {unknown}; the grid has {keys}")
        path = args.out / f"{grid['name']}.json"
        previous = {}
        if args.only and path.exists():
            previous = {row["key"]: row for row in json.loads(path.read_text())["rows"]}
        rows = []
        for row in grid["rows"]:
            if args.only and row["key"] not in args.only and row["key"] in previous:
                rows.append(previous[row["key"]])
            elif not args.only or row["key"] in args.only:
                rows.append(run_row(grid, row, args.artifacts_dir))
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = {"name": grid["name"], "title": grid.get("title", grid["name"]),
              "command": "python -m benchmarks.ablations " + " ".join(
                  argv if argv is not None else sys.argv[1:]), "base": grid["base"],
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    _write_text(path, json.dumps(result, indent=1) + "\n")
    _write_text(path.with_suffix(".md"), markdown(result))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
