"""The item knowledge graph at serving time: links of live-added items, and reasons from it.

A graph tower (``tower.graph=true``) adds to each item vector an entity part, the weighted sum of
its links' vectors (brand, category levels, attributes, tags). ``GraphExplainer`` keeps, for
every indexed item, its links and their weights, so an item's score splits into one term per
link. An item counts as decided by the graph when, without its entity part, its retrieval
score would fall below the first item outside the top k; its reason then names the link that
gave most: ``same brand as 'X' you clicked`` when the brand is shared with a session item,
``more from <category>`` for a category level, ``same genre 'Comedy' as 'X' you rated``, ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from engine.artifacts import parse_links
from engine.explain import PAST_TENSE, _quote
from recdata.graph import BRAND_RELATION, GraphSpec, item_triples
from recdata.text import CATEGORY_SEP

Links = list[tuple[str, str]]  # (relation, entity) name pairs of one item


def category_label(entity: str) -> str:
    """A short name of a category-level entity: its last level, with the level above when the
    last one is a single word (inferred levels can split 'Lab Bottles' into 'Lab > Bottles')."""
    parts = entity.split(CATEGORY_SEP)
    label = parts[-1]
    for part in reversed(parts[:-1]):
        if len(label.split()) > 1:
            break
        label = f"{part} {label}"
    return label


def stored_links(catalogue: pd.DataFrame) -> list[Links | None]:
    """Per catalogue row, the links kept in its ``links`` column (an item added or upserted
    live with a graph tower), None where there are none (a part written before they were kept
    has no column: all None)."""
    if "links" not in catalogue.columns:
        return [None] * len(catalogue)
    return [parse_links(v) for v in catalogue["links"]]


def edited_rows(model: Any, catalogue: pd.DataFrame) -> pd.Series:
    """Rows (bool, by row) whose links are not the towers': items the towers did not train on,
    and trained items upserted live (their ``links`` kept in the catalogue)."""
    stored = (catalogue["links"].notna() if "links" in catalogue.columns
              else pd.Series(False, index=catalogue.index))
    return ~catalogue["item_id"].isin(model.item_index) | stored


def catalogue_links(model: Any, catalogue: pd.DataFrame,
                    also: Sequence[str] = ()) -> list[Links] | None:
    """Per catalogue row, the (relation, entity) links of items whose links are not the
    towers' (:func:`edited_rows`; and of the ids in ``also``): those kept in the catalogue when
    the item was added live, else drawn from its catalogue fields as training drew them; empty
    for the others. None when the towers have no entity part."""
    if getattr(model.item_tower, "graph", None) is None:
        return None
    wanted = edited_rows(model, catalogue) | catalogue["item_id"].isin(set(also))
    rows = catalogue.loc[wanted]
    by_id = dict(zip(rows["item_id"], GraphExplainer(model).links_of_rows(rows)))
    return [by_id.get(i, []) for i in catalogue["item_id"]]


class GraphExplainer:
    """Links, link weights and per-link output vectors of a graph tower's items (tower items
    from the tower, live-added ones from their fields); see the module docstring."""

    def __init__(self, model: Any) -> None:
        tower = model.item_tower
        info = tower.graph_explanation()
        self.tower = tower
        self.spec = GraphSpec.from_dict(tower.config.get("graph_spec") or {})
        self.entity_names: list[str] = info["entities"]
        self.relation_names: list[str] = info["relations"]
        self.entity_out, self.relation_out = info["entity_out"], info["relation_out"]
        self.levels = self._levels()
        self._items: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for item_id, row in model.item_index.items():
            self._items[item_id] = self._row(info, row)
        self._tower_items = dict(self._items)  # what reset() returns to

    @classmethod
    def from_model(cls, model: Any) -> GraphExplainer | None:
        """An explainer when the towers have an entity part, else None."""
        return cls(model) if getattr(model.item_tower, "graph", None) is not None else None

    @staticmethod
    def _row(info: Mapping[str, np.ndarray], row: int) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
        keep = info["entity"][row] >= 0
        return (info["entity"][row][keep], info["relation"][row][keep],
                info["weight"][row][keep])

    def _levels(self) -> set[tuple[str, ...]]:
        """The ``words`` category levels the tower knows, rebuilt from its category entities."""
        levels: set[tuple[str, ...]] = set()
        prefix = f"{self.spec.category_relation}_"
        if not any(r.startswith(prefix) for r in self.relation_names):
            return levels
        for name in self.entity_names:
            parts = name.split(CATEGORY_SEP)
            for depth in range(1, len(parts) + 1):
                levels.add(tuple(" ".join(parts[:depth]).split()))
        return levels

    # ---- live-added items ---------------------------------------------------------------
    def links_for(self, items: pd.DataFrame) -> list[Links]:
        """(relation, entity) pairs of new items from their catalogue fields, as training drew
        them (data.graph); entities the tower does not know are kept out later by the tower."""
        spec = GraphSpec(**{**self.spec.to_dict(), "tags": False})
        triples = item_triples(items, spec, levels=self.levels)
        by_item: dict[str, Links] = {}
        for item_id, relation, entity in zip(triples["item_id"], triples["relation"],
                                             triples["entity"]):
            by_item.setdefault(str(item_id), []).append((relation, entity))
        return [by_item.get(str(i), []) for i in items["item_id"]]

    def links_of_rows(self, rows: pd.DataFrame) -> list[Links]:
        """Links of catalogue rows: those kept in their ``links`` column, else (a part written
        before they were kept) drawn from their catalogue fields by :meth:`links_for`."""
        links = stored_links(rows)
        missing = [n for n, found in enumerate(links) if found is None]
        if missing:
            drawn = self.links_for(rows.iloc[missing])
            for n, item_links in zip(missing, drawn):
                links[n] = item_links
        return [item_links or [] for item_links in links]

    def reset(self) -> None:
        """Back to the towers' items and links alone (before registering a state's edits)."""
        self._items = dict(self._tower_items)

    def add(self, item_ids: Sequence[str], texts: Sequence[str], links: Sequence[Links]) -> None:
        info = self.tower.graph_explanation(list(texts), list(links))
        items = dict(self._items)  # copy on write: requests read the old dict meanwhile
        for row, item_id in enumerate(item_ids):
            items[str(item_id)] = self._row(info, row)
        self._items = items

    def remove(self, item_ids: Sequence[str]) -> None:
        drop = set(item_ids)
        self._items = {k: v for k, v in self._items.items() if k not in drop}

    # ---- reasons ------------------------------------------------------------------------
    def terms(self, item_id: str, user_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
        """(entity, relation, score term) of each link of the item; the terms sum to the
        entity part's share of the item's score."""
        ent, rel, weight = self._items.get(item_id, (np.zeros(0, np.int64),) * 2
                                           + (np.zeros(0, np.float32),))
        vec = self.entity_out[ent] + self.relation_out[rel]  # (K, dim)
        return ent, rel, weight * (vec @ user_emb)

    def reasons(self, user_emb: np.ndarray, top_ids: Sequence[str], top_scores: np.ndarray,
                threshold: float, session_items: Sequence[tuple[str, str, str]]
                ) -> list[str | None]:
        """A graph reason for each top item the graph decided (None for the others).
        ``top_scores``: their retrieval scores; ``threshold``: the retrieval score of the first
        item outside the top k; ``session_items``: (item_id, event type, title) of the
        session's catalogue items, oldest first."""
        shared: dict[int, tuple[str, str]] = {}  # entity -> (title, event type), latest wins
        for item_id, kind, title in session_items:
            for ent in self._items.get(item_id, (np.zeros(0, np.int64),))[0].tolist():
                shared[ent] = (title, kind)
        out: list[str | None] = []
        for item_id, score in zip(top_ids, top_scores):
            ent, rel, term = self.terms(item_id, user_emb)
            if not len(term) or score - float(term.sum()) >= threshold:
                out.append(None)
                continue
            order = np.argsort(-term, kind="stable")
            best = next((j for j in order if term[j] > 0 and int(ent[j]) in shared), None)
            if best is None:
                best = int(order[0]) if term[order[0]] > 0 else None
            out.append(None if best is None else self.phrase(
                self.relation_names[rel[best]], self.entity_names[ent[best]],
                shared.get(int(ent[best]))))
        return out

    def phrase(self, relation: str, entity: str, shared: tuple[str, str] | None) -> str:
        """The reason for one link; ``shared`` = (title, event type) of the session item that
        has the same entity, if any."""
        verb = PAST_TENSE.get(shared[1], f"{shared[1]}ed") if shared else ""
        if relation.startswith(f"{self.spec.category_relation}_"):
            return f"more from {_quote(category_label(entity))}"
        if relation == BRAND_RELATION:
            return (f"same brand as '{_quote(shared[0])}' you {verb}" if shared
                    else f"more from {_quote(entity)}")
        label = entity if entity.startswith(f"{relation}: ") else f"{relation} '{entity}'"
        if shared:  # genres, tags, attributes ("colour: black"), relations-file links
            return f"same {_quote(label)} as '{_quote(shared[0])}' you {verb}"
        return f"more with {_quote(label)}"
