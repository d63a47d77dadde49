"""``python -m recdata.stats data=amazon_scientific``: describe a dataset and its split."""

from __future__ import annotations

import sys

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from recdata import PROJECT_ROOT, DataError, Dataset, SplitData, load_dataset, split_dataset
from recdata.graph import GraphSpec, split_triples

PERCENTILES = (50, 90, 99)


def _percentiles(values: pd.Series) -> dict[str, float]:
    arr = values.to_numpy() if len(values) else np.zeros(1)
    return {**{f"p{q}": float(np.percentile(arr, q)) for q in PERCENTILES},
            "max": float(arr.max())}


def graph_stats(split: SplitData, spec: GraphSpec) -> dict[str, object]:
    """The item knowledge graph of a split: entities and links per relation, degree percentiles,
    and how many cold items it can reach — new items (no training interaction) and long-tail
    items sharing an entity with a warm item (one with training interactions; for a long-tail
    item, another one), and with a head item."""
    triples, report = split_triples(split, spec)
    pop = split.item_popularity
    warm = set(pop.index[pop > 0].astype(str))
    head = warm - set(split.long_tail)
    entity_items = triples.groupby("entity")["item_id"].agg(set)
    item_entities = triples.groupby("item_id")["entity"].agg(list)

    def reaching(items: set[str], others: set[str]) -> int:
        """How many of ``items`` share an entity with an item of ``others`` (not itself)."""
        in_others = {e: len(members & others) for e, members in entity_items.items()}
        return sum(any(in_others[e] - (item in others) > 0 for e in item_entities.get(item, []))
                   for item in items)

    new = set(pop.index[pop == 0].astype(str))
    links_per_item = item_entities.map(len).reindex(pop.index.astype(str), fill_value=0)
    return {
        "spec": spec.to_dict(), "filtering": report,
        "entities": int(len(entity_items)), "links": int(len(triples)),
        "relations": int(triples["relation"].nunique()),
        "by_relation": {rel: {"entities": int(g["entity"].nunique()), "links": int(len(g))}
                        for rel, g in triples.groupby("relation")},
        "items_per_entity": _percentiles(entity_items.map(len)),
        "entities_per_item": _percentiles(links_per_item),
        "items_with_links": int((links_per_item > 0).sum()),
        "new_items": len(new), "new_items_sharing_with_warm": reaching(new, warm),
        "held_out_new_items": len(split.new_items),
        "held_out_sharing_with_warm": reaching(set(split.new_items), warm),
        "long_tail_items": len(split.long_tail),
        "long_tail_sharing_with_warm": reaching(set(split.long_tail), warm),
        "long_tail_sharing_with_head": reaching(set(split.long_tail), head),
    }


def describe(dataset: Dataset, split: SplitData, graph: GraphSpec | None = None
             ) -> dict[str, object]:
    """The figures the stats command prints, as a dict (also used by tests and benchmarks);
    with ``graph``, also the item knowledge graph's (:func:`graph_stats`)."""
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
        **({"graph": graph_stats(split, graph)} if graph is not None else {}),
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
    if "graph" in stats:
        lines += format_graph(stats["graph"])
    return "\n".join(lines)


def format_graph(graph: dict) -> list[str]:
    def pct(values: dict) -> str:
        return " ".join(f"{k}={v:g}" for k, v in values.items())

    def share(n: int, of: int) -> str:
        return f"{n:>10,} of {of:,} ({n / of:.1%})" if of else f"{n:>10,} of 0"

    lines = ["knowledge graph (item -> relation -> entity)",
             f"  {'entities / relations / links':<34}{graph['entities']:>10,} / "
             f"{graph['relations']} / {graph['links']:,}"]
    for rel, counts in graph["by_relation"].items():
        lines.append(f"    {rel:<32}{counts['entities']:>10,} entities {counts['links']:>8,} links")
    lines += [f"  {'items per entity':<34}{pct(graph['items_per_entity'])}",
              f"  {'entities per item':<34}{pct(graph['entities_per_item'])}",
              f"  {'items with an entity':<34}{graph['items_with_links']:>10,}",
              f"  {'new items sharing with a warm one':<34}"
              f"{share(graph['new_items_sharing_with_warm'], graph['new_items'])}",
              f"  {'  of them held out':<34}"
              f"{share(graph['held_out_sharing_with_warm'], graph['held_out_new_items'])}",
              f"  {'long-tail sharing with a warm one':<34}"
              f"{share(graph['long_tail_sharing_with_warm'], graph['long_tail_items'])}",
              f"  {'long-tail sharing with a head one':<34}"
              f"{share(graph['long_tail_sharing_with_head'], graph['long_tail_items'])}",
              f"  {'filtering':<34}{graph['filtering']}"]
    return lines


def run(cfg: DictConfig) -> dict[str, object]:
    data = OmegaConf.to_container(cfg.data, resolve=True)
    dataset = load_dataset(data["source"], **data["options"])
    split = split_dataset(dataset, **data["split"])
    stats = describe(dataset, split, GraphSpec.from_dict(data.get("graph")))
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
