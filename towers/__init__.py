"""Two-tower retrieval: BERT item tower, behaviour user tower, losses, training, save/load.

Names are imported lazily (``from towers import ItemTower`` loads only what it needs), so that
CLIs importing a small part do not pay for sentence-transformers and Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "TowerError": "towers.errors",
    "EmptySessionError": "towers.errors",
    "encode_cached": "towers.encoder_cache",
    "model_fingerprint": "towers.encoder_cache",
    "ITEM_TOWER_MODES": "towers.item_tower",
    "ItemTower": "towers.item_tower",
    "FineTune": "towers.item_tower",
    "ResidualAdapter": "towers.heads",
    "IdItemTower": "towers.id_tower",
    "USER_ENCODERS": "towers.user_tower",
    "UserTower": "towers.user_tower",
    "InBatchSoftmaxLoss": "towers.losses",
    "FullSoftmaxLoss": "towers.losses",
    "build_tensors": "towers.data",
    "history_arrays": "towers.data",
    "session_tensors": "towers.data",
    "SessionInputs": "towers.data",
    "SessionDataset": "towers.datamodule",
    "SessionDataModule": "towers.datamodule",
    "EvalExamples": "towers.datamodule",
    "TwoTowerModel": "towers.model",
    "TwoTowerModule": "towers.module",
    "save_towers": "towers.io",
    "load_towers": "towers.io",
    "build_tiny_bert": "towers.testing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'towers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
