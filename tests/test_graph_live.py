"""Live catalogue edits of a graph run survive a reload (issue 16): an item added or upserted
with fields that name known entities keeps its entity links, its vector and its graph reason
when a new ``Recommender.from_artifacts`` reads the committed generation; catalogue parts
written before links were persisted still load, and a damaged one is one error line.

The towers here know attribute entities (``finish: <group>``) as well as brands, trained like
tests/test_graph_towers.py's (a few seconds on the tiny random BERT).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recdata.graph import GraphSpec, graph_arrays, split_triples
from recdata.schema import SplitData
from tests.test_graph_towers import brand_of, fit_full_batch
from tests.test_towers import N_GROUPS, _module, _tower
from tests.test_towers import dm as dm  # noqa: F401 - fixtures
from tests.test_towers import split as base_split  # noqa: F401
from towers import save_towers

SPEC = GraphSpec(category="none", attributes=True, max_item_share=0.5)
FINISHES = ("matte", "gloss", "satin", "brushed")


def finish_of(n: int) -> str:
    return FINISHES[n % N_GROUPS]


@pytest.fixture(scope="module")
def split(base_split: SplitData) -> SplitData:  # noqa: F811
    """The towers tests' split with a brand and a ``finish`` attribute per group."""
    n = len(base_split.catalogue)
    catalogue = base_split.catalogue.assign(
        brand=[brand_of(i) for i in range(n)],
        attributes=[{"finish": finish_of(i)} for i in range(n)])
    return SplitData(**{**base_split.__dict__, "catalogue": catalogue})


@pytest.fixture(scope="module")
def trained(tiny_bert_path: str, split: SplitData, dm):  # noqa: F811
    """A frozen graph tower (brand + attribute entities) and GRU user tower, 150 steps."""
    triples, _ = split_triples(split, SPEC)
    arrays = graph_arrays(triples, dm.item_ids)
    assert {"finish: gloss", "maker c"} <= set(arrays.entity_names)
    torch.manual_seed(0)
    tower = _tower(tiny_bert_path, dm, graph=True, item_graph=arrays,
                   graph_spec=SPEC.to_dict(), id_dim=0)
    return fit_full_batch(_module(tower, dm), dm)


@pytest.fixture
def artifacts(trained, split: SplitData, tmp_path: Path) -> Path:
    import build_index
    from engine.artifacts import ArtifactPaths, item_segments, save_catalogue
    from recdata.text import catalogue_texts

    root = tmp_path / "artifacts" / "g"
    save_towers(trained, ArtifactPaths(root).towers)
    save_catalogue(root, split.catalogue, catalogue_texts(split.catalogue),
                   split.item_popularity, item_segments(split))
    build_index.main(["run_name=g", f"artifacts_dir={root.parent}", "progress=false"])
    return root


def entity_links(rec, item_id: str) -> list[tuple[str, str]]:
    """(relation, entity) names the explainer holds for ``item_id``."""
    ent, rel, _ = rec.graph._items[item_id]
    return sorted((rec.graph.relation_names[r], rec.graph.entity_names[e])
                  for e, r in zip(ent.tolist(), rel.tolist()))


def reasons_for(rec, clicked: str, k: int = 6) -> dict[str, str]:
    result = rec.recommend({"events": [{"type": "click", "item_id": clicked}]}, k=k,
                           rerank=False)
    return {i["item_id"]: i["because"] for i in result["items"]}


def graph_reason(rec, item_id: str, clicked: str) -> str | None:
    """The graph explainer's reason for ``item_id`` after a click on ``clicked``, with the
    threshold at the item's own score (so it is given whenever its entity part adds to it)."""
    from recdata.schema import Event

    user = rec.encoder.encode([[Event(type="click", item_id=clicked)]])[0][0]
    score = float(rec.index.vectors_of([item_id])[0] @ user)
    title = rec.catalogue.set_index("item_id").loc[clicked, "title"]
    return rec.graph.reasons(user, [item_id], np.array([score]), score,
                             [(clicked, "click", title)])[0]


