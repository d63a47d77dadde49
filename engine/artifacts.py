"""The artifacts directory of one run (docs/architecture.md): paths, checks, catalogue file.

``artifacts/<run>/`` holds ``config.yaml``, ``towers/`` and ``metrics.json`` (train.py),
``reranker/`` (train.py stage=reranker, optional) and ``state/``: the serving state that live
edits change -- ``catalogue.parquet`` and ``index/`` (and every part registered in
``engine.state``) -- committed as whole generations (``storage.generations``): train.py starts
it with the catalogue, build_index.py adds the index, ``add=``/``remove=`` and the service's
live edits commit new generations. ``ArtifactPaths.catalogue`` / ``.index`` name the current
generation's files (or the top-level files of a run made before generations). Every write is
atomic (``storage.atomic``); the cheap checks here read only json (and Parquet metadata), so a
CLI can refuse a missing or mismatched directory before importing torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ArtifactsError
from storage.atomic import write_file, write_json

if TYPE_CHECKING:
    import pandas as pd

    from recdata.schema import SplitData

CATALOGUE_FILE = "catalogue.parquet"
# catalogue.parquet columns: the item's fields, the text the towers read (recdata.item_text),
# its training popularity, its segment (head | long_tail | new) and, with a graph tower, the
# entity links the engine drew from the fields of an item added or upserted live ("links": a
# JSON list of [relation, entity] pairs; null for the items whose links the towers hold).
CATALOGUE_COLUMNS: tuple[str, ...] = (
    "item_id", "title", "text", "category", "brand", "created_ts", "popularity", "segment",
    "links",
)
# columns a catalogue part written by an earlier version may lack: read as null
OPTIONAL_CATALOGUE_COLUMNS: tuple[str, ...] = ("links",)
ITEM_SEGMENTS: tuple[str, ...] = ("head", "long_tail", "new")
PARTS: tuple[str, ...] = ("config", "towers", "catalogue", "reranker", "index", "metrics",
                          "state")
STATE_PARTS: tuple[str, ...] = ("catalogue", "index")  # resolved through the current generation
STAMP_KEY = b"firstclick"  # the catalogue's Parquet metadata key holding its run stamp


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
    def state(self) -> Path:
        """``state/``: the generations of the serving state (see ``storage.generations``)."""
        return self.root / "state"

    def _state_path(self, part: str) -> Path:
        from engine.state import state_store

        store = state_store(self.root)
        try:
            gen = store.current()
        except ValueError as err:  # a damaged pointer or manifest
            raise ArtifactsError(str(err)) from None
        directory = gen.directory if gen is not None else self.root
        return directory / store.part(part).path

    @property
    def catalogue(self) -> Path:
        """The current generation's catalogue.parquet."""
        return self._state_path("catalogue")

    @property
    def reranker(self) -> Path:
        return self.root / "reranker"

    @property
    def index(self) -> Path:
        """The current generation's index directory."""
        return self._state_path("index")

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
        if part in ("reranker", "ranker"):
            return f"python train.py stage={part} {where}"
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


def save_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (``storage.atomic.write_json``)."""
    return write_json(path, obj)


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
        "links": pd.Series([None] * n, dtype=object),
    })


def complete_catalogue(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the OPTIONAL_CATALOGUE_COLUMNS it lacks added as null (a part written
    before they existed, or a frame built by hand); the frame itself when it has them all."""
    missing = [c for c in OPTIONAL_CATALOGUE_COLUMNS if c not in frame.columns]
    if not missing:
        return frame
    return frame.assign(**{c: [None] * len(frame) for c in missing})


def links_json(links: Iterable[tuple[str, str]] | None) -> str | None:
    """An item's (relation, entity) links as the catalogue's ``links`` cell."""
    if links is None:
        return None
    return json.dumps([[str(r), str(e)] for r, e in links], ensure_ascii=False)


