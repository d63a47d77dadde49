"""The entity part of the item tower (``tower.graph=true``): what an item's brand, category levels,
attributes, genres or tags learned from the warm items they link.

Each entity has a vector in BERT's text space, initialised from the text vector of its name and
trained; each relation adds a learned offset (zero at first). An item's entity vector is the
mean of its links' vectors, or an attention over them (``agg="attention"``: a learned bias per
relation plus a dot product of the item's text vector with each link, so an item can lean on its
brand or its finest category), then a linear map into the output space that starts at zero, so
the tower starts as the text tower and learns how much to trust the graph. Because entity
vectors are shared, an item never seen in training gets the behaviour its entities learned from
warm items (the knowledge-graph strategy of cold-start recommendation, e.g. KGAT, Wang et al.,
KDD 2019, here one hop, item -> entity).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from towers.errors import TowerError

GRAPH_AGGREGATIONS: tuple[str, ...] = ("mean", "attention")


class EntityEncoder(nn.Module):
    """Per-item entity vectors from padded link arrays (``recdata.graph.graph_arrays``).

    ``item_entity`` / ``item_relation`` (n_items, K) int64, -1 = padding, are buffers (saved with
    the tower); ``entity_init`` (n_entities, d_text) the text vectors of the entity names.
    """

    def __init__(
        self,
        entity_names: Sequence[str],
        relation_names: Sequence[str],
        item_entity: np.ndarray | torch.Tensor,
        item_relation: np.ndarray | torch.Tensor,
        d_text: int,
        out_dim: int,
        agg: str = "mean",
        attn_dim: int = 64,
        entity_init: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if agg not in GRAPH_AGGREGATIONS:
            raise TowerError(f"graph_agg= must be one of {list(GRAPH_AGGREGATIONS)}, got {agg!r}")
        item_entity = torch.as_tensor(np.asarray(item_entity), dtype=torch.long)
        item_relation = torch.as_tensor(np.asarray(item_relation), dtype=torch.long)
        n_ent, n_rel = len(entity_names), len(relation_names)
        if (item_entity.dim() != 2 or item_entity.shape != item_relation.shape
                or int(item_entity.max() if item_entity.numel() else -1) >= n_ent
                or int(item_relation.max() if item_relation.numel() else -1) >= n_rel
                or bool(((item_entity < 0) != (item_relation < 0)).any())):
            raise TowerError(f"item_entity and item_relation must be (n_items, K) int64 arrays of "
                             f"the same shape with indices < {n_ent} entities / {n_rel} relations "
                             f"and -1 padding at the same places; got shapes "
                             f"{tuple(item_entity.shape)}, {tuple(item_relation.shape)}")
        self.entity_names, self.relation_names = list(entity_names), list(relation_names)
        self.entity_index = {name: n for n, name in enumerate(self.entity_names)}
        self.relation_index = {name: n for n, name in enumerate(self.relation_names)}
        self.agg = agg
        self.entity_emb = nn.Embedding(max(1, n_ent), d_text)
        if entity_init is not None:
            if tuple(entity_init.shape) != (n_ent, d_text):
                raise TowerError(f"entity_init must be (n_entities={n_ent}, d_text={d_text}); got "
                                 f"{tuple(entity_init.shape)}")
            with torch.no_grad():
                self.entity_emb.weight[:n_ent].copy_(entity_init)
        self.relation_emb = nn.Embedding(max(1, n_rel), d_text)
        nn.init.zeros_(self.relation_emb.weight)
        self.proj = nn.Linear(d_text, out_dim, bias=False)
        nn.init.zeros_(self.proj.weight)  # starts as the text tower: the graph part is 0
        if agg == "attention":
            self.relation_bias = nn.Embedding(max(1, n_rel), 1)
            nn.init.zeros_(self.relation_bias.weight)
            self.query = nn.Linear(d_text, attn_dim, bias=False)
            self.key = nn.Linear(d_text, attn_dim, bias=False)
        self.register_buffer("item_entity", item_entity)
        self.register_buffer("item_relation", item_relation)

    @property
    def n_items(self) -> int:
        return int(self.item_entity.shape[0])

    def links_of(self, pairs: Sequence[Sequence[tuple[str, str]]]) -> tuple[torch.Tensor,
                                                                            torch.Tensor]:
        """Padded (n, K) entity and relation indices of (relation, entity) name pairs per item;
        names this graph does not know are ignored (an unknown brand has learned nothing)."""
        rows = [[(self.entity_index[e], self.relation_index[r]) for r, e in links
                 if e in self.entity_index and r in self.relation_index] for links in pairs]
        width = max(1, max((len(r) for r in rows), default=1))
        ent = torch.full((len(rows), width), -1, dtype=torch.long)
        rel = torch.full((len(rows), width), -1, dtype=torch.long)
        for n, links in enumerate(rows):
            if links:
                ent[n, : len(links)] = torch.tensor([e for e, _ in links])
                rel[n, : len(links)] = torch.tensor([r for _, r in links])
        device = self.item_entity.device
        return ent.to(device), rel.to(device)

    def weights(self, text_emb: torch.Tensor, ent: torch.Tensor, rel: torch.Tensor
                ) -> torch.Tensor:
        """Aggregation weights (n, K) of each item's links (0 on padding; rows without links
        all 0): uniform for ``mean``, a softmax over links for ``attention``."""
        valid = ent >= 0  # (n, K)
        if self.agg == "mean":
            return valid.float() / valid.sum(dim=1, keepdim=True).clamp(min=1)
        keys = (self.key(self.entity_emb.weight)[ent.clamp(min=0)]
                + self.key(self.relation_emb.weight)[rel.clamp(min=0)])  # (n, K, attn_dim)
        logits = torch.einsum("na,nka->nk", self.query(text_emb), keys)
        logits = logits / math.sqrt(self.query.out_features)
        logits = logits + self.relation_bias(rel.clamp(min=0)).squeeze(-1)
        attn = torch.softmax(logits.masked_fill(~valid, float("-inf")), dim=1)
        return torch.nan_to_num(attn, nan=0.0) * valid  # rows without links -> 0

    def forward(self, text_emb: torch.Tensor, item_idx: torch.Tensor | None = None,
                links: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Graph part (n, out_dim) of items given by catalogue index, or by ``links`` (padded
        entity/relation indices, e.g. from :meth:`links_of` for new items)."""
        if links is None:
            if item_idx is None:
                raise TowerError("the entity part needs item indices or explicit links")
            ent, rel = self.item_entity[item_idx], self.item_relation[item_idx]
        else:
            ent, rel = links
        weights = self.weights(text_emb, ent, rel)  # (n, K), 0 on padding
        # weighted sums without an (n, K, d_text) tensor: one embedding bag per item
        pooled = (F.embedding_bag(ent.clamp(min=0), self.entity_emb.weight,
                                  per_sample_weights=weights, mode="sum")
                  + F.embedding_bag(rel.clamp(min=0), self.relation_emb.weight,
                                    per_sample_weights=weights, mode="sum"))  # (n, d_text)
        return self.proj(pooled)

    # ---- explanation (engine) ---------------------------------------------------------------
    @torch.no_grad()
    def explain_inputs(self, text_emb: torch.Tensor, item_idx: torch.Tensor | None = None,
                       links: tuple[torch.Tensor, torch.Tensor] | None = None
                       ) -> dict[str, torch.Tensor]:
        """Per item its links (entity, relation (n, K)) and their weights (n, K); with
        :meth:`link_outputs` a caller splits an item's graph part into one term per link."""
        ent, rel = links if links is not None else (self.item_entity[item_idx],
                                                    self.item_relation[item_idx])
        return {"entity": ent, "relation": rel, "weight": self.weights(text_emb, ent, rel)}

    @torch.no_grad()
    def link_outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(entity outputs (n_entities, out_dim), relation outputs (n_relations, out_dim)): the
        graph part of an item is sum_k weight_k * (entity_out[e_k] + relation_out[r_k])."""
        return (self.proj(self.entity_emb.weight[: len(self.entity_names)]),
                self.proj(self.relation_emb.weight[: len(self.relation_names)]))

    def names(self) -> dict[str, list[str]]:
        return {"entities": self.entity_names, "relations": self.relation_names}


def build_entity_encoder(
    item_graph: Any, agg: str, n_items: int, d_text: int, out_dim: int,
    encode: Callable[[list[str]], torch.Tensor] | None = None,
) -> EntityEncoder:
    """The entity part of an item tower from ``item_graph`` (``recdata.graph.GraphArrays`` or a
    dict of its fields); ``encode`` (names -> text vectors) initialises the entity vectors (at
    load time the saved weights replace them, so none is needed)."""
    if item_graph is None:
        raise TowerError("tower.graph=true needs the catalogue's entity links (item_graph=: "
                         "train.py builds them from data.graph); or set tower.graph=false")
    get = item_graph.get if isinstance(item_graph, Mapping) else partial(getattr, item_graph)
    names = list(get("entity_names"))
    if len(get("item_entity")) != n_items:
        raise TowerError(f"item_graph has links for {len(get('item_entity'))} items, the tower "
                         f"holds {n_items}")
    init = encode(names) if encode is not None and names else None
    return EntityEncoder(names, list(get("relation_names")), get("item_entity"),
                         get("item_relation"), d_text, out_dim, agg, entity_init=init)


@torch.no_grad()
def graph_explanation(tower: Any, texts: Sequence[str] | None = None,
                      links: Sequence[Sequence[tuple[str, str]]] | None = None
                      ) -> dict[str, Any] | None:
    """What splits each item's score into one term per entity link (None without a graph):
    ``entity``, ``relation``, ``weight`` (n, K) — the weight already divided by the item's
    pre-normalisation norm, so that ``user . sum_k weight_k (entity_out[e_k] +
    relation_out[r_k])`` is the graph part's share of the item's score — for every catalogue
    item of ``tower`` (an ItemTower), or for new ``texts`` with their ``links``; plus
    ``entity_out``, ``relation_out`` (numpy) and the entity / relation names."""
    graph: EntityEncoder | None = tower.graph
    if graph is None:
        return None
    if texts is None:
        idx = torch.arange(tower.n_items, device=tower.base_item_emb.device)
        base, pairs = tower.base_item_emb, None
    else:
        idx, base = None, tower._encode_base(list(texts))
        pairs = graph.links_of(links or [[] for _ in texts])
    info = graph.explain_inputs(base, idx, pairs)
    norm = tower._unnormalised(base, idx, pairs).norm(dim=-1, keepdim=True).clamp(min=1e-12)
    entity_out, relation_out = graph.link_outputs()
    out = {"entity": info["entity"], "relation": info["relation"],
           "weight": info["weight"] / norm, "entity_out": entity_out,
           "relation_out": relation_out}
    return {**{k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy()
               for k, v in out.items()}, **graph.names()}
