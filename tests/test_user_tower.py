"""The training step's fast paths give the same vectors and losses as the plain ones.

- ``hidden_dim``: a narrower encoder, starting as the residual mean like the full-width one;
- ``forward_indexed`` (each distinct event vector once) equals ``forward`` per event;
- ``TwoTowerModel.user_emb`` (distinct items looked up once per batch) equals the per-event
  ``event_emb`` path, with items, queries and padding mixed;
- packed sequences: a row's vector does not depend on the padding or the other rows, and the
  GRU's padded and packed routes agree;
- towers saved before ``hidden_dim`` existed still load;
- the full-catalogue loss over the allowed items only equals the masked whole-catalogue loss.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recdata.schema import Event
from towers import (
    FullSoftmaxLoss,
    IdItemTower,
    SessionDataset,
    TowerError,
    TwoTowerModel,
    TwoTowerModule,
    UserTower,
)
from towers.datamodule import collate_batch
from towers.io import load_towers, save_towers
from towers.user_tower import PAD_TYPE, TYPE_INDEX

DIM, SEQ = 16, 6
KINDS = ["gru", "transformer", "mean"]


def _trained_like(tower: UserTower, seed: int = 0) -> UserTower:
    """Move every parameter off its initialisation (zero-initialised W_out hides the encoder)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in tower.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return tower.eval()


