"""Vectors for the engine: sessions -> user vectors (and each event's vector, for "because"),
and the whole catalogue -> item vectors for the index.

``SessionEncoder`` is ``TwoTowerModel.user_emb_from_events`` opened up: it returns the event
vectors it built (so explanations cost no second BERT pass) and keeps an LRU cache of text
vectors, so a repeated search query or inline item costs no BERT pass at all.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from towers import TwoTowerModel, session_tensors


class SessionEncoder:
    """User vectors for sessions in the towers' JSON event shape (``{"type", "item_id"}``,
    ``{"type": "search", "query"}``, ``{"type", "item": {...}}``), every item id known to the
    towers (the engine resolves ids before calling)."""

    def __init__(self, model: TwoTowerModel, text_cache_size: int = 4096) -> None:
        self.model = model.eval()
        self.text_cache_size = int(text_cache_size)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._pinned: dict[str, torch.Tensor] = {}  # live-added items' texts -> indexed vector
        self._cache_lock = threading.Lock()

    def pin(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Use ``vectors`` (n, dim) for these item texts from now on: a live-added item in a
        session then reads exactly the vector the index holds for it (with a graph tower that
        includes its entity part, which its text alone does not give)."""
        device = self.model.device
        with self._cache_lock:
            pinned = dict(self._pinned)
            for text, vec in zip(texts, np.asarray(vectors, dtype=np.float32)):
                pinned[text] = torch.from_numpy(vec.copy()).to(device)
            self._pinned = pinned

    def unpin(self, texts: Sequence[str]) -> None:
        with self._cache_lock:
            self._pinned = {t: v for t, v in self._pinned.items() if t not in set(texts)}

    @property
    def max_seq_len(self) -> int:
        return self.model.user_tower.max_seq_len

    @property
    def supports_text(self) -> bool:
        """False for an ID-only item tower: it cannot read queries or inline items."""
        return bool(getattr(self.model.item_tower, "supports_text", False))

    def text_emb(self, texts: Sequence[str]) -> torch.Tensor:
        """Vectors (n, dim) of texts (queries, inline items) through BERT + adapter, cached."""
        device = self.model.device
        with self._cache_lock:
            cached = {t: self._text_cache[t] for t in texts if t in self._text_cache}
            for text in cached:
                self._text_cache.move_to_end(text)
            cached.update({t: self._pinned[t] for t in texts if t in self._pinned})
        missing = [t for t in dict.fromkeys(texts) if t not in cached]
        if missing:
            fresh = self.model.item_tower.encode_texts(missing).to(device)  # (m, dim)
            with self._cache_lock:
                for text, vec in zip(missing, fresh):
                    cached[text] = vec
                    self._text_cache[text] = vec
                while len(self._text_cache) > self.text_cache_size:
                    self._text_cache.popitem(last=False)
        if not texts:
            return torch.zeros(0, self.model.dim, device=device)
        return torch.stack([cached[t] for t in texts])

    @torch.inference_mode()
    def encode(
        self, sessions: Sequence[Sequence[Mapping[str, Any]]]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """(user_emb (n, dim) float32, per session its events' vectors (len_i, dim) float32, in
        event order). Sessions must be non-empty and at most ``max_seq_len`` long."""
        model = self.model
        inputs = session_tensors(sessions, model.item_index, self.max_seq_len, "error")
        text_vecs = self.text_emb(inputs.texts)  # (T, dim)
        device = model.device

        def item_lookup(idx: torch.Tensor) -> torch.Tensor:
            return model.item_tower.item_emb(idx, from_table=True)

        event_emb = model.event_emb(inputs.hist_item_idx.to(device),
                                    inputs.hist_text_idx.to(device), item_lookup,
                                    lambda idx: text_vecs[idx])  # (n, L, dim)
        lengths = inputs.hist_len.to(device)
        user_emb = model.user_tower(event_emb, inputs.hist_type.to(device), lengths)  # (n, dim)
        event_np = event_emb.float().cpu().numpy()
        per_session = [event_np[row, :n] for row, n in enumerate(inputs.hist_len.tolist())]
        return user_emb.float().cpu().numpy(), per_session


@torch.inference_mode()
def encode_catalogue(
    model: TwoTowerModel,
    item_ids: Sequence[str],
    item_texts: Sequence[str],
    batch_size: int = 256,
    progress: bool = True,
    links: Sequence[list[tuple[str, str]]] | None = None,
) -> np.ndarray:
    """Item vectors (n, dim) float32 for the catalogue, in the order of ``item_ids``.

    Items the towers were trained on come from the item tower's table (the frozen-encoder
    vectors saved with the towers, through the adapter and ID part: no BERT pass); items added
    later are encoded from ``item_texts`` alone (``TwoTowerModel.item_emb_from_texts``), plus,
    with a graph tower, their ``links`` (per item, (relation, entity) pairs; used for those only).
    """
    if len(item_ids) != len(item_texts):
        raise ValueError(f"item_ids ({len(item_ids)}) and item_texts ({len(item_texts)}) must "
                         "have one entry per item")
    model.eval()
    known = np.array([model.item_index.get(str(i), -1) for i in item_ids], dtype=np.int64)
    out = np.zeros((len(item_ids), model.dim), np.float32)  # (n, dim)
    batch_size = max(1, int(batch_size))
    tower_rows = np.flatnonzero(known >= 0)
    text_rows = np.flatnonzero(known < 0)
    batches = [("towers", tower_rows[lo:lo + batch_size])
               for lo in range(0, len(tower_rows), batch_size)]
    batches += [("text", text_rows[lo:lo + batch_size])
                for lo in range(0, len(text_rows), batch_size)]
    for source, rows in tqdm(batches, desc="encode catalogue", unit="batch", disable=not progress):
        if source == "towers":
            idx = torch.from_numpy(known[rows]).to(model.device)
            out[rows] = model.item_tower.item_emb(idx, from_table=True).float().cpu().numpy()
        else:
            out[rows] = model.item_emb_from_texts(
                [item_texts[r] for r in rows],
                [links[r] for r in rows] if links is not None else None)
    return out
