"""Pair tokenisation for the cross-encoder with the item side cached.

A session's 20 candidates share one context, and the same catalogue items come back for many
sessions, so each item text is tokenised once (kept in a bounded cache) and the context once per
call; the tokenizer's own post-processor then cuts each pair to ``max_length`` (longest side
first, as ``tokenizer(a, b, truncation="longest_first")`` does) and adds ``[CLS]``/``[SEP]`` and
the segment ids. Slow (non-Rust) tokenizers fall back to the plain ``tokenizer(...)`` call.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_CACHE_ITEMS = 200_000


class PairEncoder:
    """``encode(contexts, item_texts)`` -> padded int64 numpy arrays ``input_ids``,
    ``attention_mask``, ``token_type_ids`` of shape (n_pairs, longest pair)."""

    def __init__(self, tokenizer: Any, max_length: int,
                 cache_items: int = DEFAULT_CACHE_ITEMS) -> None:
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.cache_items = int(cache_items)
        self._cache: dict[str, Any] = {}
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = self._raw = None
        if backend is not None:
            self._raw = copy.deepcopy(backend)  # encodes whole texts (cached untruncated)
            self._raw.no_padding()
            self._raw.no_truncation()
            self._backend = copy.deepcopy(self._raw)  # cuts pairs in post_process
            self._backend.enable_truncation(max_length=self.max_length,
                                            strategy="longest_first")
            self._pad_id = int(tokenizer.pad_token_id or 0)

    def _item(self, text: str) -> Any:
        encoding = self._cache.get(text)
        if encoding is None:
            encoding = self._raw.encode(text, add_special_tokens=False)
            if len(self._cache) >= self.cache_items:
                self._cache.pop(next(iter(self._cache)))  # oldest first
            self._cache[text] = encoding
        return encoding

    def pair_lengths(self, context: str, item_texts: Sequence[str]) -> np.ndarray:
        """Untruncated pair lengths in tokens (with the 3 special tokens): what the cap cuts."""
        if self._backend is None:
            ctx = len(self.tokenizer(context, add_special_tokens=False)["input_ids"])
            return np.array([ctx + 3 + len(self.tokenizer(t, add_special_tokens=False)
                                           ["input_ids"]) for t in item_texts])
        ctx = len(self._raw.encode(context, add_special_tokens=False).ids)
        return np.array([ctx + 3 + len(self._item(t).ids) for t in item_texts], dtype=np.int64)

    def encode(self, contexts: Sequence[str], item_texts: Sequence[str]) -> dict[str, np.ndarray]:
        if len(contexts) != len(item_texts):
            raise ValueError(f"one context per item text; got {len(contexts)} contexts and "
                             f"{len(item_texts)} texts")
        if self._backend is None:
            features = self.tokenizer(list(contexts), list(item_texts), padding=True,
                                      truncation="longest_first", max_length=self.max_length,
                                      return_tensors="np")
            return {k: np.asarray(v, dtype=np.int64) for k, v in features.items()}
        context_enc: dict[str, Any] = {}
        pairs = []
        for context, text in zip(contexts, item_texts):
            ctx = context_enc.get(context)
            if ctx is None:
                ctx = context_enc[context] = self._raw.encode(context,
                                                              add_special_tokens=False)
            pairs.append(self._backend.post_process(ctx, self._item(text),
                                                    add_special_tokens=True))
        width = max((len(p.ids) for p in pairs), default=0)
        ids = np.full((len(pairs), width), self._pad_id, dtype=np.int64)
        types = np.zeros((len(pairs), width), dtype=np.int64)
        mask = np.zeros((len(pairs), width), dtype=np.int64)
        for row, pair in enumerate(pairs):
            n = len(pair.ids)
            ids[row, :n], types[row, :n], mask[row, :n] = pair.ids, pair.type_ids, 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
