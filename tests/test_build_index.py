"""Tests of build_index.py on tiny artifacts: the built index and its manifest, other index
kinds, live catalogue edits (add= in several formats, upsert, remove=), and bad input (one
``error:`` line, exit 2, nothing written)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

import build_index
from engine import ArtifactPaths, Recommender, load_catalogue
from index import CatalogueIndex

NEW_ITEMS = [
    {"item_id": "NEW-A", "title": "Acme pro usb microscope", "category": "Lab > Optics",
     "brand": "Acme", "attributes": {"zoom": "40x"}},
    {"item_id": "NEW-B", "title": "Acme mini glass beaker set", "description": "A small set."},
]


def snapshot(root: Path) -> dict[str, str]:
    """sha1 of every file under ``root``: to prove that a failed command wrote nothing."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_build(root: Path, *overrides: str) -> None:
    build_index.main([f"run_name={root.name}", f"artifacts_dir={root.parent}", "progress=false",
                      *overrides])


def write_items(path: Path, items: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(i) + "\n" for i in items))
    elif path.suffix == ".json":
        path.write_text(json.dumps(items))
    elif path.suffix == ".csv":
        frame = pd.DataFrame(items)
        frame["attributes"] = [json.dumps(a) if isinstance(a, dict) else None
                               for a in frame.get("attributes", [None] * len(frame))]
        frame.to_csv(path, index=False)
    else:
        pd.DataFrame(items).drop(columns=["attributes"]).to_parquet(path)
    return path


def test_built_index_matches_towers_and_catalogue(tiny_artifacts: Path) -> None:
    paths = ArtifactPaths(tiny_artifacts)
    manifest = paths.check_index_matches_towers()
    assert manifest["run"] == "tiny" and manifest["kind"] == "flat"
    catalogue = load_catalogue(tiny_artifacts)
    index = CatalogueIndex.load(paths.index)
    assert manifest["count"] == len(catalogue) == len(index)
    assert index.ids == catalogue["item_id"].tolist()


def test_rebuild_with_another_index_kind(artifacts_copy: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    run_build(artifacts_copy, "index=hnsw")
    assert "built HNSW32,Flat over" in capsys.readouterr().out
    manifest = ArtifactPaths(artifacts_copy).check_index_matches_towers()
    assert manifest["kind"] == "hnsw"


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_add_items_makes_them_retrievable_and_catalogued(suffix: str, artifacts_copy: Path,
                                                         tmp_path: Path) -> None:
    n_before = len(load_catalogue(artifacts_copy))
    items_file = write_items(tmp_path / f"new{suffix}", NEW_ITEMS)
    run_build(artifacts_copy, f"add={items_file}")
    catalogue = load_catalogue(artifacts_copy).set_index("item_id")
    assert len(catalogue) == n_before + 2
    assert catalogue.loc[["NEW-A", "NEW-B"], "segment"].tolist() == ["new", "new"]
    assert catalogue.loc[["NEW-A", "NEW-B"], "popularity"].tolist() == [0, 0]
    assert catalogue.loc["NEW-A", "text"].startswith("Acme pro usb microscope. Lab > Optics.")
    rec = Recommender.from_artifacts(artifacts_copy, rerank=False)  # manifest still matches
    own_emb = rec.model.item_emb_from_texts(catalogue.loc[["NEW-A", "NEW-B"], "text"].tolist())
    _, found = rec.index.search(own_emb, 1)  # (2, 1): each new item is its own nearest item
    assert found[:, 0].tolist() == ["NEW-A", "NEW-B"]


def test_upsert_and_remove(artifacts_copy: Path, tmp_path: Path) -> None:
    run_build(artifacts_copy, f"add={write_items(tmp_path / 'a.jsonl', NEW_ITEMS[:1])}")
    changed = [{**NEW_ITEMS[0], "title": "Acme pro usb microscope v2"}]
    run_build(artifacts_copy, f"add={write_items(tmp_path / 'b.jsonl', changed)}", "upsert=true")
    catalogue = load_catalogue(artifacts_copy).set_index("item_id")
    assert catalogue.loc["NEW-A", "title"] == "Acme pro usb microscope v2"
    first = catalogue.index[0]
    run_build(artifacts_copy, f"remove=[NEW-A,{first}]")
    catalogue = load_catalogue(artifacts_copy)
    index = CatalogueIndex.load(ArtifactPaths(artifacts_copy).index)
    assert not {"NEW-A", first} & set(catalogue["item_id"]) and "NEW-A" not in index
    assert first not in index and len(index) == len(catalogue)


def test_a_rebuild_keeps_the_vector_of_a_trained_item_upserted_live(artifacts_copy: Path,
                                                                    tmp_path: Path) -> None:
    """A trained item re-described live is encoded from its new text; a full rebuild must not
    put the towers' trained vector back (nor change the items nobody edited)."""
    import numpy as np

    before = CatalogueIndex.load(ArtifactPaths(artifacts_copy).index)
    catalogue = load_catalogue(artifacts_copy)
    trained, other = catalogue["item_id"].iloc[0], catalogue["item_id"].iloc[1]
    item = {"item_id": trained, "title": "Completely different glass beaker set",
            "category": "Lab > Glassware"}
    run_build(artifacts_copy, f"add={write_items(tmp_path / 'up.jsonl', [item])}", "upsert=true")
    live = CatalogueIndex.load(ArtifactPaths(artifacts_copy).index)
    assert not np.allclose(live.vectors_of([trained]), before.vectors_of([trained]), atol=1e-4)
    run_build(artifacts_copy)  # the full rebuild
    rebuilt = CatalogueIndex.load(ArtifactPaths(artifacts_copy).index)
    np.testing.assert_allclose(rebuilt.vectors_of([trained]), live.vectors_of([trained]),
                               atol=1e-5)
    np.testing.assert_allclose(rebuilt.vectors_of([other]), before.vectors_of([other]),
                               atol=1e-5)


@pytest.mark.parametrize(("make_args", "fragment"), [
    (lambda d: ["add=" + str(write_items(d / "dup.jsonl", [{"item_id": "I00001", "title": "x"}]))],
     "already in the catalogue"),
    (lambda d: ["add=" + str(write_items(d / "no_title.jsonl", [{"item_id": "Z1", "title": ""}]))],
     '"title" must be a non-empty string'),
    (lambda d: ["add=" + str(write_items(d / "twice.jsonl", [NEW_ITEMS[0], NEW_ITEMS[0]]))],
     "duplicate ids"),
    (lambda d: ["add=" + str(d / "missing.jsonl")], "no such file"),
    (lambda d: ["add=" + str(d / "items.txt")], "expected a file ending in one of"),
    (lambda d: ["remove=[NOPE-1]"], "not in the catalogue"),
    (lambda d: ["add=" + str(write_items(d / "ok.jsonl", NEW_ITEMS)), "remove=[NOPE-2]"],
     "not in the catalogue"),
])
def test_bad_edits_exit_2_and_write_nothing(make_args, fragment: str, artifacts_copy: Path,
                                            tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    before = snapshot(artifacts_copy)
    args = make_args(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_build(artifacts_copy, *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and err.count("\n") == 1
    assert snapshot(artifacts_copy) == before


def test_missing_towers_say_what_to_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "artifacts" / "empty").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        run_build(tmp_path / "artifacts" / "empty")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "towers is missing" in err and "python train.py run_name=empty" in err
