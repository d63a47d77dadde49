"""The item knowledge graph: item -> relation -> entity triples from catalogue fields, a user's
``relations`` file, and (MovieLens) tags dated before the training cut.

Entities are named by strings: a category level is its path prefix (``"Lab > Optics"``), a brand
its name, an attribute ``"key: value"``, a genre or tag its text, a relations-file entity as
given. An entity is one node whatever relation links it; the relation is per link.

Category fields come in three shapes (``GraphSpec.category``):

- ``path``: ``"A > B > C"`` (or a list) -> one entity per level, relations ``category_1``, ...;
- ``list``: ``"Action, Comedy"`` -> one entity per element (relation ``genre`` for MovieLens);
- ``words``: the levels were joined by spaces (Amazon UniSRec text: ``"Industrial & Scientific
  Abrasive & Finishing Products ..."``); level boundaries are inferred from the whole
  catalogue as the branch points of a word trie (a prefix where categories diverge or end).

The frames returned here are plain ``item_id, relation, entity`` string columns, usable by any
consumer (the item tower's entity part, ``recdata.stats``, a ranker's overlap features).
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recdata.schema import DataError
from recdata.text import CATEGORY_SEP

log = logging.getLogger(__name__)

TRIPLE_COLUMNS: tuple[str, ...] = ("item_id", "relation", "entity")
CATEGORY_MODES: tuple[str, ...] = ("path", "list", "words", "none")
BRAND_RELATION = "brand"
TAG_RELATION = "tag"


@dataclass(frozen=True)
class GraphSpec:
    """How catalogue fields become triples (``data.graph`` in conf/data/*.yaml)."""

    category: str = "path"  # path | list | words | none (see the module docstring)
    category_relation: str = "category"  # levels are <relation>_1, _2, ... (path, words)
    brand: bool = True  # the brand field is an entity
    attributes: bool = True  # each attributes "key: value" is an entity (relation = key)
    tags: bool = False  # SplitData.item_tags (dated before the training cut) are entities
    min_items: int = 2  # entities linked to fewer items are dropped (nothing to transfer)
    max_item_share: float = 0.5  # entities linked to more of the catalogue are dropped
    max_links: int = 32  # most entities per item (the most specific are kept)

    def __post_init__(self) -> None:
        if self.category not in CATEGORY_MODES:
            raise DataError(f"data.graph.category must be one of {list(CATEGORY_MODES)}, got "
                            f"{self.category!r}")
        if self.min_items < 1 or not 0.0 < self.max_item_share <= 1.0 or self.max_links < 1:
            raise DataError(f"data.graph needs min_items >= 1, 0 < max_item_share <= 1 and "
                            f"max_links >= 1; got {self.min_items}, {self.max_item_share}, "
                            f"{self.max_links}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> GraphSpec:
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise DataError(f"data.graph: unknown key(s) {unknown}; expected some of "
                            f"{sorted(cls.__dataclass_fields__)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _clean(value: Any) -> str:
    return "" if _missing(value) else " ".join(str(value).split())


def _category_parts(value: Any, mode: str) -> list[str]:
    """The category field as a list of parts: path levels, list elements, or one words string."""
    if _missing(value):
        return []
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        return [p for p in (_clean(v) for v in value) if p]
    text = _clean(value)
    if mode == "path":
        return [p.strip() for p in text.split(CATEGORY_SEP.strip()) if p.strip()]
    if mode == "list":
        return [p.strip() for p in text.split(",") if p.strip()]
    return [text] if text else []


def word_levels(categories: Iterable[str]) -> set[tuple[str, ...]]:
    """Level boundaries of space-joined category paths: the word prefixes where the catalogue's
    categories branch (two or more continuations) or end. Returns the set of boundary prefixes.

    >>> sorted(word_levels(["Lab Glass Beakers", "Lab Glass Flasks", "Lab Optics"]))
    [('Lab',), ('Lab', 'Glass'), ('Lab', 'Glass', 'Beakers'), ('Lab', 'Glass', 'Flasks'), \
('Lab', 'Optics')]
    """
    nexts: dict[tuple[str, ...], set[str | None]] = defaultdict(set)
    for category in categories:
        words = _clean(category).split()
        for n in range(1, len(words) + 1):
            nexts[tuple(words[:n])].add(words[n] if n < len(words) else None)
    return {prefix for prefix, follow in nexts.items() if len(follow) > 1 or None in follow}


def _word_path(text: str, levels: set[tuple[str, ...]]) -> list[str]:
    """``text``'s category levels as path prefixes ``"A > A B words > ..."`` joined by " > "."""
    words, cuts = text.split(), []
    for n in range(1, len(words) + 1):
        if tuple(words[:n]) in levels:
            cuts.append(n)
    parts, start = [], 0
    for cut in cuts:
        parts.append(" ".join(words[start:cut]))
        start = cut
    return parts


def _level_triples(item_id: str, parts: list[str], relation: str) -> list[tuple[str, str, str]]:
    return [(item_id, f"{relation}_{depth}", CATEGORY_SEP.join(parts[:depth]))
            for depth in range(1, len(parts) + 1)]


def _attribute_pairs(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return []
    if not isinstance(value, Mapping):
        return []
    out = []
    for key, val in value.items():
        vals = val if isinstance(val, (list, tuple)) else [val]
        out += [(_clean(key), f"{_clean(key)}: {_clean(v)}") for v in vals
                if _clean(key) and _clean(v)]
    return out


def catalogue_levels(catalogue: pd.DataFrame) -> set[tuple[str, ...]]:
    """The ``words`` mode level boundaries of a catalogue's category column."""
    return word_levels(_clean(c) for c in catalogue.get("category", pd.Series(dtype=object))
                       if not _missing(c))


def item_triples(
    catalogue: pd.DataFrame,
    spec: GraphSpec | None = None,
    item_tags: pd.DataFrame | None = None,
    relations: pd.DataFrame | None = None,
    levels: set[tuple[str, ...]] | None = None,
) -> pd.DataFrame:
    """Raw triples ``item_id, relation, entity`` (strings, deduplicated, unfiltered) of the
    catalogue's fields per ``spec``, plus ``item_tags`` (``item_id, tag``: only pass tags dated
    before the training cut) when ``spec.tags`` and ``relations`` rows for catalogue items.
    ``levels``: the ``words`` mode boundaries (default: inferred from this catalogue; pass the
    training catalogue's for a few live-added items)."""
    spec = spec or GraphSpec()
    rows: list[tuple[str, str, str]] = []
    if spec.category == "words" and levels is None:
        levels = catalogue_levels(catalogue)
    records = catalogue.to_dict("records")
    for item in records:
        item_id = str(item["item_id"])
        if spec.category != "none":
            parts = _category_parts(item.get("category"), spec.category)
            if spec.category == "list":
                rows += [(item_id, spec.category_relation, p) for p in parts]
            elif spec.category == "words":
                path = _word_path(" ".join(parts), levels or set())
                rows += _level_triples(item_id, path, spec.category_relation)
            else:
                rows += _level_triples(item_id, parts, spec.category_relation)
        brand = _clean(item.get("brand"))
        if spec.brand and brand:
            rows.append((item_id, BRAND_RELATION, brand))
        if spec.attributes:
            rows += [(item_id, rel, ent) for rel, ent in _attribute_pairs(item.get("attributes"))]
    known = {str(i) for i in catalogue["item_id"]}
    if spec.tags and item_tags is not None and len(item_tags):
        tags = item_tags.loc[item_tags["item_id"].astype(str).isin(known)]
        rows += [(str(i), TAG_RELATION, _clean(t)) for i, t in zip(tags["item_id"], tags["tag"])
                 if _clean(t)]
    frame = pd.DataFrame(rows, columns=list(TRIPLE_COLUMNS), dtype=object)
    if relations is not None and len(relations):
        extra = relations.loc[relations["item_id"].astype(str).isin(known), list(TRIPLE_COLUMNS)]
        frame = pd.concat([frame, extra.astype(str)], ignore_index=True)
    return frame.drop_duplicates().reset_index(drop=True)


def filter_entities(
    triples: pd.DataFrame, n_items: int, spec: GraphSpec | None = None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop entities linked to fewer than ``min_items`` items (an item's private entity transfers
    nothing) or to more than ``max_item_share`` of the catalogue (it tells items apart from
    nothing), then keep each item's ``max_links`` most specific links (fewest items).
    Returns (triples with an ``entity_items`` column, counts of what was dropped)."""
    spec = spec or GraphSpec()
    degree = triples.groupby("entity")["item_id"].nunique()
    too_rare = degree[degree < spec.min_items].index
    too_common = degree[degree > spec.max_item_share * n_items].index
    kept = triples.loc[~triples["entity"].isin(too_rare.union(too_common))]
    kept = kept.assign(entity_items=kept["entity"].map(degree).astype("int64"))
    kept = kept.sort_values(["item_id", "entity_items", "relation", "entity"], kind="stable")
    capped = kept.groupby("item_id", sort=False).head(spec.max_links)
    report = {"triples_in": int(len(triples)), "entities_in": int(len(degree)),
              "entities_rare_dropped": int(len(too_rare)),
              "entities_common_dropped": int(len(too_common)),
              "links_over_max_dropped": int(len(kept) - len(capped)),
              "triples_out": int(len(capped))}
    if len(too_common):
        log.info("graph: dropped %d entities linked to > %.0f%% of items (e.g. %s)",
                 len(too_common), 100 * spec.max_item_share, list(too_common[:3]))
    return capped.reset_index(drop=True), report


def split_triples(split: Any, spec: GraphSpec | None = None) -> tuple[pd.DataFrame, dict]:
    """The filtered triples of a ``SplitData``: its catalogue's fields, ``split.item_tags``
    (tags before the training cut) and ``split.relations`` (a ``files`` source relations file)."""
    spec = spec or GraphSpec()
    raw = item_triples(split.catalogue, spec, getattr(split, "item_tags", None),
                       getattr(split, "relations", None))
    return filter_entities(raw, len(split.catalogue), spec)


@dataclass
class GraphArrays:
    """A triples frame as padded index arrays in catalogue order (what the item tower reads)."""

    entity_names: list[str]
    relation_names: list[str]
    item_entity: np.ndarray  # (n_items, K) int64 entity index, -1 = padding
    item_relation: np.ndarray  # (n_items, K) int64 relation index, -1 = padding


def graph_arrays(triples: pd.DataFrame, item_ids: Sequence[str], max_links: int = 32
                 ) -> GraphArrays:
    """Index arrays of ``triples`` for ``item_ids`` (row order); entities and relations sorted by
    name, so the same triples give the same arrays."""
    entity_names = sorted(set(triples["entity"]))
    relation_names = sorted(set(triples["relation"]))
    ent = {e: n for n, e in enumerate(entity_names)}
    rel = {r: n for n, r in enumerate(relation_names)}
    row_of = {str(i): n for n, i in enumerate(item_ids)}
    per_item: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for item_id, relation, entity in zip(triples["item_id"], triples["relation"],
                                         triples["entity"]):
        row = row_of.get(str(item_id))
        if row is not None and len(per_item[row]) < max_links:
            per_item[row].append((ent[entity], rel[relation]))
    width = max(1, max((len(v) for v in per_item.values()), default=1))
    item_entity = np.full((len(item_ids), width), -1, dtype=np.int64)
    item_relation = np.full((len(item_ids), width), -1, dtype=np.int64)
    for row, links in per_item.items():
        item_entity[row, : len(links)] = [e for e, _ in links]
        item_relation[row, : len(links)] = [r for _, r in links]
    return GraphArrays(entity_names, relation_names, item_entity, item_relation)


def read_relations(path: str | Path, known_items: Iterable[str]) -> tuple[pd.DataFrame, dict]:
    """A user's relations file (CSV, JSONL or Parquet; columns ``item_id, relation, entity``),
    validated: a missing column or an empty value raises DataError naming the file, column and
    row; rows naming items not in the catalogue are counted, logged and dropped, exact duplicates
    dropped. Returns (triples, report)."""
    from recdata.loaders import read_table

    frame = read_table(path)
    if frame.empty:
        raise DataError(f"{path}: relations file has no rows; expected at least one "
                        f"{list(TRIPLE_COLUMNS)} row, or leave data.options.relations unset")
    missing = [c for c in TRIPLE_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: relations file is missing column(s) {missing}; expected "
                        f"{list(TRIPLE_COLUMNS)} (one item -> relation -> entity link per row), "
                        f"got {list(frame.columns)}")
    out = pd.DataFrame(index=frame.index)
    for column in TRIPLE_COLUMNS:
        values = frame[column].map(_clean)
        empty = values == ""
        if empty.any():
            row = int(np.flatnonzero(empty.to_numpy())[0])
            raise DataError(f"{path}: column {column!r} is empty in row {row + 1} (and "
                            f"{int(empty.sum()) - 1} more); every relation row needs an item_id, "
                            "a relation and an entity")
        out[column] = values
    known = pd.Index([str(i) for i in known_items])
    unknown = ~out["item_id"].isin(known)
    report = {"relations_in": int(len(out)), "unknown_item_relations_dropped": int(unknown.sum())}
    if unknown.any():
        log.warning("%s: dropped %d relation row(s) naming %d item id(s) not in the catalogue "
                    "(e.g. %s)", path, int(unknown.sum()), out.loc[unknown, "item_id"].nunique(),
                    out.loc[unknown, "item_id"].drop_duplicates().head(5).tolist())
    out = out.loc[~unknown]
    deduped = out.drop_duplicates()
    report["duplicate_relations_dropped"] = int(len(out) - len(deduped))
    if deduped.empty:
        raise DataError(f"{path}: none of its {report['relations_in']} relation rows names an "
                        "item of the catalogue; check that its item_id values match the "
                        "catalogue's")
    report["relations_out"] = int(len(deduped))
    return deduped.reset_index(drop=True), report
