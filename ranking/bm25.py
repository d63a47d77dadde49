"""``BM25Index``: BM25 (bm25s, Lucene variant) over item texts, addressed by item id.

bm25s has no incremental update, so a live add or remove builds a new index over the current
catalogue (``rebuilt``); building 4k texts takes well under a second, and a catalogue snapshot
keeps the old index until the new one is swapped in. Saved as bm25s's own numpy/json files plus
``ids.json`` (no pickle).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

STOPWORDS = "en"
IDS_FILE = "ids.json"


class BM25Error(ValueError):
    """A missing or damaged BM25 directory, or bad input."""


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased word tokens without English stop words (bm25s's tokenizer)."""
    import bm25s

    return bm25s.tokenize(list(texts), stopwords=STOPWORDS, return_ids=False,
                          show_progress=False)


class BM25Index:
    """BM25 scores of a query text against every indexed item (``ids`` order)."""

    def __init__(self, ids: Sequence[str], retriever: object, k1: float, b: float) -> None:
        self.ids = list(ids)
        self.position = {item_id: n for n, item_id in enumerate(self.ids)}
        self._bm25 = retriever
        self.k1, self.b = k1, b

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str], k1: float = 1.5, b: float = 0.75
              ) -> BM25Index:
        import bm25s

        if len(ids) != len(texts) or not len(ids):
            raise BM25Error(f"BM25Index.build needs one text per id and at least one item; got "
                            f"{len(ids)} ids and {len(texts)} texts")
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index(bm25s.tokenize(list(texts), stopwords=STOPWORDS, show_progress=False),
                        show_progress=False)
        return cls(ids, retriever, k1, b)

    def __len__(self) -> int:
        return len(self.ids)

    def scores(self, query_tokens: Sequence[str]) -> np.ndarray:
        """BM25 of one tokenised query against every item, (len(ids),) float64; zeros when no
        token is in the vocabulary."""
        if not query_tokens:
            return np.zeros(len(self.ids))
        return np.asarray(self._bm25.get_scores(list(query_tokens)), dtype=np.float64)

    def save(self, directory: str | Path) -> Path:
        """Write into ``directory`` (a fresh, empty folder the caller publishes atomically)."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        self._bm25.save(str(target), show_progress=False)
        (target / IDS_FILE).write_text(json.dumps({"ids": self.ids, "k1": self.k1,
                                                   "b": self.b}))
        return target

    @classmethod
    def load(cls, directory: str | Path) -> BM25Index:
        import bm25s

        source = Path(directory)
        try:
            meta = json.loads((source / IDS_FILE).read_text())
            retriever = bm25s.BM25.load(str(source), mmap=False, allow_pickle=False,
                                        show_progress=False)
        except (OSError, ValueError, KeyError) as err:
            raise BM25Error(f"{source} is not a readable BM25 index ({type(err).__name__}: "
                            f"{err}); rebuild it with build_index.py") from None
        ids = meta.get("ids")
        n_docs = int(retriever.scores["num_docs"])
        if not isinstance(ids, list) or len(ids) != n_docs:
            raise BM25Error(f"{source}/{IDS_FILE} lists {len(ids or [])} ids for {n_docs} "
                            "indexed documents; rebuild it with build_index.py")
        return cls(ids, retriever, float(meta.get("k1", 1.5)), float(meta.get("b", 0.75)))