def _session_batch(lengths: list[int], n_vectors: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    vectors = F.normalize(torch.randn(n_vectors, DIM, generator=generator), dim=-1)
    lens = torch.tensor(lengths)
    valid = torch.arange(SEQ) < lens[:, None]
    index = torch.randint(n_vectors, (len(lengths), SEQ), generator=generator)  # repeats
    types = torch.randint(len(TYPE_INDEX), (len(lengths), SEQ), generator=generator)
    return vectors, index, types.masked_fill(~valid, PAD_TYPE), lens


@pytest.mark.parametrize("kind", KINDS)
def test_narrow_tower_starts_as_the_residual_mean(kind: str) -> None:
    torch.manual_seed(0)
    tower = UserTower(DIM, kind=kind, max_seq_len=SEQ, hidden_dim=8).eval()
    assert tower.in_proj is not None and tower.out.in_features == 8
    if tower.gru is not None:
        assert tower.gru.hidden_size == 8
    vectors, index, types, lens = _session_batch([1, 3, 6], n_vectors=5)
    emb = vectors[index]
    pos = (lens[:, None] - 1 - torch.arange(SEQ)).clamp(min=0)
    weight = 0.8 ** pos.float() * (torch.arange(SEQ) < lens[:, None])
    recent = F.normalize((weight.unsqueeze(-1) * emb).sum(1), dim=-1)
    torch.testing.assert_close(tower(emb, types, lens), recent, atol=1e-5, rtol=1e-5)


def test_full_width_tower_is_the_original_parameter_for_parameter() -> None:
    tower = UserTower(DIM, max_seq_len=SEQ)
    assert tower.in_proj is None and tower.hidden_dim == DIM
    assert UserTower(DIM, max_seq_len=SEQ, hidden_dim=DIM).state_dict().keys() == \
        tower.state_dict().keys()
    with pytest.raises(TowerError, match="hidden_dim"):
        UserTower(DIM, hidden_dim=0)
    with pytest.raises(TowerError, match="n_heads"):
        UserTower(DIM, kind="transformer", hidden_dim=6, n_heads=4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hidden_dim", [None, 8])
def test_forward_indexed_equals_forward_per_event(kind: str, hidden_dim: int | None) -> None:
    torch.manual_seed(0)
    tower = _trained_like(UserTower(DIM, kind=kind, max_seq_len=SEQ, hidden_dim=hidden_dim))
    vectors, index, types, lens = _session_batch([2, 6, 4, 1], n_vectors=7)
    per_event = tower(vectors[index], types, lens)
    indexed = tower.forward_indexed(vectors, index, types, lens)
    torch.testing.assert_close(indexed, per_event, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(per_event, tower(vectors[index.flip(1)], types, lens))
    # gradients reach the same vectors either way
    grads = []
    for fn in (lambda v: tower(v[index], types, lens),
               lambda v: tower.forward_indexed(v, index, types, lens)):
        leaf = vectors.clone().requires_grad_(True)
        fn(leaf).sum().backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hidden_dim", [None, 8])
def test_packed_batch_equals_each_session_alone(kind: str, hidden_dim: int | None) -> None:
    """Rows of different lengths, padded into one batch, get the vectors each gets alone
    (no padding): padding and neighbouring rows never leak into a user vector."""
    torch.manual_seed(0)
    tower = _trained_like(UserTower(DIM, kind=kind, max_seq_len=SEQ, hidden_dim=hidden_dim))
    vectors, index, types, lens = _session_batch([3, 6, 1, 5], n_vectors=9)
    batch = tower.forward_indexed(vectors, index, types, lens)
    for row, length in enumerate(lens.tolist()):
        alone = tower(vectors[index[row, :length]].unsqueeze(0), types[row, :length][None],
                      lens[row:row + 1])
        torch.testing.assert_close(batch[row:row + 1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hidden_dim", [None, 8])
def test_gru_padded_and_packed_routes_give_the_same_vectors_and_grads(hidden_dim) -> None:
    torch.manual_seed(0)
    tower = _trained_like(UserTower(DIM, max_seq_len=SEQ, hidden_dim=hidden_dim, n_layers=2))
    vectors, index, types, lens = _session_batch([3, 6, 1, 5, 2], n_vectors=9)
    out = []
    for min_fill in (0.0, 2.0):  # 0: always the padded route, 2: always packed
        tower.padded_min_fill = min_fill
        leaf = vectors.clone().requires_grad_(True)
        user = tower.forward_indexed(leaf, index, types, lens)
        (user * torch.arange(DIM)).sum().backward()
        out.append((user.detach(), leaf.grad))
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[0][1], out[1][1], atol=1e-6, rtol=1e-5)


def test_columns_past_every_length_are_trimmed_not_read() -> None:
    torch.manual_seed(0)
    tower = _trained_like(UserTower(DIM, kind="transformer", max_seq_len=SEQ, hidden_dim=8))
    vectors, index, types, lens = _session_batch([2, 3], n_vectors=5)
    trimmed = tower.forward_indexed(vectors, index[:, :3], types[:, :3], lens)
    torch.testing.assert_close(tower.forward_indexed(vectors, index, types, lens), trimmed)


def _model(hidden_dim: int | None) -> TwoTowerModel:
    torch.manual_seed(0)
    items = IdItemTower(dim=DIM, n_items=12)
    user = _trained_like(UserTower(DIM, max_seq_len=SEQ, hidden_dim=hidden_dim))
    model = TwoTowerModel(items, user, [f"i{n}" for n in range(12)]).eval()
    queries = F.normalize(torch.randn(5, DIM), dim=-1)
    model.item_tower.query_emb = lambda idx: queries[idx]  # a text path for search events
    return model


@pytest.mark.parametrize("hidden_dim", [None, 8])
def test_user_emb_looks_up_each_item_once_with_the_per_event_result(hidden_dim) -> None:
    model = _model(hidden_dim)
    hist_item = torch.tensor([[3, 3, -1, 7, -1, -1], [5, 3, 5, 5, 3, 11], [-1, -1, -1, -1, -1, -1]])
    hist_query = torch.tensor([[-1, -1, 2, -1, -1, -1], [-1] * 6, [4, -1, -1, -1, -1, -1]])
    lens = torch.tensor([4, 6, 1])
    types = torch.full_like(hist_item, TYPE_INDEX["click"])
    types[hist_query >= 0] = TYPE_INDEX["search"]
    types[torch.arange(SEQ) >= lens[:, None]] = PAD_TYPE
    batch = {"hist_item_idx": hist_item, "hist_query_idx": hist_query, "hist_type": types,
             "hist_len": lens}
    looked_up: list[int] = []

    def lookup(idx: torch.Tensor) -> torch.Tensor:
        looked_up.extend(idx.tolist())
        return model.item_tower.item_emb(idx)

    vectors, event_index = model.event_vectors(hist_item, hist_query, lookup,
                                               model.item_tower.query_emb)
    assert sorted(looked_up) == [3, 5, 7, 11]  # each distinct history item once
    per_event = model.event_emb(hist_item, hist_query, model.item_tower.item_emb,
                                model.item_tower.query_emb)
    torch.testing.assert_close(vectors[event_index], per_event)
    expected = model.user_tower(per_event, types, lens)
    torch.testing.assert_close(model.user_emb(batch), expected, atol=1e-6, rtol=1e-5)


def test_towers_saved_before_hidden_dim_existed_still_load(tmp_path) -> None:
    model = _model(None)
    del model.item_tower.query_emb  # back to the class's own (zero) query vectors
    sessions = [[Event(type="click", item_id="i2"), Event(type="view", item_id="i5")]]
    save_towers(model, tmp_path / "towers")
    meta_file = tmp_path / "towers" / "towers.json"
    meta = json.loads(meta_file.read_text())
    assert meta["user_tower"]["hidden_dim"] is None
    del meta["user_tower"]["hidden_dim"]  # the config an older checkout wrote
    meta_file.write_text(json.dumps(meta))
    np.testing.assert_allclose(load_towers(tmp_path / "towers").user_emb_from_events(sessions),
                               model.user_emb_from_events(sessions), atol=1e-6)
    narrow = _model(8)
    del narrow.item_tower.query_emb
    save_towers(narrow, tmp_path / "narrow")
    loaded = load_towers(tmp_path / "narrow")
    assert loaded.user_tower.hidden_dim == 8
    np.testing.assert_allclose(loaded.user_emb_from_events(sessions),
                               narrow.user_emb_from_events(sessions), atol=1e-6)


def test_dataset_fetches_a_whole_batch_like_row_by_row_collation() -> None:
    tensors = {"hist_item_idx": torch.arange(30).view(10, 3), "hist_len": torch.arange(10),
               "row": torch.arange(10)}
    dataset = SessionDataset(tensors)
    rows = [7, 2, 9]
    fetched = collate_batch(dataset.__getitems__(rows))
    default = torch.utils.data.default_collate([dataset[r] for r in rows])
    assert fetched.keys() == default.keys()
    for name in default:
        assert torch.equal(fetched[name], default[name])
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_batch)
    first = next(iter(loader))
    assert first["row"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("hidden_dim", [None, 8])
def test_loss_over_allowed_items_equals_the_masked_whole_catalogue_loss(hidden_dim) -> None:
    torch.manual_seed(0)
    never = torch.zeros(12, dtype=torch.bool)
    never[[1, 4, 9]] = True  # never negatives; item 4 also sits in a history
    module = TwoTowerModule(IdItemTower(dim=DIM, n_items=12),
                            _trained_like(UserTower(DIM, max_seq_len=SEQ, hidden_dim=hidden_dim)),
                            FullSoftmaxLoss(mask_history=True), never_negative_mask=never.numpy(),
                            max_steps=10).eval()
    batch = {"hist_item_idx": torch.tensor([[3, 4, 5, -1, -1, -1], [0, 2, 2, 7, 8, 6]]),
             "hist_query_idx": torch.full((2, SEQ), -1),
             "hist_type": torch.tensor([[TYPE_INDEX["click"]] * 3 + [PAD_TYPE] * 3,
                                        [TYPE_INDEX["click"]] * 6]),
             "hist_len": torch.tensor([3, 6]), "target_idx": torch.tensor([5, 11])}
    tower = module.item_tower
    looked_up: list[int] = []
    item_emb = tower.item_emb

    def counting(idx: torch.Tensor, from_table: bool = False) -> torch.Tensor:
        looked_up.append(len(idx))
        return item_emb(idx, from_table)

    tower.item_emb = counting
    fast = module.compute_loss(batch)
    assert looked_up == [12 - 3 + 1]  # the allowed items, plus history item 4, once
    fast_grads = torch.autograd.grad(fast, list(module.parameters()), allow_unused=True)
    table = tower.all_item_emb()
    user = module.model.user_emb(batch, item_lookup=lambda idx: table[idx])
    plain = module.loss(user, table, torch.arange(12), batch["target_idx"],
                        never_negative=never, history_idx=batch["hist_item_idx"])
    torch.testing.assert_close(fast, plain)
    plain_grads = torch.autograd.grad(plain, list(module.parameters()), allow_unused=True)
    for got, want in zip(fast_grads, plain_grads):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    with pytest.raises(TowerError, match="excluded"):
        module.compute_loss({**batch, "target_idx": torch.tensor([5, 9])})
