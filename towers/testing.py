"""A tiny random BERT sentence-transformers model, built locally (tests and ``tower=tiny``).

Random weights give nearly identical vectors for different texts: use it for shapes, norms,
determinism and "the loss falls", never for semantic similarity.
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import torch

TINY_WORDS: tuple[str, ...] = (
    "usb", "microscope", "lab", "glass", "beaker", "flask", "test", "tube", "pipette", "scale",
    "digital", "analog", "kit", "set", "pack", "steel", "plastic", "rubber", "gloves", "safety",
    "goggles", "magnet", "battery", "cable", "charger", "lamp", "lens", "filter", "paper", "book",
    "chemistry", "physics", "biology", "science", "model", "brand", "category", "red", "blue",
    "green", "small", "large", "new", "pro", "mini",
)


def build_tiny_bert(path: str | Path, seed: int = 0, max_seq_length: int = 32) -> str:
    """Write a tiny random BERT (hidden 32, 2 layers, 4 heads, intermediate 37; ~100-token
    vocab: specials, the words above, letters) as a sentence-transformers model with mean
    pooling into ``path``; returns ``str(path)``. Deterministic for a seed; an existing model at
    ``path`` is kept."""
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    try:  # ST >= 5.4 layout; the old path still works through a deprecation shim
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # pragma: no cover - older sentence-transformers
        from sentence_transformers.models import Pooling, Transformer

    out = Path(path)
    if (out / "modules.json").exists():
        return str(out)
    letters = list(string.ascii_lowercase)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS, *letters,
             *(f"##{c}" for c in letters + list(string.digits)), *string.digits, ".", ",", ":"]
    with tempfile.TemporaryDirectory() as raw:
        (Path(raw) / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizerFast.from_pretrained(raw, do_lower_case=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            bert = BertModel(BertConfig(
                vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=37, max_position_embeddings=max(64, max_seq_length)))
        hf_dir = Path(raw) / "hf"
        bert.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        transformer = Transformer(str(hf_dir), max_seq_length=max_seq_length)
        pooling = Pooling(transformer.get_embedding_dimension(), "mean")
        model = SentenceTransformer(modules=[transformer, pooling], device="cpu")
        out.parent.mkdir(parents=True, exist_ok=True)
        model.save(str(out), create_model_card=False)
    return str(out)