GLOSS_ITEM = {"item_id": "NEW-1", "title": "a brand-new gadget",
              "attributes": {"finish": "gloss"}}  # group 1's finish, no brand


def test_a_live_added_items_attribute_links_survive_a_reload(artifacts: Path, trained) -> None:
    import build_index
    from engine.graph import catalogue_links
    from engine.recommender import Recommender

    rec = Recommender.from_artifacts(artifacts, rerank=False)
    rec.edit_items([GLOSS_ITEM])  # committed as a generation
    links = entity_links(rec, "NEW-1")
    assert links == [("finish", "finish: gloss")]
    vec = rec.index.vectors_of(["NEW-1"])
    text = rec.catalogue.set_index("item_id").loc["NEW-1", "text"]
    np.testing.assert_allclose(vec, trained.item_emb_from_texts(
        [text], [[("finish", "finish: gloss")]]), atol=1e-5)
    clicked = trained.item_ids[1]  # a group-1 item: NEW-1 shares its finish
    before = reasons_for(rec, clicked)
    said = graph_reason(rec, "NEW-1", clicked)
    assert said is not None and said.startswith("same finish: gloss as "), said

    reloaded = Recommender.from_artifacts(artifacts, rerank=False)
    assert entity_links(reloaded, "NEW-1") == links
    for part in range(3):  # entity, relation, weight of each link
        np.testing.assert_allclose(reloaded.graph._items["NEW-1"][part],
                                   rec.graph._items["NEW-1"][part], atol=1e-6)
    np.testing.assert_allclose(reloaded.index.vectors_of(["NEW-1"]), vec, atol=1e-6)
    assert graph_reason(reloaded, "NEW-1", clicked) == said
    assert reasons_for(reloaded, clicked) == before
    # what an index rebuild (or a refresh) reads for it, and the vector it then computes
    by_id = dict(zip(reloaded.catalogue["item_id"],
                     catalogue_links(reloaded.model, reloaded.catalogue)))
    assert by_id["NEW-1"] == [("finish", "finish: gloss")]
    build_index.main(["run_name=g", f"artifacts_dir={artifacts.parent}", "progress=false"])
    rebuilt = Recommender.from_artifacts(artifacts, rerank=False)
    np.testing.assert_allclose(rebuilt.index.vectors_of(["NEW-1"]), vec, atol=1e-5)
    assert entity_links(rebuilt, "NEW-1") == links
    # reload_state (another writer committed) re-registers it too
    rec.reload_state()
    assert entity_links(rec, "NEW-1") == links


def test_an_upserted_trained_item_keeps_its_new_links_after_a_reload(artifacts: Path,
                                                                      trained) -> None:
    from engine.recommender import Recommender

    rec = Recommender.from_artifacts(artifacts, rerank=False)
    item_id = trained.item_ids[0]  # group 0 (matte, maker a), moved to group 2's entities
    assert entity_links(rec, item_id) == [("brand", brand_of(0)), ("finish", "finish: matte")]
    rec.edit_items([{"item_id": item_id, "title": "a remade gadget", "brand": brand_of(2),
                     "attributes": {"finish": finish_of(2)}}], upsert=True)
    moved = [("brand", brand_of(2)), ("finish", f"finish: {finish_of(2)}")]
    assert entity_links(rec, item_id) == moved
    vec = rec.index.vectors_of([item_id])
    clicked = trained.item_ids[2]
    before = reasons_for(rec, clicked)
    # the graph's phrase for it, whenever the graph decides it (here: asked directly)
    said = graph_reason(rec, item_id, clicked)
    assert said is not None and said.startswith("same "), said  # shared with the click

    reloaded = Recommender.from_artifacts(artifacts, rerank=False)
    assert entity_links(reloaded, item_id) == moved
    for part in range(3):
        np.testing.assert_allclose(reloaded.graph._items[item_id][part],
                                   rec.graph._items[item_id][part], atol=1e-6)
    assert graph_reason(reloaded, item_id, clicked) == said
    assert reasons_for(reloaded, clicked) == before
    # a refresh re-encodes it as it was upserted
    from pipeline.finetune import catalogue_vectors

    catalogue = reloaded.catalogue
    ids = catalogue["item_id"].tolist()
    vectors, _ = catalogue_vectors(reloaded.model, ids, catalogue["text"].tolist(), catalogue)
    np.testing.assert_allclose(vectors[ids.index(item_id)], vec[0], atol=1e-5)
    # an index rebuild keeps the upserted vector, not the one the towers trained
    import build_index

    build_index.main(["run_name=g", f"artifacts_dir={artifacts.parent}", "progress=false"])
    rebuilt = Recommender.from_artifacts(artifacts, rerank=False)
    np.testing.assert_allclose(rebuilt.index.vectors_of([item_id]), vec, atol=1e-5)
    assert entity_links(rebuilt, item_id) == moved
    # removing it, then reloading, leaves the towers' own items as they were
    rebuilt.edit_items(remove=[item_id])
    again = Recommender.from_artifacts(artifacts, rerank=False)
    assert item_id not in again.catalogue["item_id"].tolist()
    assert entity_links(again, trained.item_ids[1]) == [("brand", brand_of(1)),
                                                        ("finish", "finish: gloss")]