def parse_links(value: Any) -> list[tuple[str, str]] | None:
    """A ``links`` cell -> (relation, entity) pairs, None when null; ValueError saying what is
    wrong when it is not a JSON list of [relation, entity] string pairs."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if not isinstance(value, str):
        raise ValueError(f"is a {type(value).__name__}, not JSON text")
    try:
        pairs = json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"is not JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) and x for x in p)
            for p in pairs):
        raise ValueError("is not a list of [relation, entity] pairs of non-empty strings")
    return [(r, e) for r, e in pairs]


def write_catalogue(path: str | os.PathLike[str], frame: pd.DataFrame,
                    stamp: Mapping[str, Any] | None = None) -> Path:
    """Write a catalogue.parquet frame atomically (the columns are checked first), with the
    run ``stamp`` in the Parquet metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = complete_catalogue(frame)
    missing = [c for c in CATALOGUE_COLUMNS if c not in frame.columns]
    if missing:
        raise ArtifactsError(f"catalogue frame is missing column(s) {missing}; build it with "
                             "engine.artifacts.catalogue_frame")
    frame = frame.loc[:, list(CATALOGUE_COLUMNS)].reset_index(drop=True)
    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    # links stay a string column when every cell is null (pyarrow would infer type null)
    schema = schema.set(schema.get_field_index("links"), pa.field("links", pa.string()))
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    if stamp is not None:
        metadata = {**(table.schema.metadata or {}), STAMP_KEY: json.dumps(dict(stamp)).encode()}
        table = table.replace_schema_metadata(metadata)
    return write_file(path, lambda temp: pq.write_table(table, temp))


def catalogue_stamp(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The run stamp in a catalogue.parquet's metadata; ``{}`` when it has none."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
        raw = metadata.get(STAMP_KEY)
        return json.loads(raw) if raw else {}
    except FileNotFoundError:
        raise
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise ArtifactsError(f"{path} is unreadable ({type(err).__name__}: {err})") from None


def save_catalogue(
    root: str | os.PathLike[str],
    catalogue: pd.DataFrame,
    item_texts: Sequence[str],
    popularity: pd.Series | Sequence[float],
    segments: Sequence[str],
) -> Path:
    """Start the run's serving state with this catalogue (CATALOGUE_COLUMNS): a new generation
    holding it alone, stamped with the towers' run; every other state part (the index, ...)
    is built from it afterwards. Returns the catalogue's path."""
    from engine.state import commit_catalogue

    frame = catalogue_frame(catalogue, item_texts, popularity, segments)
    return commit_catalogue(ArtifactPaths(root), frame)


def read_catalogue(path: str | os.PathLike[str], fix: str = "python train.py") -> pd.DataFrame:
    """Read and check one catalogue.parquet file; ArtifactsError (saying to run ``fix``) when
    it is malformed."""
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_parquet(path)
    except FileNotFoundError:
        raise
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise ArtifactsError(f"{path} is unreadable ({type(err).__name__}: {err}); rewrite it "
                             f"with `{fix}`") from None
    missing = [c for c in CATALOGUE_COLUMNS
               if c not in frame.columns and c not in OPTIONAL_CATALOGUE_COLUMNS]
    if missing:
        raise ArtifactsError(f"{path} lacks column(s) {missing}; rewrite it with `{fix}`")
    frame = complete_catalogue(frame)  # a part written before "links" was kept
    frame["item_id"] = frame["item_id"].astype(str)
    for name in ("category", "brand"):  # missing = None (pandas may read NaN into str columns)
        frame[name] = pd.Series([v if isinstance(v, str) else None for v in frame[name]],
                                index=frame.index, dtype=object)
    if frame["item_id"].duplicated().any():
        dup = frame.loc[frame["item_id"].duplicated(), "item_id"].head(5).tolist()
        raise ArtifactsError(f"{path} has duplicate item ids (e.g. {dup})")
    links = []
    for item_id, value in zip(frame["item_id"], frame["links"]):
        try:
            parsed = parse_links(value)
        except ValueError as err:
            raise ArtifactsError(f"{path}: the \"links\" of item {item_id!r} {err}; expected "
                                 "null or a JSON list of [relation, entity] pairs; rewrite it "
                                 f"with `{fix}`") from None
        links.append(value if parsed is not None else None)
    frame["links"] = pd.Series(links, index=frame.index, dtype=object)
    return frame


def load_catalogue(root: str | os.PathLike[str]) -> pd.DataFrame:
    """Read the current catalogue of the run at ``root``; ArtifactsError when missing or
    malformed."""
    paths = ArtifactPaths(root)
    paths.check(("catalogue",))
    return read_catalogue(paths.catalogue, paths.command_for("catalogue"))


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
