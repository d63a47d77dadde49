"""Load the parts of one artifacts directory, turning each library's error into one
``ArtifactsError`` line that says which command repairs it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.artifacts import ArtifactPaths
from engine.errors import ArtifactsError

if TYPE_CHECKING:
    from index import CatalogueIndex
    from rerank import Reranker, RerankPolicy
    from towers import TwoTowerModel

log = logging.getLogger(__name__)

POLICY_KEYS: tuple[str, ...] = (
    "mode", "top_n", "cold_max_events", "blend_alpha", "rerank_segments", "standardize",
)


def quiet_libraries() -> None:
    """For CLIs, before torch/transformers are imported: no model-hub calls, no model-loading
    progress bars or info logs on stderr (explicit environment settings win)."""
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                        ("TOKENIZERS_PARALLELISM", "false"), ("TRANSFORMERS_VERBOSITY", "error"),
                        ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(name, value)


def resolve_device(use_gpu: bool | None) -> str:
    """``cuda`` when a GPU is wanted (True) or allowed (None) and torch sees one, else ``cpu``."""
    import torch

    if use_gpu is False:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if use_gpu:
        log.warning("use_gpu=True but torch sees no GPU; running on the CPU")
    return "cpu"


def read_config(paths: ArtifactPaths) -> dict[str, Any]:
    """The run's resolved config.yaml as a dict ({} when absent, with a log line)."""
    if not paths.config.exists():
        log.info("%s is missing: using default rerank policy settings", paths.config)
        return {}
    import yaml

    try:
        config = yaml.safe_load(paths.config.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ArtifactsError(f"{paths.config} is unreadable ({err}); rewrite it with "
                             f"`{paths.command_for('config')}`") from None
    if not isinstance(config, dict):
        raise ArtifactsError(f"{paths.config} must hold a mapping; rewrite it with "
                             f"`{paths.command_for('config')}`")
    return config


def policy_from_config(config: dict[str, Any], tuned: dict[str, Any] | None = None
                       ) -> RerankPolicy:
    """``RerankPolicy`` from the config's ``rerank`` group (conf/rerank/*.yaml keys); ``tuned``
    (chosen on validation by the reranker stage) adds its per-user-group ``rules``
    (``policy.json``) or overrides ``blend_alpha`` (the older ``blend.json``)."""
    from rerank import RerankPolicy

    group = config.get("rerank") or {}
    kwargs = {k: group[k] for k in POLICY_KEYS if isinstance(group, dict) and k in group}
    if tuned and "blend_alpha" in tuned:
        kwargs["blend_alpha"] = float(tuned["blend_alpha"])
    if tuned and "rules" in tuned:
        kwargs["rules"] = tuned["rules"]
    try:
        return RerankPolicy(**kwargs)
    except (TypeError, ValueError) as err:
        raise ArtifactsError(f"config.yaml rerank settings are invalid ({err})") from None


def run_policy(paths: ArtifactPaths) -> RerankPolicy:
    """The run's policy: config.yaml's rerank keys, with what the reranker stage decided on
    validation (``reranker/policy.json``: per user group on/off, candidates, blend weight; or an
    older run's ``reranker/blend.json``) when there is one."""
    tuned = None
    for name in ("policy.json", "blend.json"):
        tuned_file = Path(paths.reranker) / name
        if tuned_file.is_file():
            try:
                tuned = json.loads(tuned_file.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise ArtifactsError(f"{tuned_file} is unreadable ({err}); rewrite it with "
                                     f"`{paths.command_for('reranker')}`") from None
            break
    return policy_from_config(read_config(paths), tuned)


def load_model(paths: ArtifactPaths, device: str) -> TwoTowerModel:
    from towers import TowerError, load_towers

    try:
        return load_towers(paths.towers, device=device)
    except (TowerError, OSError, KeyError) as err:
        raise ArtifactsError(f"cannot load the towers in {paths.towers} ({err}); retrain with "
                             f"`{paths.command_for('towers')}`") from None


def load_index(paths: ArtifactPaths, fingerprint: str, use_gpu: bool | None) -> CatalogueIndex:
    from index import (
        CatalogueIndex,
        IndexCorruptError,
        IndexMismatchError,
        IndexNotFoundError,
    )

    try:
        return CatalogueIndex.load(paths.index, expect={"model_fingerprint": fingerprint},
                                   use_gpu=use_gpu)
    except IndexMismatchError:
        raise ArtifactsError(f"{paths.index} was built from other towers than {paths.towers} "
                             f"(model_fingerprint differs); rebuild it with "
                             f"`{paths.command_for('index')}`") from None
    except (IndexNotFoundError, IndexCorruptError) as err:
        raise ArtifactsError(f"{err}; rebuild the index with "
                             f"`{paths.command_for('index')}`") from None


def load_reranker(paths: ArtifactPaths, device: str) -> Reranker | None:
    """The run's reranker, or None (logged) when the run has none."""
    from rerank import Reranker, RerankError

    if not paths.reranker.exists():
        log.warning("%s is missing: results are not reranked (train one with `%s`)",
                    paths.reranker, paths.command_for("reranker"))
        return None
    try:
        if device != "cpu":  # ONNX and int8 engines are CPU ones: the GPU scores fp32 torch
            return Reranker.load(paths.reranker, device=device, backend="torch",
                                 quantize="none")
        return Reranker.load(paths.reranker, device=device)
    except (RerankError, OSError) as err:
        raise ArtifactsError(f"cannot load the reranker in {paths.reranker} ({err}); retrain "
                             f"it with `{paths.command_for('reranker')}`") from None
