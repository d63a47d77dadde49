"""pipeline: the project's stages as functions of a config -- train the towers
(``towers_stage``), the cross-encoder (``reranker_stage``) and the ranker (``ranker_stage``),
build the index and the ranking stage's parts (``index_stage``, ``ranking_parts``), refresh a
served run from its event log (``refresh``). ``train.py``, ``build_index.py`` and the
benchmarks call these; nothing here imports an entry script (docs/architecture.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline import config as _config  # noqa: F401  (registers the configs' minilm_path)

STAGES = ("towers", "reranker", "ranker", "all")


def train_reranker_stage(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    from pipeline.config import load_split, minilm_path
    from pipeline.reranker_stage import train_reranker_for_run

    return train_reranker_for_run(run_dir, load_split(cfg), cfg.rerank, seed=cfg.seed,
                                  model_path=cfg.rerank.model_path or minilm_path())


def train_ranker_stage(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    from pipeline.config import load_split
    from pipeline.ranker_stage import train_ranker_for_run

    return train_ranker_for_run(run_dir, load_split(cfg),
                                OmegaConf.to_container(cfg.ranking, resolve=True), seed=cfg.seed)


def run_stages(cfg: DictConfig) -> dict[str, Any]:
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
        from pipeline.config import load_split
        from pipeline.towers_stage import summary, train_towers
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


