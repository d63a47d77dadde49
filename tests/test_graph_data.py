"""recdata.graph: triples from catalogue fields (path, list, inferred word levels), the Amazon
text parse, entity filtering, padded arrays, the relations file and its errors, and stats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recdata import DataError, load_dataset, split_dataset
from recdata.graph import (
    GraphSpec,
    filter_entities,
    graph_arrays,
    item_triples,
    read_relations,
    split_triples,
    word_levels,
)
from recdata.loaders import load_files, parse_amazon_texts
from recdata.stats import graph_stats

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = pd.DataFrame([
    {"item_id": "A", "title": "USB microscope", "category": "Lab > Optics", "brand": "Acme",
     "attributes": {"colour": "black"}},
    {"item_id": "B", "title": "Lab goggles", "category": ["Lab", "Safety"], "brand": "Safe",
     "attributes": '{"colour": "black", "size": "M"}'},
    {"item_id": "C", "title": "Nitrile gloves", "category": "Lab > Safety", "brand": None,
     "attributes": None},
])
EVENTS = [
    {"user_id": "u1", "item_id": "A", "ts": 1, "event": "click"},
    {"user_id": "u1", "item_id": "B", "ts": 2, "event": "click"},
    {"user_id": "u1", "item_id": "C", "ts": 3, "event": "click"},
    {"user_id": "u2", "item_id": "C", "ts": 4, "event": "click"},
    {"user_id": "u2", "item_id": "A", "ts": 5, "event": "click"},
    {"user_id": "u2", "item_id": "B", "ts": 6, "event": "click"},
]


def triples_of(frame: pd.DataFrame, item_id: str) -> set[tuple[str, str]]:
    rows = frame.loc[frame["item_id"] == item_id]
    return set(zip(rows["relation"], rows["entity"]))


def test_path_categories_brand_and_attributes_become_triples() -> None:
    triples = item_triples(CATALOGUE, GraphSpec())
    assert triples_of(triples, "A") == {("category_1", "Lab"), ("category_2", "Lab > Optics"),
                                        ("brand", "Acme"), ("colour", "colour: black")}
    assert triples_of(triples, "B") == {  # a list path and a JSON attributes string
        ("category_1", "Lab"), ("category_2", "Lab > Safety"), ("brand", "Safe"),
        ("colour", "colour: black"), ("size", "size: M")}
    assert triples_of(triples, "C") == {("category_1", "Lab"), ("category_2", "Lab > Safety")}
    off = item_triples(CATALOGUE, GraphSpec(category="none", brand=False, attributes=False))
    assert off.empty


def test_list_categories_and_tags_before_the_cut_are_entities() -> None:
    movies = pd.DataFrame([{"item_id": "1", "title": "Heat", "category": "Action, Crime"},
                           {"item_id": "2", "title": "Up", "category": None}])
    tags = pd.DataFrame({"item_id": ["1", "2", "9"], "tag": ["heist", " pixar ", "unknown"]})
    spec = GraphSpec(category="list", category_relation="genre", brand=False, tags=True)
    triples = item_triples(movies, spec, item_tags=tags)
    assert triples_of(triples, "1") == {("genre", "Action"), ("genre", "Crime"), ("tag", "heist")}
    assert triples_of(triples, "2") == {("tag", "pixar")}
    assert "9" not in set(triples["item_id"])  # tags of items outside the catalogue are ignored
    no_tags = item_triples(movies, GraphSpec(category="list", tags=False), item_tags=tags)
    assert "tag" not in set(no_tags["relation"])


def test_word_levels_are_inferred_where_categories_branch_or_end() -> None:
    cats = ["Lab Glass Beakers", "Lab Glass Flasks", "Lab Optics"]
    assert word_levels(cats) == {("Lab",), ("Lab", "Glass"), ("Lab", "Glass", "Beakers"),
                                 ("Lab", "Glass", "Flasks"), ("Lab", "Optics")}
    frame = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["x", "y", "z"],
                          "category": cats})
    triples = item_triples(frame, GraphSpec(category="words"))
    assert triples_of(triples, "a") == {("category_1", "Lab"), ("category_2", "Lab > Glass"),
                                        ("category_3", "Lab > Glass > Beakers")}
    # a new item's unseen leaf still links to the levels the training catalogue knows
    new = pd.DataFrame({"item_id": ["n"], "title": ["t"], "category": ["Lab Glass Pipettes"]})
    known = item_triples(new, GraphSpec(category="words"), levels=word_levels(cats))
    assert triples_of(known, "n") == {("category_1", "Lab"), ("category_2", "Lab > Glass")}


def test_amazon_text_parse_finds_the_category_by_its_root() -> None:
    texts = ["Drill bit. Industrial & Scientific Power Tools Drills. Bosch. ",
             "Propane kit 3/8 in. thread. Industrial & Scientific Fittings. Mr. Heater. ",
             "Sprayer 24 Oz. bottle. Industrial & Scientific Lab Bottles. Continental.",
             "Exhaust fan. . TPI. ",
             "Glue. Industrial & Scientific Adhesives. "]
    fields, report = parse_amazon_texts(texts)
    assert fields.to_dict("records") == [
        {"title": "Drill bit", "category": "Industrial & Scientific Power Tools Drills",
         "brand": "Bosch"},
        {"title": "Propane kit 3/8 in. thread", "category": "Industrial & Scientific Fittings",
         "brand": "Mr. Heater"},
        {"title": "Sprayer 24 Oz. bottle", "category": "Industrial & Scientific Lab Bottles",
         "brand": "Continental"},
        {"title": "Exhaust fan", "category": None, "brand": "TPI"},
        {"title": "Glue", "category": "Industrial & Scientific Adhesives", "brand": None}]
    assert report["text_parsed_with_category"] == 4 and report["text_parsed_empty_category"] == 1
    assert report["text_fallback_split"] == 0 and report["text_with_brand"] == 4
    assert report["text_changed_from_last_two_split"] == 2  # 'Mr. Heater', 'Oz. bottle'


def test_filtering_drops_private_and_ubiquitous_entities_and_caps_links() -> None:
    triples = pd.DataFrame({
        "item_id": ["a", "b", "c", "a", "b", "a", "a"],
        "relation": ["cat", "cat", "cat", "brand", "brand", "brand2", "tag"],
        "entity": ["All", "All", "All", "X", "X", "Solo", "T"]})
    spec = GraphSpec(min_items=2, max_item_share=0.9, max_links=1)
    kept, report = filter_entities(triples, n_items=3, spec=spec)
    assert set(zip(kept["item_id"], kept["entity"])) == {("a", "X"), ("b", "X")}
    assert report["entities_rare_dropped"] == 2 and report["entities_common_dropped"] == 1
    arrays = graph_arrays(kept, ["a", "b", "c"], max_links=1)
    assert arrays.entity_names == ["X"] and arrays.relation_names == ["brand"]
    assert arrays.item_entity.tolist() == [[0], [0], [-1]]
    assert arrays.item_relation.tolist() == [[0], [0], [-1]]


def write_rows(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


def files_dataset(tmp_path: Path) -> tuple[Path, Path]:
    cat = write_rows(tmp_path / "cat.jsonl", CATALOGUE.drop(columns="attributes")
                     .assign(category="Lab").to_dict("records"))
    return cat, write_rows(tmp_path / "ev.jsonl", EVENTS)


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_relations_file_is_read_validated_and_reaches_the_split(tmp_path: Path, ext: str) -> None:
    cat, events = files_dataset(tmp_path)
    rel = write_rows(tmp_path / f"rel{ext}", [
        {"item_id": "A", "relation": "maker", "entity": "Zeiss"},
        {"item_id": "B", "relation": "maker", "entity": "Zeiss"},
        {"item_id": "B", "relation": "maker", "entity": "Zeiss"},  # duplicate: dropped
        {"item_id": "Z", "relation": "maker", "entity": "Zeiss"}])  # unknown item: dropped
    data = load_files(cat, events, relations=rel)
    assert data.report["unknown_item_relations_dropped"] == 1
    assert data.report["duplicate_relations_dropped"] == 1
    split = split_dataset(data, protocol="loo", new_item_share=0.0)
    triples, _ = split_triples(split, GraphSpec(category="none", brand=False, max_item_share=1))
    assert set(zip(triples["item_id"], triples["entity"])) == {("A", "Zeiss"), ("B", "Zeiss")}


@pytest.mark.parametrize(("rows", "text", "message"), [
    ([{"item_id": "A", "relation": "maker"}], None, "missing column(s) ['entity']"),
    ([{"item_id": "A", "relation": "maker", "entity": " "}], None, "column 'entity' is empty"),
    ([{"item_id": "Q", "relation": "maker", "entity": "Zeiss"}], None, "names an item"),
    (None, '{"item_id": "A", "relation": "r", "entity": "e"}\n{oops\n', "line 2: not valid JSON"),
    (None, "", "no rows"),
    (None, "item_id,relation,entity\n", "no rows"),
    (None, "", "the file is empty"),
])
def test_malformed_relations_file_is_one_clear_error(tmp_path: Path, rows: list | None,
                                                      text: str | None, message: str) -> None:
    path = tmp_path / ("rel.csv" if text is not None and text.startswith("item_id")
                       or message == "the file is empty" else "rel.jsonl")
    if rows is not None:
        write_rows(path, rows)
    else:
        path.write_text(text or "")
    with pytest.raises(DataError) as err:
        read_relations(path, ["A", "B"])
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(path) in str(err.value)


def test_train_with_a_malformed_relations_file_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    cat, events = files_dataset(tmp_path)
    bad = write_rows(tmp_path / "rel.csv", [{"item_id": "A", "relation": "maker"}])
    out = tmp_path / "artifacts"
    proc = subprocess.run(
        [sys.executable, "train.py", "data=files", f"data.options.catalogue={cat}",
         f"data.options.events={events}", f"data.options.relations={bad}", "tower=tiny",
         "tower.graph=true", f"artifacts_dir={out}", "run_name=bad", "logger=none"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "missing column(s) ['entity']" in last
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # nothing written: no run dir, no config.yaml


def test_graph_stats_count_entities_degrees_and_reach_of_cold_items() -> None:
    split = split_dataset(load_dataset("synthetic", n_items=150, n_users=80, seed=0))
    stats = graph_stats(split, GraphSpec())
    triples, _ = split_triples(split, GraphSpec())
    assert stats["entities"] == triples["entity"].nunique() > 0
    assert stats["links"] == len(triples)
    assert set(stats["by_relation"]) == set(triples["relation"])
    assert stats["items_per_entity"]["p50"] >= 2  # min_items
    new = set(split.item_popularity.index[split.item_popularity == 0])
    warm = set(split.item_popularity.index[split.item_popularity > 0])
    entity_items = triples.groupby("entity")["item_id"].agg(set)
    expected = sum(any(entity_items[e] & warm for e in triples.loc[triples["item_id"] == i,
                                                                   "entity"]) for i in new)
    assert stats["new_items"] == len(new)
    assert stats["new_items_sharing_with_warm"] == expected
    assert 0 <= stats["long_tail_sharing_with_head"] <= stats["long_tail_sharing_with_warm"]


def test_stats_cli_prints_the_graph_section() -> None:
    from recdata import stats

    out = stats.describe(*(lambda d: (d, split_dataset(d)))(
        load_dataset("synthetic", n_items=150, n_users=80, seed=0)), GraphSpec())
    text = stats.format_stats(out)
    assert "knowledge graph" in text and "new items sharing with a warm one" in text
    assert np.isfinite(out["graph"]["entities_per_item"]["p90"])
