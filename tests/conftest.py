"""Shared pytest fixtures. Each block belongs to one package's tests; add yours as a new block."""

from __future__ import annotations

import os

import pytest

# ---- towers: tiny random BERT (owner: towers/ + tests/test_towers.py) -------------------------
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # as the CLIs run (quiet_libraries)


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random BERT sentence-transformers model dir (towers.testing.build_tiny_bert)."""
    from towers.testing import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert") / "model")


# ---- end towers ---------------------------------------------------------------------------------


# ---- artifacts: a tiny trained-shaped run directory (owner: engine/ + tests/test_engine.py,
# tests/test_query.py, tests/test_build_index.py) ---------------------------------------------
from pathlib import Path  # noqa: E402 - kept inside this block

TINY_RUN = "tiny"
TINY_RUN_ID = "20250101T000000Z-tiny0001"
TINY_MAX_SEQ_LEN = 8


def _write_tiny_artifacts(root: Path, tiny_bert_path: str) -> None:
    """towers (untrained frozen tiny-BERT item tower + GRU user tower), catalogue.parquet,
    reranker (tiny BERT cross-encoder, random head) and config.yaml of a 120-item shop."""
    import torch

    from engine.artifacts import ArtifactPaths, item_segments, save_catalogue
    from engine.state import run_stamp
    from recdata import catalogue_texts, load_dataset, split_dataset
    from rerank import Reranker
    from towers import ItemTower, TwoTowerModel, UserTower, save_towers

    dataset = load_dataset("synthetic", n_items=120, n_users=60, seed=0)
    split = split_dataset(dataset)
    catalogue = split.catalogue
    texts = catalogue_texts(catalogue)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the untrained adapter and user tower: same artifacts every run
        item_tower = ItemTower(tiny_bert_path, item_texts=texts, finetune=None,
                               show_progress=False)
        user_tower = UserTower(item_tower.dim, max_seq_len=TINY_MAX_SEQ_LEN, dropout=0.0)
    model = TwoTowerModel(item_tower, user_tower, catalogue["item_id"].tolist())
    paths = ArtifactPaths(root)
    save_towers(model, paths.towers,
                extra_meta={"run_id": TINY_RUN_ID, "split_fingerprint": split.fingerprint})
    save_catalogue(root, catalogue, texts, split.item_popularity, item_segments(split))
    Reranker(tiny_bert_path, max_length=32).save(paths.reranker, stamp=run_stamp(paths))
    paths.config.write_text(tiny_config_yaml(base=root.parent))


TINY_OVERRIDES = ["data.options.n_items=120", "data.options.n_users=60", "rerank.policy.top_n=10",
                  "logger=none"]


def tiny_config_yaml(base: Path) -> str:
    """The run's config.yaml as ``train.py`` writes it: ``conf/train.yaml`` composed with the
    tiny run's overrides (the towers' model path left unresolved: it names the real MiniLM)."""
    from omegaconf import OmegaConf

    from pipeline.config import compose

    cfg = compose([*TINY_OVERRIDES, f"run_name={TINY_RUN}", f"artifacts_dir={base}"])
    return OmegaConf.to_yaml(cfg)


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory: pytest.TempPathFactory, tiny_bert_path: str) -> Path:
    """``<tmp>/artifacts/tiny/`` with towers, catalogue.parquet, reranker, config.yaml and a
    flat index built by ``build_index.main``. Read-only: copy it (``artifacts_copy``) to edit."""
    import build_index

    base = tmp_path_factory.mktemp("artifacts")
    root = base / TINY_RUN
    _write_tiny_artifacts(root, tiny_bert_path)
    build_index.main([f"run_name={TINY_RUN}", f"artifacts_dir={base}", "progress=false"])
    return root


@pytest.fixture
def artifacts_copy(tiny_artifacts: Path, tmp_path: Path) -> Path:
    """A private copy of ``tiny_artifacts`` that a test may edit or damage."""
    import shutil

    target = tmp_path / "artifacts" / TINY_RUN
    shutil.copytree(tiny_artifacts, target)
    return target


def _tiny_split():
    from recdata import load_dataset, split_dataset

    return split_dataset(load_dataset("synthetic", n_items=120, n_users=60, seed=0))


@pytest.fixture(scope="session")
def tiny_split():
    """The split the tiny artifacts were made from."""
    return _tiny_split()


@pytest.fixture(scope="session")
def tiny_ranked_artifacts(tmp_path_factory: pytest.TempPathFactory, tiny_artifacts: Path
                          ) -> Path:
    """``tiny_artifacts`` plus a ranker trained by the ranker stage (a few LightGBM rounds).
    Read-only."""
    import shutil

    from omegaconf import OmegaConf

    from pipeline.ranker_stage import train_ranker_for_run

    root = tmp_path_factory.mktemp("ranked") / TINY_RUN
    shutil.copytree(tiny_artifacts, root)
    cfg = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parent.parent / "conf"
                                                / "ranking" / "default.yaml"))
    cfg["lightgbm"].update(num_boost_round=15, min_data_in_leaf=5)
    train_ranker_for_run(root, _tiny_split(), cfg, seed=0)
    return root


# ---- end artifacts ------------------------------------------------------------------------------
