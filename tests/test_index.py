"""CatalogueIndex against a brute-force oracle (faiss tests/test_contrib.py TestComputeGT style).

Data: 2,000 x 32 seeded Gaussian vectors around 20 cluster centres (clustered like real item
embeddings; uniform random data is a misleading worst case for graph and IVF indexes).
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

import index.manifest as disk
import storage.atomic as atomic
from index import (
    CatalogueIndex,
    IndexCorruptError,
    IndexInputError,
    IndexMismatchError,
    IndexNotFoundError,
)

N_ITEMS, DIM, N_CLUSTERS, N_QUERIES, K = 2_000, 32, 20, 100, 10
# Approximate kinds and the recall@10 each must reach on this data at these settings.
APPROX = {
    "hnsw": ({"hnsw_m": 32, "ef_search": 128}, 0.95),
    "ivf_flat": ({"nprobe": 16}, 0.95),  # 16 of 51 lists
    "ivf_pq": ({"nprobe": 16, "pq_m": 16}, 0.70),  # 16 bytes a vector, no exact re-scoring
}
KIND_PARAMS = {"flat": {}, **{kind: params for kind, (params, _) in APPROX.items()}}


def _normalised(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> dict:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(N_CLUSTERS, DIM))
    item_emb = centres[rng.integers(0, N_CLUSTERS, N_ITEMS)] + 0.3 * rng.normal(size=(N_ITEMS, DIM))
    query_emb = centres[rng.integers(0, N_CLUSTERS, N_QUERIES)] + 0.3 * rng.normal(
        size=(N_QUERIES, DIM)
    )
    item_emb, query_emb = _normalised(item_emb), _normalised(query_emb)  # (N, D), (Q, D)
    item_ids = np.array([f"item{i}" for i in range(N_ITEMS)], dtype=object)
    exact_scores = query_emb @ item_emb.T  # (Q, N)
    gt_rows = np.argsort(-exact_scores, axis=1)[:, :K]  # (Q, K)
    return {"item_emb": item_emb, "query_emb": query_emb, "item_ids": item_ids,
            "exact_scores": exact_scores, "gt_rows": gt_rows}


@pytest.fixture(scope="module")
def built(data: dict) -> dict[str, CatalogueIndex]:
    return {kind: CatalogueIndex.build(data["item_emb"], list(data["item_ids"]), kind, **params)
            for kind, params in KIND_PARAMS.items()}


def _recall(found_ids: np.ndarray, true_ids: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found_ids, true_ids)]))


# ------------------------------------------------------------------------------------- search
def test_flat_matches_brute_force_exactly(data: dict, built: dict) -> None:
    scores, ids = built["flat"].search(data["query_emb"], K)
    assert scores.shape == ids.shape == (N_QUERIES, K)
    assert scores.dtype == np.float32 and ids.dtype == object
    np.testing.assert_array_equal(ids, data["item_ids"][data["gt_rows"]])
    expected = np.take_along_axis(data["exact_scores"], data["gt_rows"], axis=1)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(APPROX))
def test_approximate_kinds_reach_stated_recall(data: dict, built: dict, kind: str) -> None:
    _, ids = built[kind].search(data["query_emb"], K)
    recall = _recall(ids, data["item_ids"][data["gt_rows"]])
    assert recall >= APPROX[kind][1], f"{kind} {APPROX[kind][0]}: recall@10 {recall:.3f}"


def test_refine_rescoring_lifts_ivf_pq_recall(data: dict) -> None:
    """8-byte PQ alone is coarse; re-scoring 4k candidates with the kept vectors recovers most."""
    args = (data["item_emb"], list(data["item_ids"]), "ivf_pq")
    true_ids = data["item_ids"][data["gt_rows"]]
    coarse = CatalogueIndex.build(*args, pq_m=8, nprobe=16)
    recall_coarse = _recall(coarse.search(data["query_emb"], K)[1], true_ids)
    coarse.set_search_params(refine_factor=4)
    scores, ids = coarse.search(data["query_emb"], K)
    assert _recall(ids, true_ids) >= 0.9 > recall_coarse
    assert np.all(np.diff(scores, axis=1) <= 0), "re-scored rows must stay sorted"


def test_inputs_are_normalised_copies(data: dict, built: dict) -> None:
    scaled_items = data["item_emb"] * np.linspace(0.5, 3.0, N_ITEMS, dtype=np.float32)[:, None]
    before = scaled_items.copy()
    index = CatalogueIndex.build(scaled_items, list(data["item_ids"]), "flat")
    np.testing.assert_array_equal(scaled_items, before)
    scores, ids = index.search(data["query_emb"] * 7.0, K)
    ref_scores, ref_ids = built["flat"].search(data["query_emb"], K)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(index.vectors_of(["item3"]), axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(KIND_PARAMS))
def test_exclude_drops_items_and_keeps_k_results(data: dict, built: dict, kind: str) -> None:
    top_ids = built[kind].search(data["query_emb"], K)[1]
    exclude = [list(row[:5]) + ["not-in-catalogue"] for row in top_ids]  # drop each top 5
    scores, ids = built[kind].search(data["query_emb"], K, exclude=exclude)
    assert (ids != "").all() and np.isfinite(scores).all()
    for row, banned in zip(ids, exclude):
        assert not set(row) & set(banned)
    if kind == "flat":  # exact: the next K after removing the excluded items
        masked = data["exact_scores"].copy()
        for q, banned in enumerate(exclude):
            masked[q, [int(i[4:]) for i in banned if i.startswith("item")]] = -np.inf
        np.testing.assert_array_equal(ids, data["item_ids"][np.argsort(-masked, axis=1)[:, :K]])


def test_k_beyond_catalogue_is_padded(data: dict) -> None:
    index = CatalogueIndex.build(data["item_emb"][:3], ["a", "b", "c"], "hnsw")
    scores, ids = index.search(data["query_emb"][:2], 5, exclude=[["a"], []])
    assert sorted(ids[0][:2]) == ["b", "c"] and list(ids[0][2:]) == ["", "", ""]
    assert sorted(ids[1][:3]) == ["a", "b", "c"] and list(ids[1][3:]) == ["", ""]
    assert np.isneginf(scores[0, 2:]).all() and np.isfinite(scores[1, :3]).all()


# --------------------------------------------------------------------------------- live edits
@pytest.mark.parametrize("kind", sorted(KIND_PARAMS))
def test_add_then_search_finds_new_item(data: dict, kind: str) -> None:
    index = CatalogueIndex.build(data["item_emb"], list(data["item_ids"]), kind,
                                 **KIND_PARAMS[kind])
    new_emb = _normalised(np.random.default_rng(1).normal(size=(2, DIM)))  # (2, D)
    index.add(new_emb, ["new-a", "new-b"])
    assert len(index) == N_ITEMS + 2 and "new-a" in index and index.ids[-2:] == ["new-a", "new-b"]
    _, ids = index.search(new_emb, 1)
    assert list(ids[:, 0]) == ["new-a", "new-b"]
    with pytest.raises(IndexInputError, match=r"already in the index: \['new-a'\].*upsert=True"):
        index.add(new_emb[:1], ["new-a"])
    index.add(new_emb[1:], ["new-a"], upsert=True)  # new-a now points where new-b does
    np.testing.assert_allclose(index.vectors_of(["new-a"]), new_emb[1:], atol=1e-6)
    assert len(index) == N_ITEMS + 2


@pytest.mark.parametrize("kind", sorted(KIND_PARAMS))
def test_removed_items_are_never_returned(data: dict, kind: str) -> None:
    index = CatalogueIndex.build(data["item_emb"], list(data["item_ids"]), kind,
                                 **KIND_PARAMS[kind])
    gone = list(data["item_ids"][np.unique(data["gt_rows"][:, :3])])  # everyone's favourites
    assert index.remove(gone) == len(gone)
    assert len(index) == N_ITEMS - len(gone) and gone[0] not in index
    _, ids = index.search(data["query_emb"], K)
    assert not set(ids.ravel()) & set(gone)
    assert (ids != "").all()
    kept = index.ids[0]
    with pytest.raises(IndexInputError, match=r"2 item id\(s\) not in the index: \['nope', "):
        index.remove([kept, "nope", gone[0]])
    assert kept in index and len(index) == N_ITEMS - len(gone), "a failed remove removes nothing"


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_flat"])
def test_large_removal_compacts_and_stays_exact(data: dict, kind: str) -> None:
    index = CatalogueIndex.build(data["item_emb"], list(data["item_ids"]), kind,
                                 **KIND_PARAMS[kind])
    keep_rows = np.arange(0, N_ITEMS, 2)
    index.remove(list(data["item_ids"][1::2]))  # half the catalogue: past COMPACT_FRACTION
    assert index._n_rows == len(index) == len(keep_rows) and index._n_tombstones == 0
    assert index.ids == list(data["item_ids"][keep_rows])
    exact = data["exact_scores"][:, keep_rows]
    _, ids = index.search(data["query_emb"], K)
    true_ids = data["item_ids"][keep_rows][np.argsort(-exact, axis=1)[:, :K]]
    assert _recall(ids, true_ids) >= (1.0 if kind == "flat" else 0.95)


def test_vectors_of_returns_stored_vectors(data: dict, built: dict) -> None:
    got = built["hnsw"].vectors_of(["item7", "item2", "item7"])
    np.testing.assert_allclose(got, data["item_emb"][[7, 2, 7]], atol=1e-6)
    with pytest.raises(IndexInputError, match=r"not in the index: \['ghost'\]"):
        built["hnsw"].vectors_of(["item1", "ghost"])


# --------------------------------------------------------------------------------- save/load
@pytest.mark.parametrize("kind", sorted(KIND_PARAMS))
def test_save_load_round_trip(data: dict, built: dict, kind: str, tmp_path: Path) -> None:
    path = built[kind].save(tmp_path / "index", manifest_extra={"model_fingerprint": "abc"})
    assert sorted(p.name for p in path.iterdir()) == sorted(disk.SAVED_FILES)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["dim"] == DIM and manifest["count"] == N_ITEMS and manifest["kind"] == kind
    assert manifest["metric"] == "inner_product" and manifest["model_fingerprint"] == "abc"
    assert manifest["factory"] == built[kind].factory_string
    assert manifest["faiss_version"] == faiss.__version__ and manifest["built_at"]
    loaded = CatalogueIndex.load(path, expect={"model_fingerprint": "abc", "dim": DIM})
    for before, after in zip(built[kind].search(data["query_emb"], K),
                             loaded.search(data["query_emb"], K)):
        np.testing.assert_array_equal(before, after)
    assert loaded.ids == built[kind].ids and loaded.params == built[kind].params


def test_hnsw_tombstones_survive_save_load(data: dict, tmp_path: Path) -> None:
    index = CatalogueIndex.build(data["item_emb"], list(data["item_ids"]), "hnsw")
    gone = list(data["item_ids"][data["gt_rows"][:, 0]])
    index.remove(gone)
    loaded = CatalogueIndex.load(index.save(tmp_path / "index"))
    assert len(loaded) == len(index) and loaded._n_tombstones == index._n_tombstones > 0
    assert not set(loaded.search(data["query_emb"], K)[1].ravel()) & set(gone)
    loaded.add(data["item_emb"][:1], [gone[0]])  # a removed id may come back
    assert loaded.search(data["item_emb"][:1], 1)[1][0, 0] == gone[0]


def test_load_refuses_manifest_mismatch(built: dict, tmp_path: Path) -> None:
    path = built["flat"].save(tmp_path / "index", manifest_extra={"model_fingerprint": "old"})
    with pytest.raises(IndexMismatchError,
                       match=r"model_fingerprint='old' but model_fingerprint='new'.*build_index"):
        CatalogueIndex.load(path, expect={"model_fingerprint": "new"})
    with pytest.raises(IndexMismatchError, match=r"dim=32 but dim=384"):
        CatalogueIndex.load(path, expect={"dim": 384})
    with pytest.raises(IndexMismatchError, match=r"no 'tower_sha'"):
        CatalogueIndex.load(path, expect={"tower_sha": "x"})


def test_load_missing_says_how_to_build(built: dict, tmp_path: Path) -> None:
    missing = tmp_path / "artifacts" / "run" / "index"
    with pytest.raises(IndexNotFoundError, match=rf"{missing}.*python build_index\.py"):
        CatalogueIndex.load(missing)
    path = built["flat"].save(tmp_path / "index")
    (path / "vectors.npy").unlink()
    with pytest.raises(IndexNotFoundError, match=r"incomplete: missing vectors\.npy"):
        CatalogueIndex.load(path)


def test_load_refuses_inconsistent_files(built: dict, tmp_path: Path) -> None:
    path = built["flat"].save(tmp_path / "index")
    ids_file = path / "item_ids.json"
    ids_file.write_text(json.dumps(json.loads(ids_file.read_text())[:-1]))
    with pytest.raises(IndexCorruptError, match=r"inconsistent: .*1999 ids|expected float32"):
        CatalogueIndex.load(path)


def _assert_old_index_intact(path: Path, old_ids: np.ndarray, data: dict) -> None:
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "temp dirs left behind"
    np.testing.assert_array_equal(CatalogueIndex.load(path).search(data["query_emb"], K)[1],
                                  old_ids)


def test_failed_save_leaves_old_index(data: dict, built: dict, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = built["flat"].save(tmp_path / "index")
    old_ids = built["flat"].search(data["query_emb"], K)[1]
    newer = CatalogueIndex.build(data["item_emb"][:50], list(data["item_ids"][:50]), "flat")
    real_write_json, calls = disk.write_json, []

    def crash_on_manifest(target: Path, payload: object) -> None:
        calls.append(target.name)
        if target.name == disk.MANIFEST_FILE:
            raise OSError("disk full")
        real_write_json(target, payload)

    monkeypatch.setattr(disk, "write_json", crash_on_manifest)
    with pytest.raises(OSError, match="disk full"):
        newer.save(path)
    assert calls == [disk.IDS_FILE, disk.MANIFEST_FILE]
    _assert_old_index_intact(path, old_ids, data)


def test_failed_swap_restores_old_index(data: dict, built: dict, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = built["flat"].save(tmp_path / "index")
    old_ids = built["flat"].search(data["query_emb"], K)[1]
    newer = CatalogueIndex.build(data["item_emb"][:50], list(data["item_ids"][:50]), "flat")
    real_rename, calls = atomic.os.rename, []

    def crash_on_second_rename(src: Path, dst: Path) -> None:
        calls.append(Path(dst).name)
        if len(calls) == 2:  # old moved away, new not yet in place
            raise OSError("power cut")
        real_rename(src, dst)

    monkeypatch.setattr(atomic, "_exchange_works", False)  # the two-rename fallback
    monkeypatch.setattr(atomic.os, "rename", crash_on_second_rename)
    with pytest.raises(OSError, match="power cut"):
        newer.save(path)
    monkeypatch.setattr(atomic.os, "rename", real_rename)
    _assert_old_index_intact(path, old_ids, data)


def test_crash_between_renames_is_recovered(data: dict, built: dict, tmp_path: Path) -> None:
    """A process killed after moving the old index aside: readers and the next save recover."""
    path = built["flat"].save(tmp_path / "index")
    old_ids = built["flat"].search(data["query_emb"], K)[1]
    path.rename(tmp_path / ".index.old-deadbeef")  # the state a kill -9 would leave
    (tmp_path / ".index.tmp-1234").mkdir()  # and a half-written new one
    np.testing.assert_array_equal(CatalogueIndex.load(path).search(data["query_emb"], K)[1],
                                  old_ids)
    newer = CatalogueIndex.build(data["item_emb"][:50], list(data["item_ids"][:50]), "flat")
    newer.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
    assert len(CatalogueIndex.load(path)) == 50


def test_reader_straddling_a_save_reads_again(data: dict, built: dict, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = built["flat"].save(tmp_path / "index")
    newer = CatalogueIndex.build(data["item_emb"][:50], list(data["item_ids"][:50]), "flat")
    real_read_index, calls = faiss.read_index, []

    def read_while_another_process_saves(filename: str) -> faiss.Index:
        calls.append(filename)
        if len(calls) == 1:
            newer.save(path)  # the files under the reader change: old manifest, new faiss file
        return real_read_index(filename)

    monkeypatch.setattr(disk.faiss, "read_index", read_while_another_process_saves)
    loaded = CatalogueIndex.load(path)
    assert len(calls) == 2 and len(loaded) == 50 and loaded.ids == newer.ids


# ------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("vectors", "ids", "match"),
    [
        (np.ones(DIM, np.float32), ["a"], r"must be 2-D float32 \(n, dim=32\); got shape \(32,\)"),
        (np.ones((2, 16), np.float32), ["a", "b"], r"dim=32\); got shape \(2, 16\)"),
        (np.full((2, DIM), np.nan, np.float32), ["a", "b"], r"must be finite; rows \[0, 1\]"),
        (np.ones((2, DIM), np.float32), ["a"], r"got 1 ids for 2 vectors"),
        (np.ones((2, DIM), np.float32), ["a", "a"], r"unique; duplicated: \['a'\]"),
        (np.ones((2, DIM), np.float32), ["a", 7], r"non-empty str; got 7 \(int\) at position 1"),
        (np.zeros((1, DIM), np.float32), ["a"], r"rows \[0\] are all zeros"),
        (np.array([["x"] * DIM]), ["a"], r"2-D float32.*dtype <U1"),
    ],
)
def test_bad_item_inputs_are_refused(vectors: np.ndarray, ids: list, match: str) -> None:
    index = CatalogueIndex(DIM, "flat")
    with pytest.raises(IndexInputError, match=match):
        index.add(vectors, ids)
    assert len(index) == 0


def test_bad_search_inputs_are_refused(data: dict, built: dict) -> None:
    index, query_emb = built["flat"], data["query_emb"][:2]
    with pytest.raises(IndexInputError, match=r"k must be an int >= 1; got 0"):
        index.search(query_emb, 0)
    with pytest.raises(IndexInputError, match=r"k must be an int >= 1; got 2.5"):
        index.search(query_emb, 2.5)
    with pytest.raises(IndexInputError, match=r"got shape \(32,\).*v\[None, :\]"):
        index.search(query_emb[0], 5)
    with pytest.raises(IndexInputError, match=r"2 queries but 1 exclude lists"):
        index.search(query_emb, 5, exclude=[["item1"]])
    with pytest.raises(IndexInputError, match=r"exclude\[0\] must be a list .*'item1'"):
        index.search(query_emb, 5, exclude=["item1", "item2"])
    with pytest.raises(IndexInputError, match=r"must be finite"):
        index.search(np.full((1, DIM), np.inf, np.float32), 5)


def test_bad_construction_is_refused(data: dict) -> None:
    with pytest.raises(IndexInputError, match=r"kind= must be one of .*'hnsw'.*got 'annoy'"):
        CatalogueIndex(DIM, "annoy")
    with pytest.raises(IndexInputError, match=r"pq_m=5 must divide dim=32; choose from \[1, 2,"):
        CatalogueIndex(DIM, "ivf_pq", pq_m=5)
    with pytest.raises(IndexInputError, match=r"needs at least 256 vectors to train, got 100"):
        CatalogueIndex.build(data["item_emb"][:100], [str(i) for i in range(100)], "ivf_pq")
    with pytest.raises(IndexInputError, match=r"n_items >= 1; got shape \(0, 32\)"):
        CatalogueIndex.build(np.zeros((0, DIM), np.float32), [], "flat")
    with pytest.raises(IndexInputError, match=r"would overwrite core manifest keys"):
        CatalogueIndex(DIM).manifest({"dim": 3})
    if faiss.get_num_gpus() == 0:
        with pytest.raises(IndexInputError, match=r"use_gpu=True but faiss sees no GPU"):
            CatalogueIndex(DIM, "flat", use_gpu=True)


@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="needs faiss-gpu and a GPU")
@pytest.mark.parametrize("kind", ["flat", "ivf_pq"])
def test_gpu_matches_cpu(data: dict, built: dict, kind: str, tmp_path: Path) -> None:
    gpu = CatalogueIndex.build(data["item_emb"], list(data["item_ids"]), kind,
                               use_gpu=True, **KIND_PARAMS[kind])
    cpu_ids = built[kind].search(data["query_emb"], K)[1]
    gpu_ids = gpu.search(data["query_emb"], K)[1]
    assert _recall(gpu_ids, cpu_ids) >= (1.0 if kind == "flat" else 0.9)
    loaded = CatalogueIndex.load(gpu.save(tmp_path / "index"), use_gpu=False)  # saved on CPU
    assert _recall(loaded.search(data["query_emb"], K)[1], cpu_ids) >= 0.9
