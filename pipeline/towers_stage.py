"""Stage ``towers``: Lightning trains the item tower (BERT over item text, optional entity part)
and the user tower (over the session) with a retrieval loss, validates on full-catalogue
ranking, and writes the run's artifacts (docs/architecture.md): ``towers/`` (with a fresh
``run_id`` and the split fingerprint), the serving state's catalogue, ``metrics.json``."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline.config import load_split

log = logging.getLogger(__name__)


def _logger(cfg: DictConfig) -> Any:
    if cfg.get("logger") is None or cfg.logger.get("_target_") is None:
        return False
    return hydra.utils.instantiate(cfg.logger)


def never_negatives(new_item_mask: Any, item_popularity: Any, exclude_unseen: bool) -> Any:
    """Items kept out of the training softmax: the held-out new items, and with
    ``exclude_unseen`` every item without a training interaction too."""
    return new_item_mask | (item_popularity == 0) if exclude_unseen else new_item_mask


def graph_inputs(cfg: DictConfig, split: Any, item_ids: list[str]) -> dict[str, Any]:
    """The item tower's entity links when ``tower.graph`` (else nothing): ``data.graph``'s
    triples of the split (recdata.graph) as padded arrays in catalogue order."""
    if not cfg.tower.get("graph"):
        return {}
    from recdata.graph import GraphSpec, graph_arrays, split_triples

    spec = GraphSpec.from_dict(OmegaConf.to_container(cfg.data.get("graph"), resolve=True))
    triples, report = split_triples(split, spec)
    arrays = graph_arrays(triples, item_ids, spec.max_links)
    log.info("item graph: %d entities, %d relations, %d links (%s)", len(arrays.entity_names),
             len(arrays.relation_names), int((arrays.item_entity >= 0).sum()), report)
    return {"item_graph": arrays, "graph_spec": spec.to_dict()}


def train_towers(cfg: DictConfig, run_dir: Path, split: Any = None) -> dict[str, Any]:
    import pytorch_lightning as pl
    import torch

    from engine.artifacts import save_catalogue, save_json
    from engine.state import new_run_id
    from towers import SessionDataModule, save_towers

    pl.seed_everything(cfg.seed, workers=True)
    split = split if split is not None else load_split(cfg)
    dm = SessionDataModule(split, batch_size=cfg.train.batch_size,
                           max_seq_len=cfg.train.max_seq_len,
                           eval_batch_size=cfg.train.eval_batch_size, seed=cfg.seed)
    item_tower = hydra.utils.instantiate(cfg.tower, item_texts=dm.item_texts,
                                         query_texts=dm.query_texts,
                                         item_popularity=dm.item_popularity,
                                         **graph_inputs(cfg, split, dm.item_ids))
    user_tower = hydra.utils.instantiate(cfg.user, dim=item_tower.dim)
    steps = cfg.trainer.max_epochs * math.ceil(len(dm.train_tensors["target_idx"])
                                               / cfg.train.batch_size)
    never_negative = never_negatives(dm.new_item_mask, dm.item_popularity,
                                     cfg.train.exclude_unseen_negatives)
    # conf/train.yaml's module and callbacks nodes; what only the data knows is passed here
    module = hydra.utils.instantiate(cfg.module, _partial_=True)(  # objects pass as they are
        item_tower=item_tower, user_tower=user_tower,
        loss=hydra.utils.instantiate(cfg.loss), item_ids=dm.item_ids,
        item_popularity=dm.item_popularity, never_negative_mask=never_negative,
        long_tail_mask=dm.long_tail_mask, valid_examples=dm.valid, test_examples=dm.test,
        max_steps=steps)
    checkpoint = hydra.utils.instantiate(cfg.callbacks.checkpoint,
                                         dirpath=str(run_dir / "checkpoints"))
    stopping = hydra.utils.instantiate(cfg.callbacks.early_stopping)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[checkpoint, stopping],
                                      logger=_logger(cfg), default_root_dir=str(run_dir))
    started = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    train_seconds = time.perf_counter() - started
    if checkpoint.best_model_path:  # our own file, weights only: no unpickling of objects
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(state["state_dict"])
    valid = module.evaluate(dm.valid)
    test = module.evaluate(dm.test)
    run_id = new_run_id()  # every part made from these towers records it (engine.state)
    save_towers(module.model, run_dir / "towers",
                extra_meta={"run_id": run_id, "split_fingerprint": split.fingerprint,
                            "data": cfg.data.name})
    segments = ["new" if p == 0 else "long_tail" if lt else "head"
                for p, lt in zip(dm.item_popularity, dm.long_tail_mask)]
    save_catalogue(run_dir, split.catalogue, dm.item_texts, split.item_popularity, segments)
    metrics = {"stage": "towers", "run_id": run_id, "train_seconds": round(train_seconds, 1),
               "epochs": trainer.current_epoch, "global_steps": trainer.global_step,
               "best_val_ndcg_at_10": float(checkpoint.best_model_score or float("nan")),
               "train_examples": len(dm.train_tensors["target_idx"]),
               "valid": valid, "test": test}
    save_json(run_dir / "metrics.json", metrics)
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        path.unlink()
    return metrics


def summary(metrics: dict[str, Any]) -> str:
    """One readable block of the headline test figures."""
    if "test" not in metrics:
        return json.dumps(metrics, indent=1, default=str)
    overall = metrics["test"]["masked"]["overall"]
    lines = [f"trained {metrics['epochs']} epoch(s) in {metrics['train_seconds']:.0f} s; test "
             f"(history masked): R@10 {overall['recall_at_10']:.4f}  R@50 "
             f"{overall['recall_at_50']:.4f}  NDCG@10 {overall['ndcg_at_10']:.4f}"]
    for name, seg in metrics["test"]["masked"]["by_segment"].items():
        lines.append(f"  {name:<22} n={seg['count']:<6} R@10 {seg['recall_at_10']:.4f}  "
                     f"NDCG@10 {seg['ndcg_at_10']:.4f}")
    return "\n".join(lines)


