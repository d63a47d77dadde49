"""Training throughput of the towers: examples/s of ``train.py``'s own training step.

Builds the data, towers and ``TwoTowerModule`` exactly as ``train.py`` does (Hydra config of
``--experiment`` plus each setting's overrides), then runs Lightning for ``--warmup + --steps``
optimiser steps with validation off and times the last ``--steps`` (data loading, forward,
backward, clipping and the optimiser included). Settings run in turn, ``--repeats`` rounds in
alternating order (ABBA...), so a load change on a shared machine hits every setting alike;
the report gives each setting's median and every round. One line per setting and sequence
length; results also written as JSON with the command, commit, seed and machine.

    python -m benchmarks.train_speed --experiment movielens --seq-lens 20 50
    python -m benchmarks.train_speed --setting "width 64:user.hidden_dim=64" --steps 10
    python -m benchmarks.train_speed --experiment demo --override tower=tiny --seq-lens 8

A setting is ``NAME:OVERRIDE[,OVERRIDE...]`` (Hydra overrides of conf/train.yaml; ``NAME:`` for
none).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

from benchmarks.machine import machine_info  # noqa: E402

log = logging.getLogger(__name__)

# before: the full-width (384) recurrent state of the towers until this benchmark was written
DEFAULT_SETTINGS = ("gru width 384 (before):user.hidden_dim=null",
                    "gru width 128:user.hidden_dim=128")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="movielens",
                        help="conf/experiment/<name>.yaml to train as (its data, towers, batch)")
    parser.add_argument("--datasets-root", default=os.environ.get("FIRSTCLICK_DATASETS",
                                                                  "../shared/datasets"))
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[20, 50],
                        help="train.max_seq_len values (events the user tower reads)")
    parser.add_argument("--setting", action="append", dest="settings", default=None,
                        help=f"NAME:OVERRIDES (repeatable); default: {list(DEFAULT_SETTINGS)}")
    parser.add_argument("--override", action="append", dest="overrides", default=[],
                        help="Hydra override applied to every setting and to the data "
                             "(repeatable), e.g. data.options.n_items=500")
    parser.add_argument("--steps", type=int, default=40, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the settings")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=".cache/encoder", help="frozen-encoder cache")
    parser.add_argument("--extra", type=Path, action="append", default=[],
                        help="JSON file(s) of figures measured elsewhere (e.g. RecBole's SASRec, "
                             "or this script on an older commit) to include under 'external'")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_speed.json"))
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.repeats < 1:
        parser.error(f"--steps, --warmup and --repeats must be >= 1; got {args.steps}, "
                     f"{args.warmup}, {args.repeats}")
    settings = args.settings or list(DEFAULT_SETTINGS)
    parsed: dict[str, list[str]] = {}
    for text in settings:
        name, sep, overrides = text.partition(":")
        if not sep or not name.strip():
            parser.error(f"--setting must be NAME:OVERRIDE[,OVERRIDE...]; got {text!r}")
        parsed[name.strip()] = [o for o in overrides.split(",") if o.strip()]
    args.settings = parsed
    return args


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _compose(experiment: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    import pipeline.config  # noqa: F401  (registers the minilm_path resolver)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}", *overrides],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # run_name interpolates hydra:runtime.choices
    return cfg


class StepTimer:
    """Lightning callback: wall time from the start of batch ``warmup`` to the end of the run."""

    def __init__(self, warmup: int) -> None:
        import pytorch_lightning as pl

        outer = self

        class _Timer(pl.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
                if trainer.global_step == outer.warmup and outer.started is None:
                    outer.started = time.perf_counter()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
                outer.ended = time.perf_counter()
                outer.steps = trainer.global_step - outer.warmup

        self.warmup, self.started, self.ended, self.steps = warmup, None, None, 0
        self.callback = _Timer()

    @property
    def seconds(self) -> float:
        assert self.started is not None and self.ended is not None
        return self.ended - self.started


def time_setting(cfg: Any, dm: Any, steps: int, warmup: int, seed: int) -> dict[str, float]:
    """Train ``warmup + steps`` steps of the towers ``cfg`` describes on ``dm``; timing."""
    import hydra
    import pytorch_lightning as pl

    from pipeline.towers_stage import never_negatives

    pl.seed_everything(seed, workers=True)
    item_tower = hydra.utils.instantiate(cfg.tower, item_texts=dm.item_texts,
                                         query_texts=dm.query_texts,
                                         item_popularity=dm.item_popularity)
    user_tower = hydra.utils.instantiate(cfg.user, dim=item_tower.dim)
    never = never_negatives(dm.new_item_mask, dm.item_popularity,
                            cfg.train.exclude_unseen_negatives)
    total = warmup + steps
    module = hydra.utils.instantiate(cfg.module, _partial_=True)(  # objects pass as they are
        item_tower=item_tower, user_tower=user_tower,
        loss=hydra.utils.instantiate(cfg.loss), item_ids=dm.item_ids,
        item_popularity=dm.item_popularity, never_negative_mask=never, max_steps=total)
    timer = StepTimer(warmup)
    with tempfile.TemporaryDirectory() as root:
        trainer = hydra.utils.instantiate(
            cfg.trainer, max_steps=total, max_epochs=-1, limit_val_batches=0,
            logger=False, enable_checkpointing=False, enable_progress_bar=False,
            callbacks=[timer.callback], default_root_dir=root)
        trainer.fit(module, datamodule=dm)
    if timer.steps < steps:
        raise RuntimeError(f"only {timer.steps} timed steps ran (expected {steps})")
    batch = int(cfg.train.batch_size)
    seconds = timer.seconds
    return {"seconds": round(seconds, 3), "steps": timer.steps,
            "ms_per_step": round(1000 * seconds / timer.steps, 1),
            "examples_per_s": round(batch * timer.steps / seconds, 1),
            "user_tower_params": sum(p.numel() for p in user_tower.parameters())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pipeline.config import load_split
    from towers import SessionDataModule

    torch.set_num_threads(args.threads)
    common = [f"datasets_root={args.datasets_root}", f"cache_dir={args.cache_dir}",
              f"seed={args.seed}", "logger=none", *args.overrides]
    results: list[dict[str, Any]] = []
    for seq_len in args.seq_lens:
        base = _compose(args.experiment, [*common, f"train.max_seq_len={seq_len}"])
        split = load_split(base)
        dm = SessionDataModule(split, batch_size=base.train.batch_size, max_seq_len=seq_len,
                               eval_batch_size=base.train.eval_batch_size, seed=args.seed)
        n_train = len(dm.train_tensors["target_idx"])
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in args.settings}
        names = list(args.settings)
        for repeat in range(args.repeats):
            for name in (names if repeat % 2 == 0 else names[::-1]):
                cfg = _compose(args.experiment, [*common, f"train.max_seq_len={seq_len}",
                                                 *args.settings[name]])
                timing = time_setting(cfg, dm, args.steps, args.warmup, args.seed)
                timing["load_avg_1min"] = round(os.getloadavg()[0], 2)
                rounds[name].append(timing)
                print(f"  L={seq_len:<3} {name:<32} round {repeat + 1}: "
                      f"{timing['examples_per_s']:8.1f} examples/s "
                      f"({timing['ms_per_step']:.0f} ms/step, load {timing['load_avg_1min']})",
                      flush=True)
        for name, timings in rounds.items():
            rate = statistics.median(t["examples_per_s"] for t in timings)
            results.append({
                "setting": name, "overrides": args.settings[name], "max_seq_len": seq_len,
                "examples_per_s": round(rate, 1),
                "epoch_seconds": round(n_train / rate, 1), "train_examples": n_train,
                "batch_size": int(base.train.batch_size),
                "user_tower_params": timings[0]["user_tower_params"], "rounds": timings})
    return {"results": results}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    for name in ("pytorch_lightning", "lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    args = parse_args(argv)
    machine = machine_info(["torch", "pytorch-lightning", "sentence-transformers"])
    print(f"# {machine['cpu_model']}, {machine['cpu_cores']} cores, torch threads "
          f"{args.threads}, load average at start {os.getloadavg()[0]:.2f}", flush=True)
    started = time.time()
    report = run(args)
    external = []
    for path in args.extra:
        try:
            external.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"error: --extra {path}: expected a readable JSON file; got {exc}",
                  file=sys.stderr)
            return 2
    out = {"command": "python -m benchmarks.train_speed " + " ".join(sys.argv[1:] if argv is None
                                                                   else argv),
           "commit": _commit(), "seed": args.seed, "experiment": args.experiment,
           "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
           "repeats": args.repeats, "machine": machine,
           "wall_seconds": round(time.time() - started, 1),
           "note": "examples/s of train.py's training step (validation off); medians over the "
                   "rounds; a shared machine's load makes single figures noisy",
           **report, "external": external}
    print(f"\n{'setting':<34} {'L':>3} {'examples/s':>11} {'s/epoch':>8}")
    for row in report["results"]:
        print(f"{row['setting']:<34} {row['max_seq_len']:>3} {row['examples_per_s']:>11.1f} "
              f"{row['epoch_seconds']:>8.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
