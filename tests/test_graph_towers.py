"""The item tower's entity part (tower.graph): switch, fine-tune modes, save/load, an unseen item
linked only to a known brand, and the engine (live adds, index rebuild, graph reasons).

On the tiny random BERT every item text gives nearly the same vector, so whatever separates
items here is learned: the 4 groups of tests/test_towers.py's split, each with its own brand.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recdata.graph import GraphSpec, graph_arrays, split_triples
from recdata.schema import Event, SplitData
from tests.test_towers import N_GROUPS, NEW, _batch, _module, _tower
from tests.test_towers import dm as dm  # noqa: F401 - fixtures
from tests.test_towers import split as base_split  # noqa: F401
from towers import ItemTower, TowerError, load_towers, save_towers

SPEC = GraphSpec(category="none", attributes=False, max_item_share=0.5)


def brand_of(n: int) -> str:
    return f"maker {chr(97 + n % N_GROUPS)}"


@pytest.fixture(scope="module")
def split(base_split: SplitData) -> SplitData:  # noqa: F811
    """The towers tests' split with a brand per group (the held-out new items included)."""
    catalogue = base_split.catalogue.assign(
        brand=[brand_of(n) for n in range(len(base_split.catalogue))])
    return SplitData(**{**base_split.__dict__, "catalogue": catalogue})


@pytest.fixture(scope="module")
def arrays(split: SplitData, dm):  # noqa: F811
    triples, _ = split_triples(split, SPEC)
    return graph_arrays(triples, dm.item_ids)


def graph_tower(path: str, dm, arrays, **kwargs) -> ItemTower:  # noqa: F811
    return _tower(path, dm, graph=True, item_graph=arrays, graph_spec=SPEC.to_dict(), **kwargs)


@pytest.fixture(scope="module")
def trained(tiny_bert_path: str, dm, arrays):  # noqa: F811
    """A frozen graph tower + GRU user tower trained 150 full-batch steps (a few seconds)."""
    torch.manual_seed(0)
    return fit_full_batch(_module(graph_tower(tiny_bert_path, dm, arrays, id_dim=0), dm), dm)


def fit_full_batch(module, dm, steps: int = 150, lr: float = 0.02):
    """``module``'s model after ``steps`` Adam steps on the whole training set, in eval mode."""
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    module.train()
    batch = _batch(dm, size=len(dm.train_tensors["target_idx"]))
    for _ in range(steps):
        optimizer.zero_grad()
        module.compute_loss(batch).backward()
        optimizer.step()
    return module.model.eval()


def test_graph_off_is_the_text_tower_and_on_needs_links(tiny_bert_path, dm, arrays) -> None:
    torch.manual_seed(0)
    plain = _tower(tiny_bert_path, dm)
    torch.manual_seed(0)
    with_graph = graph_tower(tiny_bert_path, dm, arrays)
    assert plain.graph is None and with_graph.graph is not None
    # the entity part starts at zero: same vectors until training moves it
    torch.testing.assert_close(with_graph.all_item_emb(), plain.all_item_emb())
    with pytest.raises(TowerError, match="tower.graph=true needs the catalogue's entity links"):
        _tower(tiny_bert_path, dm, graph=True)
    with pytest.raises(TowerError, match="graph_agg= must be one of"):
        graph_tower(tiny_bert_path, dm, arrays, graph_agg="max")


@pytest.mark.parametrize("mode", ["frozen", "lora", "full"])
@pytest.mark.parametrize("agg", ["mean", "attention"])
def test_each_mode_trains_the_entity_part(tiny_bert_path, dm, arrays, mode: str, agg: str
                                          ) -> None:
    torch.manual_seed(0)
    tower = graph_tower(tiny_bert_path, dm, arrays, finetune={"mode": mode}, graph_agg=agg)
    trainable = set(tower.trainable_parameter_names())
    assert {"graph.entity_emb.weight", "graph.proj.weight"} <= trainable
    module = _module(tower, dm)
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.5)
    before = tower.graph.entity_emb.weight.detach().clone()
    for _ in range(2):  # the zero-initialised projection moves first, then the entities
        optimizer.zero_grad()
        module.compute_loss(_batch(dm)).backward()
        optimizer.step()
    assert tower.graph.proj.weight.abs().sum() > 0
    assert not torch.equal(tower.graph.entity_emb.weight, before)


def test_unseen_item_whose_only_link_is_a_known_brand_gets_its_neighbourhood(trained) -> None:
    tower = trained.item_tower
    items = tower.all_item_emb().detach().numpy()  # (n_items, dim)
    warm = [n for n, i in enumerate(trained.item_ids) if i not in NEW]
    for group in range(N_GROUPS):
        brand = brand_of(group)
        linked = trained.item_emb_from_texts(["a brand-new gadget"], [[("brand", brand)]])[0]
        top = [warm[j] for j in np.argsort(-(items[warm] @ linked))[:5]]
        # right for every brand, which the (same) text alone cannot be
        assert all(n % N_GROUPS == group for n in top), (brand, top)
    # an entity the graph does not know adds nothing
    unknown = trained.item_emb_from_texts(["x"], [[("brand", "nobody")]])
    np.testing.assert_allclose(unknown, trained.item_emb_from_texts(["x"]), atol=1e-6)
    # the held-out new items, never trained on, sit with their brand's warm items
    for item_id in NEW:
        n = trained.item_ids.index(item_id)
        top = [warm[j] for j in np.argsort(-(items[warm] @ items[n]))[:5]]
        assert all(m % N_GROUPS == n % N_GROUPS for m in top)


