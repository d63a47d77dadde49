"""The artifacts directory of one run (DESIGN.md "Artifacts"): paths, checks, catalogue file.

``artifacts/<run>/`` holds ``config.yaml`` and ``towers/`` and ``metrics.json`` (train.py),
``reranker/`` (train.py stage=reranker, optional), ``catalogue.parquet`` (train.py, through
:func:`save_catalogue`; build_index.py ``add=``/``remove=`` and live edits rewrite it) and
``index/`` (build_index.py). Every write is atomic: a temp file beside the target, then
``os.replace``. The cheap checks here read only json, so a CLI can refuse a missing or
mismatched directory before importing torch.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ArtifactsError

if TYPE_CHECKING:
    import pandas as pd

    from recdata.schema import SplitData

CATALOGUE_FILE = "catalogue.parquet"
# catalogue.parquet columns: the item's fields, the text the towers read (recdata.item_text),
# its training popularity and its segment (head | long_tail | new).
CATALOGUE_COLUMNS: tuple[str, ...] = (
    "item_id", "title", "text", "category", "brand", "created_ts", "popularity", "segment",
)
ITEM_SEGMENTS: tuple[str, ...] = ("head", "long_tail", "new")
PARTS: tuple[str, ...] = ("config", "towers", "catalogue", "reranker", "index", "metrics")


@dataclass(frozen=True)
class ArtifactPaths:
    """Where each part of one run's artifacts lives; ``check`` says what is missing and which
    command makes it."""

    root: Path  # a str or PathLike is turned into a Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def run(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def towers(self) -> Path:
        return self.root / "towers"

    @property
    def catalogue(self) -> Path:
        return self.root / CATALOGUE_FILE

    @property
    def reranker(self) -> Path:
        return self.root / "reranker"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    def command_for(self, part: str) -> str:
        """The command that writes ``part`` of this run."""
        where = f"run_name={self.run}"
        parent = self.root.parent
        if parent != Path("artifacts"):
            where += f" artifacts_dir={parent}"
        if part == "index":
            return f"python build_index.py {where}"
        if part == "reranker":
            return f"python train.py stage=reranker {where}"
        return f"python train.py {where}"

    def check(self, require: Iterable[str] = ("towers", "catalogue")) -> None:
        """Raise ArtifactsError naming the first missing part and the command that makes it."""
        for part in require:
            if part not in PARTS:
                raise ValueError(f"require= parts must be drawn from {list(PARTS)}, got {part!r}")
            path: Path = getattr(self, part)
            if not path.exists():
                if not self.root.is_dir():
                    raise ArtifactsError(f"no artifacts directory {self.root}; train a run with "
                                         f"`{self.command_for('towers')}` (then "
                                         f"`{self.command_for('index')}`), or pass the right "
                                         "directory")
                raise ArtifactsError(f"{path} is missing; make it with "
                                     f"`{self.command_for(part)}`")

    # ---- cheap json reads (no torch, no faiss) ---------------------------------------------
    def _read_json(self, path: Path, part: str) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ArtifactsError(f"{path} is missing; make it with "
                                 f"`{self.command_for(part)}`") from None
        except (OSError, json.JSONDecodeError) as err:
            raise ArtifactsError(f"{path} is unreadable ({err}); rewrite it with "
                                 f"`{self.command_for(part)}`") from None
        if not isinstance(data, dict):
            raise ArtifactsError(f"{path} must hold a JSON object; rewrite it with "
                                 f"`{self.command_for(part)}`")
        return data

    def towers_meta(self) -> dict[str, Any]:
        """``towers/towers.json``: format version, tower configs, fingerprint, item id order."""
        return self._read_json(self.towers / "towers.json", "towers")

    def index_manifest(self) -> dict[str, Any]:
        """``index/manifest.json``: dim, count, kind, model_fingerprint, ..."""
        return self._read_json(self.index / "manifest.json", "index")

    def check_split(self, fingerprint: str) -> None:
        """Refuse towers trained on another split: their recorded ``split_fingerprint`` (data,
        split settings, seed, held-out items) must equal ``fingerprint``."""
        recorded = self.towers_meta().get("split_fingerprint")
        if recorded != fingerprint:
            what = ("record no split fingerprint (trained before it was recorded)"
                    if recorded is None else f"were trained on another split "
                    f"(split_fingerprint {recorded} != {fingerprint})")
            raise ArtifactsError(f"{self.towers} {what}; retrain them on this data config with "
                                 f"`{self.command_for('towers')}` and the same data overrides")

    def check_index_matches_towers(self) -> dict[str, Any]:
        """Refuse an index built from other towers (fingerprints differ); returns its manifest."""
        manifest = self.index_manifest()
        towers = self.towers_meta().get("fingerprint")
        built = manifest.get("model_fingerprint")
        if built != towers:
            raise ArtifactsError(
                f"{self.index} was built from other towers (model_fingerprint "
                f"{str(built)[:12]}... != towers {str(towers)[:12]}...); rebuild it with "
                f"`{self.command_for('index')}`")
        return manifest


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def save_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (temp file + os.replace)."""
    target = Path(path)
    fd, tmp = _atomic_target(target)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(obj, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _category_text(value: Any) -> str | None:
    from recdata.text import CATEGORY_SEP

    if value is None or (isinstance(value, float) and value != value):
        return None
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        parts = [" ".join(str(v).split()) for v in value]
        return CATEGORY_SEP.join(p for p in parts if p) or None
    return str(value).strip() or None


def catalogue_frame(
    catalogue: pd.DataFrame,
    item_texts: Sequence[str],
    popularity: pd.Series | Sequence[float],
    segments: Sequence[str],
) -> pd.DataFrame:
    """The catalogue.parquet frame (CATALOGUE_COLUMNS) from a validated catalogue, its item
    texts (row order), training popularity (a Series by item_id, or row order) and segments."""
    import numpy as np
    import pandas as pd

    missing = [c for c in ("item_id", "title") if c not in catalogue.columns]
    if missing:
        raise ArtifactsError(f"catalogue is missing column(s) {missing}; pass the validated "
                             "catalogue (recdata Dataset.catalogue / SplitData.catalogue)")
    n = len(catalogue)
    if len(item_texts) != n or len(segments) != n:
        raise ArtifactsError(f"item_texts ({len(item_texts)}) and segments ({len(segments)}) "
                             f"must have one entry per catalogue row ({n})")
    bad = sorted(set(segments) - set(ITEM_SEGMENTS))
    if bad:
        raise ArtifactsError(f"segments must be drawn from {list(ITEM_SEGMENTS)}; got {bad}")
    ids = catalogue["item_id"].astype(str).to_numpy()
    if isinstance(popularity, pd.Series):
        pop = popularity.reindex(ids).fillna(0).to_numpy()
    else:
        pop = np.asarray(popularity, dtype=np.float64)
        if pop.shape != (n,):
            raise ArtifactsError(f"popularity must be a Series by item_id or one number per "
                                 f"catalogue row ({n}); got shape {pop.shape}")
    def column(name: str) -> pd.Series:
        return catalogue[name] if name in catalogue.columns else pd.Series([None] * n)

    created = pd.to_numeric(column("created_ts"), errors="coerce").round().astype("Int64")
    brand = [None if b is None or (isinstance(b, float) and b != b) or not str(b).strip()
             else str(b).strip() for b in column("brand").tolist()]
    return pd.DataFrame({
        "item_id": ids, "title": catalogue["title"].astype(str).to_numpy(),
        "text": [str(t) for t in item_texts],
        "category": pd.Series([_category_text(c) for c in column("category").tolist()],
                              dtype=object),
        "brand": pd.Series(brand, dtype=object), "created_ts": created.to_numpy(),
        "popularity": pop.astype(np.int64), "segment": [str(s) for s in segments],
    })


def write_catalogue(path: str | os.PathLike[str], frame: pd.DataFrame) -> Path:
    """Write a catalogue.parquet frame atomically (the columns are checked first)."""
    missing = [c for c in CATALOGUE_COLUMNS if c not in frame.columns]
    if missing:
        raise ArtifactsError(f"catalogue frame is missing column(s) {missing}; build it with "
                             "engine.artifacts.catalogue_frame")
    target = Path(path)
    fd, tmp = _atomic_target(target)
    os.close(fd)
    try:
        frame.loc[:, list(CATALOGUE_COLUMNS)].reset_index(drop=True).to_parquet(tmp, index=False)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def save_catalogue(
    root: str | os.PathLike[str],
    catalogue: pd.DataFrame,
    item_texts: Sequence[str],
    popularity: pd.Series | Sequence[float],
    segments: Sequence[str],
) -> Path:
    """Write ``<root>/catalogue.parquet`` (CATALOGUE_COLUMNS) atomically; returns its path."""
    frame = catalogue_frame(catalogue, item_texts, popularity, segments)
    return write_catalogue(ArtifactPaths(root).catalogue, frame)


def load_catalogue(root: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``<root>/catalogue.parquet``; ArtifactsError when missing or malformed."""
    import pandas as pd

    paths = ArtifactPaths(root)
    paths.check(("catalogue",))
    try:
        frame = pd.read_parquet(paths.catalogue)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise ArtifactsError(f"{paths.catalogue} is unreadable ({type(err).__name__}: {err}); "
                             f"rewrite it with `{paths.command_for('catalogue')}`") from None
    missing = [c for c in CATALOGUE_COLUMNS if c not in frame.columns]
    if missing:
        raise ArtifactsError(f"{paths.catalogue} lacks column(s) {missing}; rewrite it with "
                             f"`{paths.command_for('catalogue')}`")
    frame["item_id"] = frame["item_id"].astype(str)
    for name in ("category", "brand"):  # missing = None (pandas may read NaN into str columns)
        frame[name] = pd.Series([v if isinstance(v, str) else None for v in frame[name]],
                                index=frame.index, dtype=object)
    if frame["item_id"].duplicated().any():
        dup = frame.loc[frame["item_id"].duplicated(), "item_id"].head(5).tolist()
        raise ArtifactsError(f"{paths.catalogue} has duplicate item ids (e.g. {dup})")
    return frame


def item_segments(split: SplitData) -> list[str]:
    """Each catalogue item's segment, in catalogue order: ``new`` without training
    interactions, ``long_tail`` in ``split.long_tail``, else ``head`` (recdata's definitions)."""
    popularity = split.item_popularity
    out = []
    for item_id in split.catalogue["item_id"].astype(str):
        if float(popularity.get(item_id, 0)) <= 0 or item_id in split.new_items:
            out.append("new")
        elif item_id in split.long_tail:
            out.append("long_tail")
        else:
            out.append("head")
    return out
