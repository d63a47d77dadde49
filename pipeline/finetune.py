"""Warm-start fine-tuning of trained towers on a refresh's examples, and the catalogue vectors
of the result.

The loaded towers keep their frozen BERT (``ItemTower.load`` rebuilds a frozen tower): only the
adapter, the ID part and the user tower train, so the catalogue's BERT vectors stored with the
towers stay valid and re-encoding the catalogue is one adapter pass over them. BERT runs only for
items whose text the towers have not seen: items added live since training, and items whose
text was replaced (``POST /items?upsert=true``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline.refresh_data import RefreshExamples
from recdata.schema import SplitData

log = logging.getLogger(__name__)


def _popularity(model: Any, catalogue: pd.DataFrame, train: pd.DataFrame) -> pd.Series:
    """Training popularity (catalogue.parquet) + the refresh's targets, in the towers' order."""
    trained = catalogue.set_index("item_id")["popularity"].astype(float)
    logged = train["target"].value_counts().astype(float)
    ids = pd.Index(model.item_ids)
    return trained.reindex(ids).fillna(0.0).add(logged.reindex(ids).fillna(0.0))


def fine_tune(model: Any, examples: RefreshExamples, catalogue: pd.DataFrame, *,
              epochs: int = 2, lr: float = 3e-4, batch_size: int = 128,
              temperature: float = 0.07, mask_history: bool = True,
              exclude_unseen: bool = True, seed: int = 0) -> dict[str, Any]:
    """Train ``model`` (a loaded ``TwoTowerModel``) in place on ``examples.train`` for
    ``epochs`` epochs with the full-catalogue softmax; returns what it did, with held-out
    metrics before and after when there is a holdout."""
    import pytorch_lightning as pl

    from towers import FullSoftmaxLoss, SessionDataModule, TwoTowerModule

    pl.seed_everything(seed, workers=True)
    popularity = _popularity(model, catalogue, examples.train)
    split = SplitData(catalogue=pd.DataFrame({"item_id": model.item_ids,
                                              "title": model.item_ids}),
                      train_events=pd.DataFrame(), train=examples.train,
                      valid=examples.holdout, test=examples.holdout,
                      item_popularity=popularity, new_items=frozenset(),
                      long_tail=frozenset())
    data = SessionDataModule(split, batch_size=batch_size,
                             max_seq_len=model.user_tower.max_seq_len, seed=seed)
    never_negative = (popularity.to_numpy() == 0) if exclude_unseen else None
    steps = epochs * math.ceil(len(examples.train) / batch_size)
    module = TwoTowerModule(
        model.item_tower, model.user_tower,
        FullSoftmaxLoss(temperature=temperature, mask_history=mask_history),
        item_ids=model.item_ids, item_popularity=popularity.to_numpy(),
        never_negative_mask=never_negative, lr=lr, max_steps=steps)
    holdout = data.valid if len(examples.holdout) else None
    before = module.evaluate(holdout) if holdout is not None else None
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0)
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=data.train_dataloader())
    seconds = time.perf_counter() - started
    after = module.evaluate(holdout) if holdout is not None else None
    model.eval()

    def headline(result: dict[str, Any] | None) -> dict[str, float] | None:
        if result is None:
            return None
        overall = result["masked"]["overall"]
        return {k: round(float(overall[k]), 4) for k in ("recall_at_10", "ndcg_at_10")}

    return {"epochs": epochs, "steps": int(trainer.global_step), "train_seconds": round(seconds, 1),
            "lr": lr, "holdout_before": headline(before), "holdout_after": headline(after)}


def catalogue_vectors(model: Any, item_ids: Sequence[str], item_texts: Sequence[str],
                      catalogue: pd.DataFrame | None = None, batch_size: int = 256,
                      progress: bool = False) -> tuple[np.ndarray, int]:
    """(vectors (n, dim) float32 in ``item_ids`` order, how many items went through BERT):
    what ``build_index.py`` and the refresh index. Trained items come from the towers' table,
    unless their text changed since training (upserted live: encoded from the new text, as the
    live edit encoded them); items added since training from their text. ``catalogue`` (rows in
    ``item_ids`` order): with a graph tower, the fields that give items added or changed since
    training their entity links."""
    from engine.encoding import encode_catalogue
    from engine.graph import catalogue_links

    table_texts = getattr(model.item_tower, "item_texts", None) or []
    # trained items upserted live with a graph tower keep their links in the catalogue: they
    # were encoded from their text and those links, as build_index.py encodes them
    upserted = (set(catalogue.loc[catalogue["links"].notna(), "item_id"])
                if catalogue is not None and "links" in catalogue.columns else set())
    changed = [n for n, (item_id, text) in enumerate(zip(item_ids, item_texts))
               if item_id in model.item_index and (item_id in upserted or (
                   model.item_index[item_id] < len(table_texts)
                   and table_texts[model.item_index[item_id]] != text))]
    links = (catalogue_links(model, catalogue, [item_ids[n] for n in changed])
             if catalogue is not None else None)
    vectors = encode_catalogue(model, item_ids, item_texts, batch_size, progress, links=links)
    if changed:  # text replaced since training: the table's BERT vector is stale
        vectors[changed] = model.item_emb_from_texts(
            [item_texts[n] for n in changed],
            [links[n] for n in changed] if links is not None else None)
    from_text = sum(1 for i in item_ids if i not in model.item_index) + len(changed)
    return vectors, from_text
