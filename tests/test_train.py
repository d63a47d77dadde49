"""End-to-end: `train.py` on tiny synthetic data writes every artifact, and its loss falls."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import train

TINY = ["tower=tiny", "data.options.n_items=150", "data.options.n_users=80", "logger=csv",
        "trainer.log_every_n_steps=1", "train.batch_size=32", "threads=1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    train.main([*TINY, "trainer.max_epochs=4", "train.early_stopping_patience=10",
                f"artifacts_dir={root}", f"cache_dir={root}/cache", "run_name=tiny"])
    return root / "tiny"


def test_train_writes_all_artifacts(tiny_run: Path) -> None:
    from benchmarks.systems import TwoTowerRetriever
    from evaluation import RankingEvaluator
    from recdata import load_dataset, split_dataset
    from towers import load_towers

    for name in ("config.yaml", "metrics.json", "catalogue.parquet", "towers"):
        assert (tiny_run / name).exists(), name
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    overall = metrics["test"]["masked"]["overall"]
    assert {"user=warm_user", "target=new"} <= set(metrics["test"]["masked"]["by_segment"])
    # the recorded test figures are those of the saved towers, scored afresh on the same split
    split = split_dataset(load_dataset("synthetic", n_items=150, n_users=80, seed=0),
                          new_item_share=0.1, seed=0, distinct_targets=True)
    model = load_towers(tiny_run / "towers")
    towers_meta = json.loads((tiny_run / "towers" / "towers.json").read_text())
    assert towers_meta["split_fingerprint"] == split.fingerprint
    index = {item_id: n for n, item_id in enumerate(model.item_ids)}
    evaluator = RankingEvaluator(len(index), np.isin(model.item_ids, list(split.long_tail)))
    evaluator.add(TwoTowerRetriever(model, model.item_ids, "t").score(split.test),
                  np.array([index[t] for t in split.test["target"]]),
                  [np.array([index[i] for i in h if i in index]) for h in
                   split.test["hist_items"]])
    again = evaluator.result()["masked"]["overall"]
    assert overall["count"] == again["count"] == len(split.test)
    for key in ("recall_at_10", "recall_at_50", "ndcg_at_10"):
        assert overall[key] == pytest.approx(again[key], abs=1e-6), key
    assert metrics["epochs"] >= 1 and metrics["train_examples"] > 0
    catalogue = pd.read_parquet(tiny_run / "catalogue.parquet")
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
    user_emb = model.user_emb_from_events([[{"type": "click", "item_id": model.item_ids[0]}]])
    assert item_emb.shape == (150, model.dim) and user_emb.shape == (1, model.dim)


def test_bad_data_path_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(["data=amazon_scientific", f"datasets_root={tmp_path}/nowhere",
                    f"artifacts_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "folder not found" in err[0]


def test_reranker_stage_writes_model_and_tuned_blend(tiny_run: Path) -> None:
    from engine.artifacts import ArtifactPaths
    from engine.loading import run_policy

    root = tiny_run.parent
    train.main([*TINY, f"artifacts_dir={root}", f"cache_dir={root}/cache", "run_name=tiny",
                "stage=reranker", f"rerank.model_path={root / '_tiny_bert'}",
                "rerank.max_train_examples=40", "rerank.max_valid_groups=12",
                "rerank.max_steps=3", "rerank.batch_size=8", "rerank.max_length=32"])
    blend = json.loads((tiny_run / "reranker" / "blend.json").read_text())
    assert set(blend["valid_ndcg_at_10_by_alpha"]) >= {"0.0", "0.5", "1.0"}
    best = blend["valid_ndcg_at_10_by_alpha"][str(blend["blend_alpha"])]
    assert best == max(blend["valid_ndcg_at_10_by_alpha"].values())
    assert run_policy(ArtifactPaths(tiny_run)).blend_alpha == blend["blend_alpha"]
    metrics = json.loads((tiny_run / "reranker_metrics.json").read_text())
    assert metrics["train_pairs"] > 0 and "valid_after" in metrics


def test_unknown_stage_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(["stage=everything", f"artifacts_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: stage= must be one of ['towers', 'reranker', 'all'], got 'everything'"]


def test_bad_tower_setting_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main([*TINY, "tower.text_dropout=1.0", f"artifacts_dir={tmp_path}",
                    f"cache_dir={tmp_path}/cache"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # (the tiny BERT's build progress may come first)
    assert "Traceback" not in err and "Error executing job" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: need 0 <= id_dropout <= 1, 0 <= text_dropout < 1")


def test_never_negatives_adds_unseen_items_only_when_asked() -> None:
    held_out = np.array([True, False, False, False])
    popularity = np.array([0.0, 0.0, 3.0, 1.0])
    assert train.never_negatives(held_out, popularity, False).tolist() == [True, False, False,
                                                                            False]
    assert train.never_negatives(held_out, popularity, True).tolist() == [True, True, False,
                                                                           False]
