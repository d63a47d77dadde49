"""Lightning data plumbing: a SplitData -> indexes, tensors, masks and data loaders."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from recdata.schema import SplitData
from recdata.text import catalogue_texts
from towers.data import build_tensors, history_arrays
from towers.errors import TowerError

log = logging.getLogger(__name__)


class SessionDataset(Dataset):
    """Rows of a ``build_tensors`` dict; a batch is the same dict with a leading batch axis.

    ``__getitems__`` (which DataLoader calls when present) indexes every tensor once per batch
    instead of building one dict per row and stacking them: pass ``collate_fn=collate_batch``.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        sizes = {len(t) for t in tensors.values()}
        if len(sizes) != 1:
            raise TowerError(f"tensors must share their first dimension; got sizes {sizes}")
        self.tensors = dict(tensors)
        self.size = sizes.pop()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        return {name: tensor[row] for name, tensor in self.tensors.items()}

    def __getitems__(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(rows, dtype=torch.long)
        return {name: tensor[index] for name, tensor in self.tensors.items()}


def collate_batch(batch: Any) -> Any:
    """DataLoader ``collate_fn`` for SessionDataset: a batch fetched whole by ``__getitems__``
    passes through; a list of rows (any other fetch path) is stacked as usual."""
    return batch if isinstance(batch, Mapping) else default_collate(batch)


@dataclass
class EvalExamples:
    """A valid/test split ready for full-catalogue evaluation."""

    tensors: dict[str, torch.Tensor]  # build_tensors output; rows may have hist_len 0
    history: list[np.ndarray]  # per row, item indices to mask from the ranking
    segments: dict[str, list[str | None]]  # {"user": [...], "target": [...]} one label per row

    def __len__(self) -> int:
        return len(self.history)


def _queries(frames: list[pd.DataFrame]) -> list[str]:
    seen: dict[str, None] = {}
    for frame in frames:
        if "hist_queries" not in frame.columns:
            continue
        for queries in frame["hist_queries"]:
            for query in queries:
                if isinstance(query, str):
                    seen.setdefault(query, None)
    return list(seen)


def _labels(frame: pd.DataFrame, column: str) -> list[str | None]:
    if column not in frame.columns:
        return [None] * len(frame)
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            for v in frame[column]]


class SessionDataModule(pl.LightningDataModule):
    """Indexes (catalogue order), tensors and loaders of a ``SplitData``, built eagerly so the
    towers can be constructed from its attributes before ``Trainer.fit``:

    ``item_ids``, ``item_index``, ``item_texts`` (recdata.text.catalogue_texts), ``query_texts``,
    ``query_index``, ``item_popularity`` (float64 train counts), ``new_item_mask``,
    ``long_tail_mask`` (bool, n_items), ``train_tensors``, ``valid`` / ``test`` (EvalExamples).

    Training rows with no history are dropped, and so are (defensively) rows whose target is a
    held-out new item; both are counted in a warning.
    """

    def __init__(
        self, split: SplitData, batch_size: int = 128, max_seq_len: int = 50,
        num_workers: int = 0, eval_batch_size: int = 256, seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or max_seq_len < 1 or eval_batch_size < 1:
            raise TowerError(f"batch_size, eval_batch_size and max_seq_len must be >= 1; got "
                             f"{batch_size}, {eval_batch_size}, {max_seq_len}")
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.max_seq_len, self.num_workers, self.seed = int(max_seq_len), num_workers, seed
        catalogue = split.catalogue
        self.item_ids: list[str] = [str(i) for i in catalogue["item_id"]]
        self.item_index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.item_texts = catalogue_texts(catalogue)
        self.query_texts = _queries([split.train, split.valid, split.test])
        self.query_index = {query: i for i, query in enumerate(self.query_texts)}
        popularity = pd.Series(split.item_popularity, dtype="float64")
        popularity.index = popularity.index.astype(str)
        self.item_popularity = popularity.reindex(self.item_ids).fillna(0.0).to_numpy()
        self.new_item_mask = np.array([i in split.new_items for i in self.item_ids], dtype=bool)
        self.long_tail_mask = np.array([i in split.long_tail for i in self.item_ids], dtype=bool)
        self.train_tensors = self._train_tensors(split.train)
        self.valid = self.eval_examples(split.valid)
        self.test = self.eval_examples(split.test)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def _train_tensors(self, train: pd.DataFrame) -> dict[str, torch.Tensor]:
        tensors = build_tensors(train, self.item_index, self.query_index, self.max_seq_len)
        new_target = torch.from_numpy(self.new_item_mask)[tensors["target_idx"]]
        keep = (tensors["hist_len"] > 0) & ~new_target
        if not bool(keep.all()):
            log.warning("dropped %d training row(s): %d with no history, %d with a new-item "
                        "target (new items must not be training targets)", int((~keep).sum()),
                        int((tensors["hist_len"] == 0).sum()), int(new_target.sum()))
        if not bool(keep.any()):
            raise TowerError("no usable training example (every row has an empty history or a "
                             "new-item target)")
        return {name: tensor[keep] for name, tensor in tensors.items()}

    def eval_examples(self, frame: pd.DataFrame) -> EvalExamples:
        """A valid/test frame as EvalExamples (history masks and segment labels included)."""
        return EvalExamples(
            tensors=build_tensors(frame, self.item_index, self.query_index, self.max_seq_len),
            history=history_arrays(frame, self.item_index),
            segments={"user": _labels(frame, "user_segment"),
                      "target": _labels(frame, "target_segment")})

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(SessionDataset(self.train_tensors), batch_size=self.batch_size,
                          shuffle=True, generator=generator, num_workers=self.num_workers,
                          drop_last=len(self.train_tensors["row"]) > self.batch_size,
                          collate_fn=collate_batch)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(SessionDataset(self.valid.tensors), batch_size=self.eval_batch_size,
                          num_workers=self.num_workers, collate_fn=collate_batch)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(SessionDataset(self.test.tensors), batch_size=self.eval_batch_size,
                          num_workers=self.num_workers, collate_fn=collate_batch)
