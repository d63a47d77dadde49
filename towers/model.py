"""``TwoTowerModel``: the item tower and the user tower together, for training and inference.

Training code passes index batches (``towers.data.build_tensors``); the engine passes session
JSON to ``user_emb_from_events``, which embeds unknown query texts and inline new items on the
fly through the item tower's BERT + adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from recdata.schema import Event
from towers.data import session_tensors
from towers.errors import TowerError
from towers.user_tower import UserTower

log = logging.getLogger(__name__)

ItemLookup = Callable[[torch.Tensor], torch.Tensor]  # item indices (n,) -> vectors (n, dim)


class TwoTowerModel(nn.Module):
    """``item_tower`` (ItemTower or IdItemTower) + ``user_tower`` sharing one vector space.

    ``item_ids`` (catalogue order) maps the ids in session JSON to item indices.
    """

    def __init__(
        self, item_tower: nn.Module, user_tower: UserTower, item_ids: Sequence[str] | None = None
    ) -> None:
        super().__init__()
        if item_tower.dim != user_tower.dim:
            raise TowerError(f"the user tower's dim ({user_tower.dim}) must equal the item "
                             f"tower's output dim ({item_tower.dim}); set both from one "
                             "embedding_dim")
        if item_ids is not None and len(item_ids) != item_tower.n_items:
            raise TowerError(f"item_ids has {len(item_ids)} ids but the item tower holds "
                             f"{item_tower.n_items} items")
        self.item_tower = item_tower
        self.user_tower = user_tower
        self.item_ids = [str(i) for i in item_ids] if item_ids is not None else None
        self.item_index = {i: n for n, i in enumerate(self.item_ids or [])}

    @property
    def dim(self) -> int:
        return self.user_tower.dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def fingerprint(self) -> str:
        """The item tower's fingerprint: what an index built from its vectors must match."""
        return self.item_tower.fingerprint()

    def event_emb(
        self,
        hist_item_idx: torch.Tensor,
        text_idx: torch.Tensor,
        item_lookup: ItemLookup,
        text_lookup: ItemLookup,
    ) -> torch.Tensor:
        """Event vectors (B, L, dim): item vectors where ``hist_item_idx >= 0``, text vectors
        where ``text_idx >= 0``, zeros elsewhere (padding)."""
        batch, seq = hist_item_idx.shape
        out = torch.zeros(batch, seq, self.dim, device=hist_item_idx.device)
        is_item, is_text = hist_item_idx >= 0, text_idx >= 0
        if bool(is_item.any()):
            out = out.index_put((is_item,), item_lookup(hist_item_idx[is_item]).to(out.dtype))
        if bool(is_text.any()):
            out = out.index_put((is_text,), text_lookup(text_idx[is_text]).to(out.dtype))
        return out

    def event_vectors(
        self,
        hist_item_idx: torch.Tensor,
        text_idx: torch.Tensor,
        item_lookup: ItemLookup,
        text_lookup: ItemLookup,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each distinct event vector once: ``vectors`` (V, dim) = the batch's distinct items,
        then its distinct texts, then one zero row (padding), and ``event_index`` (B, L) into it.
        ``vectors[event_index]`` equals ``event_emb(...)``, but the lookups (the adapter, when
        ``item_lookup`` runs it) see each distinct item once per batch, not once per event."""
        is_item, is_text = hist_item_idx >= 0, text_idx >= 0
        item_uniq, item_inv = torch.unique(hist_item_idx[is_item], return_inverse=True)
        text_uniq, text_inv = torch.unique(text_idx[is_text], return_inverse=True)
        parts = [item_lookup(item_uniq)] if len(item_uniq) else []
        if len(text_uniq):
            parts.append(text_lookup(text_uniq))
        dtype = parts[0].dtype if parts else torch.float32
        parts.append(torch.zeros(1, self.dim, dtype=dtype, device=hist_item_idx.device))
        vectors = torch.cat([p.to(dtype) for p in parts])  # (V, dim), last row = padding
        event_index = torch.full_like(hist_item_idx, len(vectors) - 1)  # (B, L)
        event_index[is_item] = item_inv
        event_index[is_text] = text_inv + len(item_uniq)
        return vectors, event_index

    def user_emb(
        self, batch: Mapping[str, torch.Tensor], item_lookup: ItemLookup | None = None
    ) -> torch.Tensor:
        """User vectors (B, dim) of a ``build_tensors`` batch. ``item_lookup`` maps history item
        indices to vectors (default: the item tower's table, which is BERT-free); it and the
        user tower's projection run once per distinct item of the batch."""
        lookup = item_lookup or (lambda idx: self.item_tower.item_emb(idx, from_table=True))
        vectors, event_index = self.event_vectors(batch["hist_item_idx"],
                                                  batch["hist_query_idx"], lookup,
                                                  self.item_tower.query_emb)
        return self.user_tower.forward_indexed(vectors, event_index, batch["hist_type"],
                                               batch["hist_len"])

    def all_item_emb(self) -> torch.Tensor:
        """Every catalogue item's vector (n_items, dim)."""
        return self.item_tower.all_item_emb()

    @torch.no_grad()
    def catalogue_item_emb(self) -> np.ndarray:
        """Every catalogue item's vector as float32 (n_items, dim), for building the index."""
        self.eval()
        return self.item_tower.all_item_emb().float().cpu().numpy()

    @torch.no_grad()
    def item_emb_from_texts(self, texts: Sequence[str],
                            links: Sequence[Sequence[tuple[str, str]]] | None = None
                            ) -> np.ndarray:
        """Vectors (n, dim) float32 of new items from their text (no ID part) and, with a graph
        item tower, the entities their ``links`` name ((relation, entity) pairs per item)."""
        self.eval()
        if links is None or getattr(self.item_tower, "graph", None) is None:
            return self.item_tower.encode_texts(list(texts)).float().cpu().numpy()
        return self.item_tower.encode_texts(list(texts), list(links)).float().cpu().numpy()

    @torch.no_grad()
    def user_emb_from_events(
        self, sessions: Sequence[Sequence[Event]], unknown_items: str = "error",
    ) -> np.ndarray:
        """User vectors (n, dim) float32 for typed sessions (``recdata.schema.Event`` lists).
        Query texts and inline items are encoded once per call; raises EmptySessionError for a
        session with no usable event."""
        if self.item_ids is None:
            raise TowerError("this model has no item_ids, so session item ids cannot be mapped")
        self.eval()
        inputs = session_tensors(sessions, self.item_index, self.user_tower.max_seq_len,
                                 unknown_items)
        device = self.device
        text_vecs = torch.zeros(len(inputs.texts), self.dim, device=device)
        if inputs.texts:
            if self.item_tower.supports_text:
                text_vecs = self.item_tower.encode_texts(inputs.texts).to(device)
            elif inputs.inline_items:
                self.item_tower.encode_texts(inputs.texts)  # raises the tower's clear error
        events = self.event_emb(inputs.hist_item_idx.to(device), inputs.hist_text_idx.to(device),
                                lambda idx: self.item_tower.item_emb(idx, from_table=True),
                                lambda idx: text_vecs[idx])
        user = self.user_tower(events, inputs.hist_type.to(device), inputs.hist_len.to(device))
        return user.float().cpu().numpy()
