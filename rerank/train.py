"""Fine-tune a :class:`~rerank.model.Reranker` on pointwise pairs, with a plain torch loop.

``CrossEncoder.fit`` / ``CrossEncoderTrainer`` need the ``datasets`` package; this loop needs
only torch: shuffle pairs, tokenise a batch, one logit per pair, binary cross-entropy, AdamW
with linear warm-up and linear decay, gradient clipping at 1.0.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from rerank.model import Reranker
from rerank.pairs import RerankError

log = logging.getLogger(__name__)


class PointwiseBCELoss(nn.Module):
    """Binary cross-entropy on the cross-encoder's logit: label 1 = the true next item.

    Pointwise training of a BERT cross-encoder as in monoBERT (Nogueira & Cho, "Passage
    Re-ranking with BERT", 2019), here with retriever-mined hard negatives plus random negatives
    (the mixed-negatives idea of Yang et al., WWW 2020, applied at the rerank stage).
    """

    def __init__(self) -> None:
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.bce(logits, labels)  # logits, labels: (B,)


def rank_metrics(scores: np.ndarray, positive: int, k: int = 10) -> tuple[float, float]:
    """(NDCG@k, reciprocal rank) of the one positive at index ``positive``; -1 (missed) -> 0, 0.

    Ties are broken by list order (a stable sort), as re-sorting the list would.
    """
    if positive < 0:
        return 0.0, 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    rank = int(np.flatnonzero(order == positive)[0]) + 1
    ndcg = 1.0 / math.log2(rank + 1) if rank <= k else 0.0
    return ndcg, 1.0 / rank


def evaluate_groups(
    reranker: Reranker | None, groups: Sequence[tuple[str, Sequence[str], int]], k: int = 10
) -> dict[str, float]:
    """Mean NDCG@k and MRR of the positive over validation groups.

    ``reranker=None`` scores the retriever's own order (candidates are given best first).
    Groups whose positive was not retrieved (-1) count as 0, so the numbers are comparable
    before and after reranking and with the retriever.
    """
    ndcgs, rrs = [], []
    for context, candidate_texts, positive in groups:
        if positive >= len(candidate_texts):
            raise RerankError(f"a validation group's positive index {positive} is out of range "
                              f"for {len(candidate_texts)} candidates")
        if reranker is None:
            scores = -np.arange(len(candidate_texts), dtype=np.float64)
        else:
            scores = reranker.score(context, list(candidate_texts))
        ndcg, rr = rank_metrics(scores, positive, k)
        ndcgs.append(ndcg)
        rrs.append(rr)
    n = len(groups)
    return {f"ndcg@{k}": float(np.mean(ndcgs)) if n else 0.0,
            "mrr": float(np.mean(rrs)) if n else 0.0,
            "n_groups": n,
            "n_with_positive": int(sum(g[2] >= 0 for g in groups))}


def _linear_warmup_decay(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def train_reranker(
    reranker: Reranker,
    train_pairs: Sequence[tuple[str, str, float]],
    valid_groups: Sequence[tuple[str, Sequence[str], int]],
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 2e-5,
    warmup_ratio: float = 0.1,
    max_steps: int | None = None,
    seed: int = 0,
    show_progress: bool = True,
    weight_decay: float = 0.01,
) -> dict[str, Any]:
    """Fine-tune ``reranker`` in place on ``(context, candidate_text, label)`` pairs.

    ``valid_groups``: ``(context, candidate_texts, index_of_positive or -1)``, candidates in the
    retriever's order (see ``rerank.pairs.build_groups``); evaluated before and after training.
    ``max_steps`` caps the optimiser steps (the schedule is laid out over the capped total).
    Returns ``{"valid_retrieval", "valid_before", "valid_after"}`` (NDCG@10, MRR), the per-step
    ``loss_history``, ``steps`` and ``seconds``.
    """
    if not train_pairs:
        raise RerankError("train_pairs is empty; build them with rerank.pairs.build_pairs")
    if epochs < 1 or batch_size < 1 or lr <= 0 or not 0 <= warmup_ratio < 1:
        raise RerankError(f"need epochs >= 1, batch_size >= 1, lr > 0, 0 <= warmup_ratio < 1; got "
                          f"{epochs}, {batch_size}, {lr}, {warmup_ratio}")
    if max_steps is not None and max_steps < 1:
        raise RerankError(f"max_steps must be >= 1 or None, got {max_steps}")
    labels_all = torch.tensor([float(p[2]) for p in train_pairs])
    if not bool(((labels_all >= 0) & (labels_all <= 1)).all()):
        raise RerankError("pair labels must lie in [0, 1] (1 = the true next item)")

    metrics: dict[str, Any] = {"valid_retrieval": evaluate_groups(None, valid_groups)}
    metrics["valid_before"] = evaluate_groups(reranker, valid_groups)
    steps_per_epoch = math.ceil(len(train_pairs) / batch_size)
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps,
                                                                   epochs * steps_per_epoch)
    model = reranker.model
    no_decay = ("bias", "LayerNorm.weight", "norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _linear_warmup_decay(max(1, int(warmup_ratio * total)), total)
    )
    loss_fn = PointwiseBCELoss()
    generator = torch.Generator().manual_seed(seed)
    loss_history: list[float] = []
    start = time.perf_counter()
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout masks
        bar = tqdm(total=total, desc="rerank train", disable=not show_progress)
        step = 0
        for _ in range(epochs):
            order = torch.randperm(len(train_pairs), generator=generator).tolist()
            for b in range(0, len(order), batch_size):
                if step >= total:
                    break
                batch = [train_pairs[i] for i in order[b:b + batch_size]]
                features = reranker.tokenize([p[0] for p in batch], [p[1] for p in batch])
                labels = labels_all[order[b:b + batch_size]].to(reranker.device)  # (B,)
                loss = loss_fn(reranker.logits(features), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                loss_history.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(loss_history[-20:]):.4f}")
        bar.close()
    model.eval()
    reranker.refresh_int8()
    metrics["seconds"] = time.perf_counter() - start
    metrics["steps"] = step
    metrics["loss_history"] = loss_history
    metrics["valid_after"] = evaluate_groups(reranker, valid_groups)
    log.info("rerank training: %d steps in %.1fs, loss %.4f -> %.4f; valid %s -> %s "
             "(retriever %s)", step, metrics["seconds"], loss_history[0], loss_history[-1],
             metrics["valid_before"], metrics["valid_after"], metrics["valid_retrieval"])
    return metrics
