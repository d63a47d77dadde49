"""Load the parts of one artifacts directory, turning each library's error into one
``ArtifactsError`` line that says which file is damaged and which command repairs it.

Weights load through safetensors only: a pickle-format weights file (``*.bin``, ``*.pt``,
``*.ckpt``, ...) planted in the towers or the reranker is refused by name before any library
could be asked to unpickle it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.artifacts import ArtifactPaths
from engine.errors import ArtifactsError

if TYPE_CHECKING:
    from rerank import Reranker, RerankPolicy
    from towers import TwoTowerModel

log = logging.getLogger(__name__)

PICKLE_SUFFIXES: tuple[str, ...] = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")
# what a damaged model directory makes the loaders raise (safetensors, transformers, torch)
LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, KeyError, ValueError, RuntimeError,
                                                 TypeError, AttributeError)
POLICY_KEYS: tuple[str, ...] = (
    "mode", "top_n", "cold_max_events", "blend_alpha", "rerank_segments", "standardize",
)


class _CurrentStderr(logging.StreamHandler):
    """A StreamHandler that writes to whatever ``sys.stderr`` is at each record (a CLI called
    from tests or a notebook must not keep a stream that was swapped out and closed)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        import sys

        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def log_to_stderr(level: int | str, fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """The CLIs' logging: one handler on the root logger, to the current stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _CurrentStderr):
            root.removeHandler(handler)
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)


def quiet_libraries() -> None:
    """For CLIs, before torch/transformers are imported: no model-hub calls, no model-loading
    progress bars or info logs on stderr (explicit environment settings win)."""
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                        ("TOKENIZERS_PARALLELISM", "false"), ("TRANSFORMERS_VERBOSITY", "error"),
                        ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(name, value)


def set_compute_threads(n: int) -> dict[str, int]:
    """Intra-op threads of torch and of FAISS (a separate OpenMP runtime: torch's setting does
    not reach it) for this process; returns the previous settings, for :func:`restore`."""
    import torch

    before = {"torch": torch.get_num_threads()}
    torch.set_num_threads(int(n))
    try:
        import faiss

        before["faiss"] = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(int(n))
    except (ImportError, AttributeError):  # a FAISS build without OpenMP
        pass
    return before


def restore_compute_threads(before: dict[str, int]) -> None:
    """Undo :func:`set_compute_threads` with what it returned."""
    import torch

    torch.set_num_threads(before["torch"])
    if "faiss" in before:
        import faiss

        faiss.omp_set_num_threads(before["faiss"])


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
    """``RerankPolicy`` from the config's ``rerank.policy`` node (conf/rerank/*.yaml; a run
    saved before the rerank config was split into nodes has the same keys flat in ``rerank``);
    ``tuned`` (chosen on validation by the reranker stage) adds its per-user-group ``rules``
    (``policy.json``) or overrides ``blend_alpha`` (the older ``blend.json``)."""
    from rerank import RerankPolicy

    group = config.get("rerank") or {}
    if isinstance(group, dict) and isinstance(group.get("policy"), dict):
        group = group["policy"]
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
    older run's ``reranker/blend.json``) when there is one. A damaged file is named."""
    tuned = None
    for name in ("policy.json", "blend.json"):
        tuned_file = Path(paths.reranker) / name
        if tuned_file.is_file():
            try:
                tuned = json.loads(tuned_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ArtifactsError(f"{tuned_file} is unreadable ({err}); rewrite it with "
                                     f"`{paths.command_for('reranker')}`") from None
            if not isinstance(tuned, dict):
                raise ArtifactsError(f"{tuned_file} must hold a JSON object; rewrite it with "
                                     f"`{paths.command_for('reranker')}`")
            break
    return policy_from_config(read_config(paths), tuned)


def refuse_pickles(directory: Path, fix: str) -> None:
    """ArtifactsError naming the first pickle-format weights file under ``directory``."""
    for path in sorted(directory.rglob("*")):
        if path.suffix.lower() in PICKLE_SUFFIXES and path.is_file():
            raise ArtifactsError(f"{path} is a pickle-format file; firstclick loads weights "
                                 "from safetensors only and never unpickles: delete it, or "
                                 f"remake the part with `{fix}`")


def check_weights(paths: ArtifactPaths, rerank: bool = True) -> None:
    """Refuse pickle-format files in the towers (and the reranker) before loading anything."""
    refuse_pickles(paths.towers, paths.command_for("towers"))
    if rerank and paths.reranker.exists():
        refuse_pickles(paths.reranker, paths.command_for("reranker"))


def load_model(paths: ArtifactPaths, device: str) -> TwoTowerModel:
    from towers import load_towers

    fix = paths.command_for("towers")
    refuse_pickles(paths.towers, fix)
    try:
        return load_towers(paths.towers, device=device)
    except LOAD_ERRORS as err:
        raise ArtifactsError(f"cannot load the towers in {paths.towers} ({err}); retrain with "
                             f"`{fix}`") from None


def load_reranker(paths: ArtifactPaths, device: str,
                  stamp: dict[str, Any] | None = None) -> Reranker | None:
    """The run's reranker, or None (logged) when the run has none. With ``stamp`` (the
    towers' run identity), a reranker trained on another run is refused."""
    from rerank import Reranker

    if not paths.reranker.exists():
        log.warning("%s is missing: results are not reranked (train one with `%s`)",
                    paths.reranker, paths.command_for("reranker"))
        return None
    if stamp is not None:
        from engine.state import check_same_run, reranker_stamp

        check_same_run(paths, {"reranker": reranker_stamp(paths)}, stamp)
    refuse_pickles(paths.reranker, paths.command_for("reranker"))
    try:
        if device != "cpu":  # ONNX and int8 engines are CPU ones: the GPU scores fp32 torch
            return Reranker.load(paths.reranker, device=device, backend="torch",
                                 quantize="none")
        return Reranker.load(paths.reranker, device=device)
    except LOAD_ERRORS as err:
        raise ArtifactsError(f"cannot load the reranker in {paths.reranker} ({err}); retrain "
                             f"it with `{paths.command_for('reranker')}`") from None
