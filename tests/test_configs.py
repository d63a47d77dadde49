"""Every choice of every config group composes, and the library parts instantiate from it."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import pipeline.config  # noqa: F401  (registers the minilm_path resolver)

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
          for group in ("data", "tower", "user", "loss", "trainer", "logger", "rerank",
                        "experiment")}


def _compose(overrides: list[str], name: str = "train"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=True)


def _within(own: dict, composed: dict) -> bool:
    """Every key the file sets holds its value in the composed node (nodes compared key by
    key: a file overriding part of an inherited node leaves the node's other keys)."""
    return all(_within(value, composed.get(key) or {}) if isinstance(value, dict)
               else composed.get(key) == value for key, value in own.items())


@pytest.mark.parametrize("group, choice", [(g, c) for g, cs in GROUPS.items() for c in cs])
def test_every_choice_composes(group: str, choice: str) -> None:
    cfg = _compose([f"{group}={choice}"])
    if group == "experiment":  # an experiment bundles overrides on top of a data choice
        expected = {"amazon_scientific": "amazon_scientific", "demo": "synthetic",
                    "movielens": "movielens"}
        assert cfg.data.name == expected[choice]
        return
    # the choice took effect: the composed node holds exactly what its file says (unresolved),
    # and it resolves (the towers' model path resolver aside)
    own = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{choice}.yaml"), resolve=False)
    composed = OmegaConf.to_container(cfg[group], resolve=False)
    for base in own.pop("defaults", []):  # a group file inheriting its group's shared base
        if isinstance(base, str) and base.endswith("@_here_"):
            shared = OmegaConf.load(CONF / group / f"{base.split('@')[0]}.yaml")
            own = OmegaConf.to_container(OmegaConf.merge(shared, own), resolve=False)
    assert own and _within(own, composed)
    OmegaConf.to_container(cfg[group], resolve=group != "tower" or choice == "id")


@pytest.mark.parametrize("choice", GROUPS["user"])
def test_user_towers_instantiate(choice: str) -> None:
    cfg = _compose([f"user={choice}"])
    tower = hydra.utils.instantiate(cfg.user, dim=16)
    assert tower.dim == 16 and tower.max_seq_len == cfg.train.max_seq_len


@pytest.mark.parametrize("choice", GROUPS["loss"])
def test_losses_instantiate(choice: str) -> None:
    loss = hydra.utils.instantiate(_compose([f"loss={choice}"]).loss)
    assert loss.temperature == pytest.approx(0.07)


def test_id_and_tiny_towers_instantiate(tmp_path: Path) -> None:
    texts = ["red kettle", "blue mug", "green lamp"]
    id_tower = hydra.utils.instantiate(_compose(["tower=id", "embedding_dim=8"]).tower,
                                       item_texts=texts)
    assert id_tower.dim == 8 and id_tower.n_items == 3
    cfg = _compose(["tower=tiny", f"artifacts_dir={tmp_path}", f"cache_dir={tmp_path}/c"])
    tiny = hydra.utils.instantiate(cfg.tower, item_texts=texts)
    assert tiny.n_items == 3 and tiny.all_item_emb().shape == (3, tiny.dim)
    assert tiny.mode == "frozen" and not tiny.trainable_parameter_names()[0].startswith("bert.")
    lora = hydra.utils.instantiate(_compose(["tower=tiny", f"artifacts_dir={tmp_path}",
                                             "tower.finetune.mode=lora", "tower.finetune.lora_r=2",
                                             f"cache_dir={tmp_path}/c"]).tower, item_texts=texts)
    assert lora.mode == "lora" and lora.config["finetune"]["lora_r"] == 2
    assert any("lora_" in name for name in lora.trainable_parameter_names())


@pytest.mark.parametrize("choice", GROUPS["trainer"])
def test_trainers_instantiate(choice: str) -> None:
    cfg = _compose([f"trainer={choice}"])
    if choice == "gpu":
        import torch

        if not torch.cuda.is_available():
            assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
            return
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("choice", GROUPS["logger"])
def test_loggers_instantiate_offline(choice: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = _compose([f"logger={choice}", f"artifacts_dir={tmp_path}"])
    from pipeline.towers_stage import _logger

    logger = _logger(cfg)
    if choice == "none":
        assert logger is False
        return
    logger.log_metrics({"val/recall_at_10": 0.5}, step=0)
    logger.finalize("success")
    if choice == "wandb":
        assert cfg.logger.offline is True
        assert any(tmp_path.rglob("*.wandb")), "wandb wrote no offline run file"


def test_stats_and_build_index_configs_compose() -> None:
    assert _compose(["data=movielens"], name="stats").data.split.protocol == "time"
    if (CONF / "build_index.yaml").exists():
        assert "index" in _compose([], name="build_index")


def _defaults(fn) -> dict:
    import inspect

    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("choice", GROUPS["loss"])
def test_loss_code_defaults_equal_the_config(choice: str) -> None:
    """A loss built in code without arguments behaves as the config's: same defaults."""
    node = OmegaConf.to_container(OmegaConf.load(CONF / "loss" / f"{choice}.yaml"))
    target = hydra.utils.get_class(node.pop("_target_"))
    defaults = _defaults(target.__init__)
    assert {key: defaults.get(key) for key in node} == node


@pytest.mark.parametrize("choice", sorted(p.stem for p in (CONF / "index").glob("*.yaml")))
def test_index_code_defaults_equal_the_config(choice: str) -> None:
    from index import KINDS, CatalogueIndex

    node = OmegaConf.to_container(OmegaConf.load(CONF / "index" / f"{choice}.yaml"))
    assert node["kind"] in KINDS
    defaults = _defaults(CatalogueIndex.__init__)
    settings = {k: v for k, v in node.items() if k not in ("kind", "nlist", "pq_m")}
    assert {key: defaults.get(key) for key in settings} == settings


def test_module_and_callbacks_instantiate_from_conf(tmp_path: Path) -> None:
    import torch
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from towers import FullSoftmaxLoss, IdItemTower, TwoTowerModule, UserTower

    cfg = _compose([f"artifacts_dir={tmp_path}", "train.lr=0.003"])
    tower = IdItemTower(dim=8, n_items=5)
    module = hydra.utils.instantiate(cfg.module, item_tower=tower, user_tower=UserTower(8),
                                     loss=FullSoftmaxLoss(), max_steps=10)
    assert isinstance(module, TwoTowerModule) and module.lr == pytest.approx(0.003)
    assert isinstance(module.configure_optimizers()["optimizer"], torch.optim.AdamW)
    sgd = _compose([f"artifacts_dir={tmp_path}", "module.optimizer._target_=torch.optim.SGD",
                    "~module.optimizer.betas"])  # the optimiser is the config's choice
    module = hydra.utils.instantiate(sgd.module, item_tower=tower, user_tower=UserTower(8),
                                     loss=FullSoftmaxLoss(), max_steps=10)
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(group["lr"] == pytest.approx(module.lr) for group in optimizer.param_groups)
    for overrides, factors in (  # the schedule is the config's choice too
            (["train.warmup_ratio=0.5"], [0.2, 0.4, 0.6, 0.8, 1.0]),
            (["module.scheduler._target_=towers.schedules.constant",
              "~module.scheduler.warmup_ratio", "~module.scheduler.min_lr_ratio"], [1.0] * 5)):
        node = _compose([f"artifacts_dir={tmp_path}", *overrides]).module
        module = hydra.utils.instantiate(node, item_tower=tower, user_tower=UserTower(8),
                                         loss=FullSoftmaxLoss(), max_steps=10)
        scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
        assert [f(step) for f in scheduler.lr_lambdas[:1] for step in range(5)] == \
            pytest.approx(factors)
    checkpoint = hydra.utils.instantiate(cfg.callbacks.checkpoint)
    stopping = hydra.utils.instantiate(cfg.callbacks.early_stopping)
    assert isinstance(checkpoint, ModelCheckpoint) and checkpoint.monitor == "val/ndcg_at_10"
    assert isinstance(stopping, EarlyStopping)
    assert stopping.patience == cfg.train.early_stopping_patience
