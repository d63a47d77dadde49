"""A disk cache of sentence vectors keyed by model fingerprint and text hash.

Frozen-BERT training re-uses the catalogue's vectors across runs: only texts not yet in the cache
are encoded. One ``.npz`` per model fingerprint holds ``keys`` (sha1 of each text) and
``vectors`` (float32, L2-normalised); it is rewritten atomically (``storage.write_file``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from storage.atomic import write_file
from towers.errors import TowerError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

# model -> (version counters of its tensors, fingerprint); an in-place weight update bumps a
# tensor's version, so a fine-tuned model never reuses a stale fingerprint.
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def update_tensor_digest(digest: hashlib._Hash, named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Feed names, dtypes, shapes and raw bytes of tensors (sorted by name) into ``digest``."""
    for name, tensor in sorted(named, key=lambda kv: kv[0]):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def model_fingerprint(model_or_path: SentenceTransformer | str | Path) -> str:
    """sha256 (hex) of a sentence model: its weights, module classes, max_seq_length, vocab.

    A path is loaded on CPU first, so a model and its saved copy get the same fingerprint.
    Computed once per model object while its weights stay unchanged.
    """
    if isinstance(model_or_path, (str, Path)):
        from towers.bert import load_sentence_model

        return model_fingerprint(load_sentence_model(model_or_path))
    model = model_or_path
    versions = tuple(t._version for t in itertools.chain(model.parameters(), model.buffers()))
    memo = _FINGERPRINTS.get(model)
    if memo is not None and memo[0] == versions:
        return memo[1]
    digest = hashlib.sha256()
    digest.update(json.dumps([type(m).__name__ for m in model]).encode())
    digest.update(f"max_seq_length={model.max_seq_length}".encode())
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "get_vocab"):
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        digest.update(f"lower={getattr(tokenizer, 'do_lower_case', None)}".encode())
    update_tensor_digest(digest, model.state_dict().items())
    fingerprint = digest.hexdigest()
    _FINGERPRINTS[model] = (versions, fingerprint)
    return fingerprint


def text_key(text: str) -> str:
    """The cache key of one text: sha1 of its UTF-8 bytes."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def cache_file(cache_dir: str | Path, fingerprint: str) -> Path:
    """Where the vectors of the model with ``fingerprint`` live under ``cache_dir``."""
    return Path(cache_dir) / f"vectors-{fingerprint[:24]}.npz"


def _read(path: Path, fingerprint: str) -> tuple[list[str], np.ndarray | None]:
    if not path.exists():
        return [], None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["fingerprint"]) != fingerprint:
                raise ValueError("fingerprint mismatch")
            return [str(k) for k in data["keys"]], data["vectors"].astype(np.float32)
    except (OSError, ValueError, KeyError) as err:
        log.warning("ignoring unreadable encoder cache %s (%s); it will be rebuilt", path, err)
        return [], None


def _write(path: Path, fingerprint: str, keys: list[str], vectors: np.ndarray) -> None:
    def fill(temp: Path) -> None:
        with open(temp, "wb") as handle:
            np.savez(handle, fingerprint=np.array(fingerprint), keys=np.array(keys, dtype="U40"),
                     vectors=vectors.astype(np.float32))

    write_file(path, fill)  # storage's atomic writer: temp file, fsync, os.replace


def encode_cached(
    model: SentenceTransformer,
    texts: Sequence[str],
    cache_dir: str | Path,
    batch_size: int = 64,
    show_progress: bool = True,
) -> np.ndarray:
    """Sentence vectors of ``texts`` [n, dim] float32, L2-normalised, through a disk cache.

    Only texts whose sha1 is not cached for this model's fingerprint are encoded (duplicates
    once); the cache file is then rewritten atomically.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        kinds = [type(t).__name__ for t in texts][:3]
        raise TowerError(f"texts must be a list of str; got {type(texts).__name__} of {kinds}")
    fingerprint = model_fingerprint(model)
    path = cache_file(cache_dir, fingerprint)
    cached_keys, cached = _read(path, fingerprint)
    index = {key: row for row, key in enumerate(cached_keys)}
    keys = [text_key(t) for t in texts]
    missing: dict[str, str] = {}
    for key, text in zip(keys, texts):
        if key not in index and key not in missing:
            missing[key] = text
    if missing:
        from towers.bert import eval_mode

        with eval_mode(model):
            fresh = model.encode(list(missing.values()), batch_size=batch_size,
                                 show_progress_bar=show_progress, convert_to_numpy=True,
                                 normalize_embeddings=True).astype(np.float32)
        fresh = fresh.reshape(len(missing), -1)
        vectors = fresh if cached is None else np.concatenate([cached, fresh])
        for key in missing:
            index[key] = len(index)
        _write(path, fingerprint, cached_keys + list(missing), vectors)
    else:
        vectors = cached if cached is not None else np.zeros((0, 0), np.float32)
    log.info("encoder cache %s: %d text(s), %d encoded now", path.name, len(texts), len(missing))
    if not texts:
        from towers.bert import text_dim

        return np.zeros((0, text_dim(model)), np.float32)
    return vectors[[index[k] for k in keys]]
