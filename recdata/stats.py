"""``python -m recdata.stats data=amazon_scientific``: describe a dataset and its split."""

from __future__ import annotations

import sys

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from recdata import PROJECT_ROOT, DataError, Dataset, SplitData, load_dataset, split_dataset


def describe(dataset: Dataset, split: SplitData) -> dict[str, object]:
    """The figures the stats command prints, as a dict (also used by tests and benchmarks)."""
    item_events = dataset.events.loc[dataset.events["event"] != "search"]
    per_user = item_events.groupby("user_id").size()
    pop = split.item_popularity
    pct = {f"p{q}": float(np.percentile(pop.to_numpy(), q)) for q in (25, 50, 75, 90, 99)}
    segments = {}
    for name, frame in (("valid", split.valid), ("test", split.test)):
        segments[name] = {
            "examples": int(len(frame)),
            "user": frame["user_segment"].value_counts().to_dict(),
            "target": frame["target_segment"].value_counts().to_dict(),
        }
    return {
        "dataset": dataset.name,
        "users": int(dataset.events["user_id"].nunique()),
        "items": int(len(dataset.catalogue)),
        "events": int(len(dataset.events)),
        "event_types": dataset.events["event"].value_counts().to_dict(),
        "events_per_user": {"min": int(per_user.min()), "median": float(per_user.median()),
                            "max": int(per_user.max())},
        "train_popularity_percentiles": pct,
        "items_without_train_interactions": int((pop == 0).sum()),
        "long_tail_items": int(len(split.long_tail)),
        "long_tail_share": float(len(split.long_tail) / len(pop)),
        "new_items_held_out": int(len(split.new_items)),
        "train_examples": int(len(split.train)),
        "segments": segments,
        "validation_report": dataset.report,
    }


def format_stats(stats: dict[str, object]) -> str:
    lines = [f"dataset {stats['dataset']}"]
    for key in ("users", "items", "events"):
        lines.append(f"  {key:<34}{stats[key]:>10,}")
    epu = stats["events_per_user"]
    lines.append(f"  {'item events per user min/median/max':<34}"
                 f"{epu['min']:>6} / {epu['median']:g} / {epu['max']}")
    lines.append(f"  {'event types':<34}{stats['event_types']}")
    pct = " ".join(f"{k}={v:g}" for k, v in stats["train_popularity_percentiles"].items())
    lines.append(f"  {'train popularity percentiles':<34}{pct}")
    lines.append(f"  {'items with no train interaction':<34}"
                 f"{stats['items_without_train_interactions']:>10,}")
    lines.append(f"  {'long-tail items (share)':<34}{stats['long_tail_items']:>10,} "
                 f"({stats['long_tail_share']:.1%})")
    lines.append(f"  {'new items held out':<34}{stats['new_items_held_out']:>10,}")
    lines.append(f"  {'train examples':<34}{stats['train_examples']:>10,}")
    for name, seg in stats["segments"].items():
        lines.append(f"  {name} examples {seg['examples']:,}: users {seg['user']}  "
                     f"targets {seg['target']}")
    lines.append(f"  {'validation':<34}{stats['validation_report']}")
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict[str, object]:
    data = OmegaConf.to_container(cfg.data, resolve=True)
    dataset = load_dataset(data["source"], **data["options"])
    split = split_dataset(dataset, **data["split"])
    stats = describe(dataset, split)
    print(format_stats(stats))
    return stats


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="stats")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    _hydra_main()


if __name__ == "__main__":
    pd.set_option("display.width", 120)
    main()
