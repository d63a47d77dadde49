"""Loaders: each reads one kind of source and returns a validated :class:`Dataset`.

- ``load_amazon_unisrec``: the UniSRec processed Amazon files (``<Name>.text``,
  ``.item2index``, ``.user2index``, ``.{train,valid,test}.inter``); keeps the file's split.
- ``load_movielens``: GroupLens ``movies.csv`` + ``ratings.csv`` (+ ``tags.csv`` as item text).
- ``load_files``: the user's own catalogue + events in CSV, JSONL or Parquet (README "Contracts").
- ``generate_synthetic`` (in :mod:`recdata.synthetic`): the embedded default.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from recdata.schema import (
    DataError,
    Dataset,
    validate_catalogue,
    validate_events,
    validate_tags,
)

log = logging.getLogger(__name__)

AMAZON_SUFFIXES = (".text", ".item2index", ".user2index", ".train.inter", ".valid.inter",
                   ".test.inter")


def _need(path: Path, hint: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: file not found; {hint}")
    return path


def _read_inter(path: Path) -> pd.DataFrame:
    """Read a RecBole ``.inter`` file: user index, space-separated history indices, target."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        if len(header) != 3 or not header[0].startswith("user_id"):
            raise DataError(f"{path} line 1: expected the RecBole header "
                            f"'user_id:token<TAB>item_id_list:token_seq<TAB>item_id:token', "
                            f"got {header!r}")
        for lineno, line in enumerate(handle, start=2):
            parts = line.rstrip("\n").split("\t")
            try:
                user, hist, target = parts
                rows.append((user, [int(i) for i in hist.split()], int(target)))
            except ValueError:
                raise DataError(f"{path} line {lineno}: expected 3 tab-separated fields "
                                f"(user, space-separated item indices, item index), got "
                                f"{line.strip()[:80]!r}") from None
    return pd.DataFrame(rows, columns=["user", "hist", "target"])


def _read_index(path: Path) -> dict[str, str]:
    """``.item2index`` / ``.user2index``: 'original_id<TAB>index' per line -> {index: id}."""
    mapping: dict[str, str] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or not parts[1].strip().isdigit():
                raise DataError(f"{path} line {lineno}: expected 'id<TAB>integer index', got "
                                f"{line.strip()[:80]!r}")
            mapping[parts[1].strip()] = parts[0].strip()
    return mapping


def _split_amazon_text(text: str) -> dict[str, object]:
    """UniSRec text is 'title. categories. brand.'; split on the last two '. ' separators."""
    parts = text.strip().rstrip(".").rsplit(". ", 2)
    if len(parts) == 3:
        title, category, brand = parts
        return {"title": title or text, "category": category, "brand": brand}
    return {"title": text.strip(), "category": None, "brand": None}


def _category_root(categories: list[str]) -> str | None:
    """The longest word prefix shared by at least half of the non-empty category paths (the
    top-level category, e.g. 'Industrial & Scientific'), or None."""
    paths = [c.split() for c in categories if c]
    root: list[str] = []
    while paths:
        counts = pd.Series([" ".join(p[: len(root) + 1]) for p in paths if len(p) > len(root)])
        if counts.empty:
            break
        top, n = counts.value_counts().index[0], int(counts.value_counts().iloc[0])
        if n * 2 < len(paths) or len(top.split()) <= len(root):
            break
        root = top.split()
    return " ".join(root) or None


def _norm(value: object) -> str:
    return " ".join(str(value or "").split())