def _rewrite_catalogue(artifacts: Path, change) -> Path:
    """Replace the current generation's catalogue.parquet by ``change(table)`` (its files are
    hard links shared with older generations: unlink, never rewrite in place)."""
    import pyarrow.parquet as pq

    from engine.artifacts import ArtifactPaths

    path = ArtifactPaths(artifacts).catalogue
    table = pq.read_table(path)
    path.unlink()
    pq.write_table(change(table), path)
    return path


def test_a_catalogue_written_before_links_were_kept_still_loads(artifacts: Path) -> None:
    from engine.recommender import Recommender

    rec = Recommender.from_artifacts(artifacts, rerank=False)
    rec.edit_items([{"item_id": "NEW-2", "title": "a gadget", "brand": brand_of(3)}])
    _rewrite_catalogue(artifacts, lambda t: t.drop_columns(
        [c for c in t.column_names if c == "links"]))
    old = Recommender.from_artifacts(artifacts, rerank=False)
    # its links come from its catalogue fields, as before they were persisted
    assert entity_links(old, "NEW-2") == [("brand", brand_of(3))]
    old.edit_items([GLOSS_ITEM])  # the next commit writes the column
    assert entity_links(Recommender.from_artifacts(artifacts, rerank=False), "NEW-1") == [
        ("finish", "finish: gloss")]


@pytest.mark.parametrize("value, says", [
    ("[[\"finish\"", "not JSON"),
    ("{\"finish\": \"gloss\"}", "a list of [relation, entity] pairs"),
    ("[[\"finish\", 3]]", "a list of [relation, entity] pairs"),
])
def test_a_damaged_links_column_is_one_error_line(artifacts: Path, value: str, says: str) -> None:
    import pyarrow as pa

    from engine.errors import ArtifactsError
    from engine.recommender import Recommender

    Recommender.from_artifacts(artifacts, rerank=False).edit_items([GLOSS_ITEM])

    def damage(table: pa.Table) -> pa.Table:
        links = table.column("links").to_pylist()
        links[table.column("item_id").to_pylist().index("NEW-1")] = value
        at = table.column_names.index("links")
        return table.set_column(at, "links", pa.array(links, pa.string()))

    path = _rewrite_catalogue(artifacts, damage)
    with pytest.raises(ArtifactsError) as err:
        Recommender.from_artifacts(artifacts, rerank=False)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "'NEW-1'" in message
    assert says in message and "python train.py run_name=g" in message, message


def test_links_are_kept_as_json_in_the_catalogue_part(artifacts: Path) -> None:
    from engine.artifacts import ArtifactPaths
    from engine.recommender import Recommender

    Recommender.from_artifacts(artifacts, rerank=False).edit_items([GLOSS_ITEM])
    frame = pd.read_parquet(ArtifactPaths(artifacts).catalogue)
    row = frame.set_index("item_id")
    assert json.loads(row.loc["NEW-1", "links"]) == [["finish", "finish: gloss"]]
    assert row["links"].drop("NEW-1").isna().all()  # the towers' items: the towers' links