@pytest.mark.parametrize("agg", ["mean", "attention"])
def test_save_load_round_trip_with_the_graph(tiny_bert_path, dm, arrays, trained, tmp_path,
                                             agg: str) -> None:
    if agg == "mean":
        model = trained
    else:  # an attention tower moved off its initialisation
        torch.manual_seed(1)
        module = _module(graph_tower(tiny_bert_path, dm, arrays, graph_agg=agg, id_dim=8), dm)
        opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.5)
        for _ in range(3):
            opt.zero_grad()
            module.compute_loss(_batch(dm)).backward()
            opt.step()
        model = module.model.eval()
    save_towers(model, tmp_path / "towers")
    loaded = load_towers(tmp_path / "towers")
    assert loaded.fingerprint() == model.fingerprint()
    assert loaded.item_tower.graph.agg == agg
    assert loaded.item_tower.graph.entity_names == model.item_tower.graph.entity_names
    assert loaded.item_tower.config["graph_spec"] == SPEC.to_dict()
    np.testing.assert_allclose(loaded.catalogue_item_emb(), model.catalogue_item_emb(), atol=1e-5)
    links = [[("brand", brand_of(1))], []]
    np.testing.assert_allclose(loaded.item_emb_from_texts(["lamp", "flask"], links),
                               model.item_emb_from_texts(["lamp", "flask"], links), atol=1e-5)
    sessions = [[Event(type="click", item_id="i2"), Event(type="click", item_id="i6")]]
    np.testing.assert_allclose(loaded.user_emb_from_events(sessions),
                               model.user_emb_from_events(sessions), atol=1e-5)


# ---- engine ------------------------------------------------------------------------------------
@pytest.fixture
def graph_artifacts(trained, split: SplitData, tmp_path_factory: pytest.TempPathFactory):
    import build_index
    from engine.artifacts import ArtifactPaths, item_segments, save_catalogue
    from recdata.text import catalogue_texts

    root = tmp_path_factory.mktemp("graph_artifacts") / "g"
    paths = ArtifactPaths(root)
    save_towers(trained, paths.towers)
    save_catalogue(root, split.catalogue, catalogue_texts(split.catalogue),
                   split.item_popularity, item_segments(split))
    build_index.main(["run_name=g", f"artifacts_dir={root.parent}", "progress=false"])
    return root


def test_engine_live_add_rebuild_and_graph_reasons(graph_artifacts, trained) -> None:
    import build_index
    from engine.recommender import Recommender

    rec = Recommender.from_artifacts(graph_artifacts, rerank=False)
    new = {"item_id": "NEW-1", "title": "a brand-new gadget", "brand": brand_of(2)}
    rec.add_items([new])
    vec = rec.index.vectors_of(["NEW-1"])  # (1, dim): text + the known brand's entity part
    np.testing.assert_allclose(vec, trained.item_emb_from_texts(
        [rec.catalogue.set_index("item_id").loc["NEW-1", "text"]], [[("brand", brand_of(2))]]),
        atol=1e-5)
    _, near = rec.index.search(vec, 6)  # itself, then its brand's warm items
    assert near[0, 0] == "NEW-1"
    assert all(trained.item_ids.index(i) % N_GROUPS == 2 for i in near[0, 1:]), near
    # a session on a group-2 item: the graph brings the new item of its brand, and says why
    clicked = trained.item_ids[2]
    result = rec.recommend({"events": [{"type": "click", "item_id": clicked}]}, k=5)
    reasons = {i["item_id"]: i["because"] for i in result["items"]}
    title = rec.catalogue.set_index("item_id").loc[clicked, "title"]
    assert f"same brand as '{title}' you clicked" in reasons.values(), reasons
    # a session naming the added item reads the vector the index holds for it
    user = rec.encoder.encode([[Event(type="click", item={"title": rec.catalogue.set_index(
        "item_id").loc["NEW-1", "text"]})]])[1][0]
    np.testing.assert_allclose(user[0], vec[0], atol=1e-5)
    rec.save()
    # a full rebuild gives the added item the same graph-aware vector
    build_index.main(["run_name=g", f"artifacts_dir={graph_artifacts.parent}",
                      "progress=false"])
    rebuilt = Recommender.from_artifacts(graph_artifacts, rerank=False)
    np.testing.assert_allclose(rebuilt.index.vectors_of(["NEW-1"]), vec, atol=1e-5)
    assert rebuilt.remove_items(["NEW-1"]) == 1 and "NEW-1" not in rebuilt.index


def test_links_for_new_items_follow_the_training_spec(trained) -> None:
    from engine.graph import GraphExplainer, category_label

    explainer = GraphExplainer(trained)
    items = pd.DataFrame([{"item_id": "x", "title": "t", "brand": brand_of(0),
                           "category": "group a"}, {"item_id": "y", "title": "u"}])
    assert explainer.links_for(items) == [[("brand", brand_of(0))], []]  # category: none
    assert category_label("Lab > Glassware & Labware") == "Glassware & Labware"
    assert category_label("Lab > Glass > Beakers") == "Glass Beakers"  # one word: + the level
    assert category_label("Tools > Industrial > Electrical") == "Industrial Electrical"
