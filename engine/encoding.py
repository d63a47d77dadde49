"""Vectors for the engine: sessions -> user vectors (and each event's vector, for "because"),
and the whole catalogue -> item vectors for the index.

``SessionEncoder`` is ``TwoTowerModel.user_emb_from_events`` opened up: it returns the event
vectors it built (so explanations cost no second BERT pass) and keeps an LRU cache of text
vectors, so a repeated search query or inline item costs no BERT pass at all.

Bounded work: every text is cut to what the tokenizer can keep (:func:`cap_text`) before it
is encoded or cached; the cache is keyed by the text's hash (not the text) and bounded in bytes.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from recdata.schema import Event
from towers import TwoTowerModel, session_tensors

DEFAULT_MAX_TOKENS = 256  # when the item tower does not say (an ID-only tower reads no text)
CHARS_PER_TOKEN = 32  # a token covers at most this many characters of ordinary text
DEFAULT_CACHE_BYTES = 64 << 20  # 64 MiB of cached text vectors


def max_tokens(model: TwoTowerModel) -> int:
    """The tokenizer limit of the item tower's text encoder (its ``max_seq_length``)."""
    bert = getattr(model.item_tower, "bert", None)
    limit = getattr(bert, "max_seq_length", None)
    return int(limit) if limit else DEFAULT_MAX_TOKENS


def cap_text(text: str, tokens: int) -> str:
    """``text`` cut to ``tokens * CHARS_PER_TOKEN`` characters: past that the tokenizer has
    truncated it already (it keeps ``tokens`` tokens), so the vector is the same and the work
    bounded however long the input."""
    limit = tokens * CHARS_PER_TOKEN
    return text if len(text) <= limit else text[:limit]


class SessionEncoder:
    """User vectors for typed sessions (``recdata.schema.Event`` lists), every item id known to
    the towers (the engine resolves ids before calling)."""

    def __init__(self, model: TwoTowerModel, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.model = model.eval()
        self.cache_bytes = int(cache_bytes)
        self.max_tokens = max_tokens(model)
        self._text_cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._cached_bytes = 0
        # live-added items' texts (keyed like the cache) -> the vector the index holds
        self._pinned: dict[bytes, torch.Tensor] = {}
        self._cache_lock = threading.Lock()

    def _key(self, text: str) -> bytes:
        """The cache key of a text: the hash of the text capped at the tokenizer's limit."""
        capped = cap_text(text, self.max_tokens)
        return hashlib.blake2b(capped.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def pin(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Use ``vectors`` (n, dim) for these item texts from now on: a live-added item in a
        session then reads exactly the vector the index holds for it (with a graph tower that
        includes its entity part, which its text alone does not give). Pinned vectors are
        keyed like the cache (hash of the capped text) and never evicted; ``unpin`` drops
        them."""
        device = self.model.device
        with self._cache_lock:
            pinned = dict(self._pinned)
            for text, vec in zip(texts, np.asarray(vectors, dtype=np.float32)):
                pinned[self._key(text)] = torch.from_numpy(vec.copy()).to(device)
            self._pinned = pinned

    def unpin(self, texts: Sequence[str]) -> None:
        gone = {self._key(t) for t in texts}
        with self._cache_lock:
            self._pinned = {k: v for k, v in self._pinned.items() if k not in gone}

    @property
    def max_seq_len(self) -> int:
        return self.model.user_tower.max_seq_len

    @property
    def supports_text(self) -> bool:
        """False for an ID-only item tower: it cannot read queries or inline items."""
        return bool(getattr(self.model.item_tower, "supports_text", False))

    def _entry_bytes(self, vec: torch.Tensor) -> int:
        return vec.element_size() * vec.nelement() + 64  # + the key and the dict slot

    def cached_bytes(self) -> int:
        """Bytes held by the text-vector cache (at most ``cache_bytes``)."""
        return self._cached_bytes

    def text_emb(self, texts: Sequence[str]) -> torch.Tensor:
        """Vectors (n, dim) of texts (queries, inline items) through BERT + adapter, cached.
        Texts are capped at the tokenizer's limit first (:func:`cap_text`)."""
        device = self.model.device
        if not texts:
            return torch.zeros(0, self.model.dim, device=device)
        capped = [cap_text(t, self.max_tokens) for t in texts]
        keys = [hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest()
                for t in capped]
        with self._cache_lock:
            found = {k: self._text_cache[k] for k in keys if k in self._text_cache}
            for key in found:
                self._text_cache.move_to_end(key)
            found.update({k: self._pinned[k] for k in keys if k in self._pinned})
        missing = {k: t for k, t in zip(keys, capped) if k not in found}
        if missing:
            fresh = self.model.item_tower.encode_texts(list(missing.values())).to(device)
            with self._cache_lock:
                for key, vec in zip(missing, fresh):
                    vec = vec.clone()  # a row view would keep the whole batch alive
                    found[key] = vec
                    if key not in self._text_cache:
                        self._text_cache[key] = vec
                        self._cached_bytes += self._entry_bytes(vec)
                while self._cached_bytes > self.cache_bytes and self._text_cache:
                    _, old = self._text_cache.popitem(last=False)
                    self._cached_bytes -= self._entry_bytes(old)
        return torch.stack([found[k] for k in keys])

    def item_emb(self, texts: Sequence[str],
                 links: Sequence[list[tuple[str, str]]] | None = None) -> np.ndarray:
        """Vectors (n, dim) float32 of new items from their text (capped like queries; not
        cached: an added item's vector goes into the index) and, with a graph tower, their
        ``links`` ((relation, entity) pairs per item)."""
        capped = [cap_text(t, self.max_tokens) for t in texts]
        return self.model.item_emb_from_texts(capped, links)

    def unpin_all(self) -> None:
        with self._cache_lock:
            self._pinned = {}

    @torch.inference_mode()
    def encode(
        self, sessions: Sequence[Sequence[Event]]
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
