"""``python train.py [stage=towers|reranker|ranker|all|towers+ranker] tower=bert data=...``

Thin entry script: Hydra composes ``conf/train.yaml`` with the overrides, and
``pipeline.run_stages`` runs the stages (``pipeline.towers_stage``: the towers, catalogue and
index; ``pipeline.reranker_stage``: the cross-encoder and its policy; ``pipeline.ranker_stage``:
the LightGBM ranker) into ``artifacts/<run_name>/`` (docs/architecture.md). Bad input is one
``error:`` line and exit 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import pipeline.config  # noqa: F401  (registers the minilm_path resolver the configs use)
from pipeline import STAGES, run_stages

log = logging.getLogger("train")
__all__ = ["STAGES", "main", "run_stages"]


@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"),
            config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.errors import InstantiationException

    try:
        run_stages(cfg)
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