def parse_amazon_texts(texts: list[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Title, category and brand of UniSRec 'title. categories. brand.' texts, and how many parsed.

    Titles and brands may contain '. ' ('Mr. Heater', '10.1 Oz. Tube'), so the category is found
    by its top-level name (the prefix most paths share), not by position: 'title. <root> ....
    brand.'; an empty category reads 'title. . brand.'. Texts matching neither are split on
    their last two '. ' (counted as ``text_fallback_split``)."""
    naive = [_split_amazon_text(t) for t in texts]
    root = _category_root([str(f["category"] or "") for f in naive])
    pattern = re.compile(rf"^(.*?)\. ({re.escape(root)}(?: [^.]*)?)\.(?: (.*))?$" if root
                         else r"^$", re.S)
    rows, counts = [], {"with_category_root": 0, "empty_category": 0, "fallback": 0}
    for text, fallback in zip(texts, naive):
        clean = " ".join(text.split())
        match = pattern.match(clean)
        if match:
            title, category, brand = match.group(1), match.group(2), match.group(3) or ""
            counts["with_category_root"] += 1
        elif ". . " in clean + " ":
            title, _, brand = clean.partition(". . ")
            category = ""
            counts["empty_category"] += 1
        else:
            rows.append(fallback)
            counts["fallback"] += 1
            continue
        brand = brand.strip().rstrip(".").strip()
        rows.append({"title": title.strip() or clean, "category": category.strip() or None,
                     "brand": brand or None})
    frame = pd.DataFrame(rows, columns=["title", "category", "brand"], dtype=object)
    frame = frame.astype(object).where(frame.notna(), None)
    report = {"text_items": len(texts), "text_parsed_with_category": counts["with_category_root"],
              "text_parsed_empty_category": counts["empty_category"],
              "text_fallback_split": counts["fallback"],
              "text_with_brand": int(frame["brand"].notna().sum()),
              "text_changed_from_last_two_split": int(sum(
                  [_norm(r[k]) for k in ("title", "category", "brand")]
                  != [_norm(f[k]) for k in ("title", "category", "brand")]
                  for r, f in zip(rows, naive)))}
    log.info("amazon text: root %r; %s", root, report)
    return frame, report


def load_amazon_unisrec(root: str | Path, name: str = "Scientific") -> Dataset:
    """Load a UniSRec-processed Amazon category and keep its leave-one-out split exactly.

    The ``.inter`` files hold every train prefix -> next item, plus one valid and one test row
    per user. Full sequences are rebuilt as: first item of the shortest train history (or the
    valid history) + the train targets in order + the valid target + the test target; the
    dataset has no timestamps, so ``ts`` is the position in the user's sequence.
    """
    root = Path(root)
    hint = (f"expected the UniSRec files {name}{{{','.join(AMAZON_SUFFIXES)}}} in {root}; "
            "set data.root to the folder that holds them")
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; {hint}")
    paths = {s: _need(root / f"{name}{s}", hint) for s in AMAZON_SUFFIXES}
    item_of = _read_index(paths[".item2index"])
    user_of = _read_index(paths[".user2index"])
    text = pd.read_csv(paths[".text"], sep="\t", dtype=str, quoting=3, keep_default_na=False)
    if list(text.columns[:2]) != ["item_id:token", "text:token_seq"]:
        raise DataError(f"{paths['.text']} line 1: expected header "
                        f"'item_id:token<TAB>text:token_seq', got {list(text.columns)}")
    fields, parse_report = parse_amazon_texts(text["text:token_seq"].tolist())
    catalogue = pd.DataFrame({"item_id": text["item_id:token"], **fields})
    catalogue = validate_catalogue(catalogue, str(paths[".text"]))

    frames = {s: _read_inter(paths[f".{s}.inter"]) for s in ("train", "valid", "test")}
    for split, frame in frames.items():
        bad = set(frame["target"].astype(str)) - set(item_of)
        bad |= {str(i) for h in frame["hist"] for i in h} - set(item_of)
        if bad:
            raise DataError(f"{paths[f'.{split}.inter']}: item indices {sorted(bad)[:5]} are not "
                            f"in {paths['.item2index']}")

    def to_ids(indices: list[int]) -> list[str]:
        return [item_of[str(i)] for i in indices]

    first = frames["valid"].set_index("user")["hist"].map(lambda h: h[0])
    # one train row per prefix, newest first in the file; ordered by prefix length (and, past
    # the 50-item cap where lengths tie, by reversed file order) the targets are chronological
    train = frames["train"].assign(n=frames["train"]["hist"].map(len),
                                   back=-np.arange(len(frames["train"])))
    train_targets = train.sort_values(["user", "n", "back"]).groupby("user")["target"].agg(list)
    shortest = train.loc[train["n"] == 1]
    first.update(shortest.set_index("user")["hist"].map(lambda h: h[0]))
    events = []
    valid_t = frames["valid"].set_index("user")["target"]
    test_t = frames["test"].set_index("user")["target"]
    for user in frames["test"]["user"]:
        seq = [first[user]] + list(train_targets.get(user, []))
        seq += [valid_t[user], test_t[user]]
        events.extend((user_of.get(user, user), item_of[str(i)], pos) for pos, i in enumerate(seq))
    events_df = pd.DataFrame(events, columns=["user_id", "item_id", "ts"])
    events_df["event"] = "review"
    events_df, report = validate_events(events_df, str(root / f"{name}.*.inter"),
                                        catalogue["item_id"])
    predefined = {}
    for split, frame in frames.items():
        hist = frame["hist"].map(to_ids)
        predefined[split] = pd.DataFrame({
            "user_id": frame["user"].map(lambda u: user_of.get(u, u)),
            "hist_items": hist,
            "hist_types": hist.map(lambda h: ["review"] * len(h)),
            "hist_queries": hist.map(lambda h: [None] * len(h)),
            "target": frame["target"].map(lambda i: item_of[str(i)]),
        })
    return Dataset(name=f"amazon_{name.lower()}", catalogue=catalogue, events=events_df,
                   predefined=predefined, report={**report, **parse_report})


def load_movielens(root: str | Path, min_rating: float = 0.0) -> Dataset:
    """Load GroupLens MovieLens (``movies.csv``, ``ratings.csv``, optional ``tags.csv``).

    Movies are items (text: title, genres as category); ratings >= ``min_rating`` are ``rate``
    events with their unix timestamps. ``tags.csv`` becomes ``Dataset.item_tags`` (with each
    tag's timestamp and author), not catalogue text: the split adds to an item's text only the
    tags written before its training cut (``recdata.splits``).
    """
    root = Path(root)
    hint = f"expected MovieLens movies.csv and ratings.csv in {root}; set data.root"
    movies = pd.read_csv(_need(root / "movies.csv", hint), dtype={"movieId": str})
    ratings = pd.read_csv(_need(root / "ratings.csv", hint),
                          dtype={"userId": str, "movieId": str})
    for frame, cols, fname in ((movies, ["movieId", "title", "genres"], "movies.csv"),
                               (ratings, ["userId", "movieId", "rating", "timestamp"],
                                "ratings.csv")):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise DataError(f"{root / fname}: missing column(s) {missing}; got "
                            f"{list(frame.columns)}")
    genres = movies["genres"].fillna("").map(
        lambda g: [x for x in g.split("|") if x and x != "(no genres listed)"])
    catalogue = pd.DataFrame({"item_id": movies["movieId"], "title": movies["title"],
                              "category": genres.map(lambda g: ", ".join(g) or None)})
    catalogue = validate_catalogue(catalogue, str(root / "movies.csv"))
    item_tags = None
    tags_path = root / "tags.csv"
    if tags_path.is_file():
        tags = pd.read_csv(tags_path, dtype={"movieId": str, "userId": str})
        missing = [c for c in ("userId", "movieId", "tag", "timestamp") if c not in tags.columns]
        if missing:
            raise DataError(f"{tags_path}: missing column(s) {missing}; got {list(tags.columns)}")
        item_tags = validate_tags(tags.rename(columns={"movieId": "item_id", "userId": "user_id",
                                                       "timestamp": "ts"}),
                                  str(tags_path), catalogue["item_id"])
    kept = ratings.loc[ratings["rating"] >= min_rating]
    events = pd.DataFrame({"user_id": kept["userId"], "item_id": kept["movieId"],
                           "ts": kept["timestamp"], "event": "rate",
                           "weight": kept["rating"].astype(float)})
    events, report = validate_events(events, str(root / "ratings.csv"), catalogue["item_id"])
    return Dataset(name="movielens", catalogue=catalogue, events=events, report=report,
                   item_tags=item_tags)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, JSONL/NDJSON or Parquet file by extension, with a clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; point data.catalogue / data.events at it")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".jsonl", ".ndjson", ".json"):
            rows = []
            with path.open(encoding="utf-8") as handle:
                for lineno, line in enumerate(handle, start=1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as err:
                            raise DataError(f"{path} line {lineno}: not valid JSON ({err.msg}); "
                                            "expected one JSON object per line") from None
            return pd.DataFrame(rows)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected a header row and data") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: could not parse as {suffix[1:]}: {err}") from None
    raise DataError(f"{path}: unsupported extension {suffix!r}; expected .csv, .jsonl or "
                    ".parquet")


def load_files(catalogue: str | Path, events: str | Path, name: str = "files",
               tags: str | Path | None = None, relations: str | Path | None = None
               ) -> Dataset:
    """Load the user's own catalogue and events files (README "Contracts"), optionally a
    time-stamped tags file (``item_id, tag, ts[, user_id]``) that the split folds into item
    text up to the training cut only, and a relations file (``item_id, relation, entity``: the
    item knowledge graph, recdata.graph)."""
    cat = validate_catalogue(read_table(catalogue), str(catalogue))
    if cat["attributes"].map(lambda a: isinstance(a, str)).any():
        cat["attributes"] = cat["attributes"].map(
            lambda a: json.loads(a) if isinstance(a, str) and a.startswith("{") else a)
    ev, report = validate_events(read_table(events), str(events), cat["item_id"])
    item_tags = validate_tags(read_table(tags), str(tags), cat["item_id"]) if tags else None
    triples = None
    if relations is not None and str(relations).strip():
        from recdata.graph import read_relations

        triples, relations_report = read_relations(relations, cat["item_id"])
        report = {**report, **relations_report}
    return Dataset(name=name, catalogue=cat, events=ev, report=report, item_tags=item_tags,
                   relations=triples)
