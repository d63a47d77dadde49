"""End-to-end: `train.py` on tiny synthetic data writes every artifact, and its loss falls."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import train
from pipeline.towers_stage import never_negatives
from recdata.schema import Event

TINY = ["tower=tiny", "data.options.n_items=150", "data.options.n_users=80", "logger=csv",
        "trainer.log_every_n_steps=1", "train.batch_size=32", "threads=1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    train.main([*TINY, "trainer.max_epochs=4", "train.early_stopping_patience=10",
                f"artifacts_dir={root}", f"cache_dir={root}/cache", "run_name=tiny"])
    return root / "tiny"


def test_train_writes_all_artifacts(tiny_run: Path) -> None:
    from engine.artifacts import ArtifactPaths, catalogue_stamp
    from evaluation import RankingEvaluator
    from pipeline.reranker_stage import example_sessions
    from recdata import load_dataset, split_dataset
    from towers import load_towers

    paths = ArtifactPaths(tiny_run)
    for path in (paths.config, paths.metrics, paths.catalogue, paths.towers):
        assert path.exists(), path
    run_id = json.loads((paths.towers / "towers.json").read_text())["run_id"]
    stamp = catalogue_stamp(paths.catalogue)
    assert run_id and stamp["run_id"] == run_id and json.loads(paths.metrics.read_text())[
        "run_id"] == run_id
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    overall = metrics["test"]["masked"]["overall"]
    assert {"user=warm_user", "target=new"} <= set(metrics["test"]["masked"]["by_segment"])
    # the recorded test figures are those of the saved towers, scored afresh on the same split
    split = split_dataset(load_dataset("synthetic", n_items=150, n_users=80, seed=0),
                          new_item_share=0.1, seed=0, distinct_targets=True,
                          ranker_item_share=0.05)
    model = load_towers(tiny_run / "towers")
    towers_meta = json.loads((tiny_run / "towers" / "towers.json").read_text())
    assert towers_meta["split_fingerprint"] == split.fingerprint
    index = {item_id: n for n, item_id in enumerate(model.item_ids)}
    evaluator = RankingEvaluator(len(index), np.isin(model.item_ids, list(split.long_tail)))
    user_emb = model.user_emb_from_events(example_sessions(split.test), unknown_items="skip")
    evaluator.add(user_emb @ model.catalogue_item_emb().T,
                  np.array([index[t] for t in split.test["target"]]),
                  [np.array([index[i] for i in h if i in index]) for h in
                   split.test["hist_items"]])
    again = evaluator.result()["masked"]["overall"]
    assert overall["count"] == again["count"] == len(split.test)
    for key in ("recall_at_10", "recall_at_50", "ndcg_at_10"):
        assert overall[key] == pytest.approx(again[key], abs=1e-6), key
    assert metrics["epochs"] >= 1 and metrics["train_examples"] > 0
    catalogue = pd.read_parquet(paths.catalogue)
    assert len(catalogue) == 150 and set(catalogue["segment"]) <= {"head", "long_tail", "new"}
    assert not list((tiny_run / "checkpoints").glob("*.ckpt"))


def test_train_loss_falls(tiny_run: Path) -> None:
    logged = pd.concat(pd.read_csv(p) for p in (tiny_run / "logs").rglob("metrics.csv"))
    loss = logged["train/loss"].dropna().to_numpy()
    assert len(loss) >= 8
    assert loss[-3:].mean() < loss[:3].mean()


def test_saved_towers_reload_and_score(tiny_run: Path) -> None:
    from towers import load_towers

    model = load_towers(tiny_run / "towers")
    item_emb = model.catalogue_item_emb()
    user_emb = model.user_emb_from_events([[Event(type="click", item_id=model.item_ids[0])]])
    assert item_emb.shape == (150, model.dim) and user_emb.shape == (1, model.dim)


def test_bad_data_path_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(["data=amazon_scientific", f"datasets_root={tmp_path}/nowhere",
                    f"artifacts_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "folder not found" in err[0]


def test_reranker_stage_writes_model_onnx_and_policy(tiny_run: Path) -> None:
    from engine.artifacts import ArtifactPaths
    from engine.loading import run_policy

    root = tiny_run.parent
    train.main([*TINY, f"artifacts_dir={root}", f"cache_dir={root}/cache", "run_name=tiny",
                "stage=reranker", f"rerank.model_path={root / '_tiny_bert'}",
                "rerank.mining.max_train_examples=40", "rerank.max_valid_groups=30",
                "rerank.training.max_steps=3", "rerank.training.groups_per_step=4",
                "rerank.model.max_length=32"])
    reranker_dir = tiny_run / "reranker"
    assert (reranker_dir / "model" / "onnx" / "model.onnx").is_file()
    assert list((reranker_dir / "model" / "onnx").glob("model_qint8_*.onnx"))
    decision = json.loads((reranker_dir / "policy.json").read_text())
    assert decision["rules"] and set(decision["rules"]) <= {"cold", "warm"}
    for group, rule in decision["rules"].items():  # on exactly when the CI is above zero
        evidence = decision["evidence"][group][rule["rule"]]
        assert rule["enabled"] == (evidence["delta_ci"][0] > 0)
    assert decision["decided_on"]["split"] == "valid"
    assert run_policy(ArtifactPaths(tiny_run)).rules.keys() == decision["rules"].keys()
    metrics = json.loads((tiny_run / "reranker_metrics.json").read_text())
    assert metrics["train_groups"] > 0 and metrics["steps"] == 3
    assert metrics["engine"] == "onnx-int8" and metrics["pair_lengths"]["pairs"] > 0


def test_reranker_training_groups_contain_no_held_out_or_unseen_item() -> None:
    from pipeline.reranker_stage import training_groups
    from recdata import catalogue_texts, load_dataset, split_dataset

    split = split_dataset(load_dataset("synthetic", n_items=150, n_users=80, seed=0),
                          new_item_share=0.2, distinct_targets=True)
    unseen = {str(i) for i, p in split.item_popularity.items() if p == 0}
    banned = set(split.new_items) | unseen
    assert split.new_items and unseen - split.new_items  # both kinds are present
    ids = split.catalogue["item_id"].astype(str).tolist()
    texts = dict(zip(ids, catalogue_texts(split.catalogue)))
    titles = dict(zip(ids, split.catalogue["title"]))
    # an unmasked source: every catalogue item, the banned ones first
    everything = sorted(ids, key=lambda i: i not in banned)
    mining = {"candidates_n": len(ids), "n_hard": 10, "n_random": 5, "max_train_examples": None}
    rows, negatives, groups = training_groups(split, {"all": lambda r, n: [everything] * len(r)},
                                              texts, titles, mining, max_events=5, seed=0)
    assert len(groups) == len(rows) > 0 and all(len(n) == 15 for n in negatives)
    for target, history, negs in zip(rows["target"], rows["hist_items"], negatives):
        assert str(target) not in banned
        assert not {str(i) for i in history if i is not None} & set(split.new_items)
        assert not set(negs) & banned


def test_unknown_stage_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(["stage=everything", f"artifacts_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: stage= must be one of ['towers', 'reranker', 'ranker', 'all'] or "
                   "several joined by '+' (e.g. towers+ranker), got 'everything'"]


def test_bad_tower_setting_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main([*TINY, "tower.id_dropout=2.0", f"artifacts_dir={tmp_path}",
                    f"cache_dir={tmp_path}/cache"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # (the tiny BERT's build progress may come first)
    assert "Traceback" not in err and "Error executing job" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: need 0 <= id_dropout <= 1, id_dim >= 0")


def test_never_negatives_adds_unseen_items_only_when_asked() -> None:
    held_out = np.array([True, False, False, False])
    popularity = np.array([0.0, 0.0, 3.0, 1.0])
    assert never_negatives(held_out, popularity, False).tolist() == [True, False, False,
                                                                            False]
    assert never_negatives(held_out, popularity, True).tolist() == [True, True, False,
                                                                           False]
