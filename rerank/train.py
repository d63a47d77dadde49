"""Fine-tune a :class:`~rerank.model.Reranker` listwise, with a plain torch loop under a budget.

Each training group is one session: its context, the true next item first, then negatives
(hard ones mined from the candidate sources, a few random ones). The loss is a softmax over
the group's logits (:class:`InGroupSoftmaxLoss`). The loop: shuffle groups, tokenise a batch of
groups, one logit per pair, AdamW with linear warm-up and linear decay laid out over the steps
that fit ``budget_cpu_seconds`` (estimated from the first steps), gradient clipping at 1.0.
The budget is process CPU time (all threads), not wall time, so a run on a shared machine
trains as much as it would alone: 2,400 CPU-seconds is 20 minutes of 2 busy cores.
``CrossEncoderTrainer`` would need the ``datasets`` package; this loop needs only torch.
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
TIMING_STEPS = 5  # steps timed before the schedule is fitted to the budget

TrainGroup = tuple[str, Sequence[str]]  # (context, [positive text, negative texts ...])


class InGroupSoftmaxLoss(nn.Module):
    """Cross-entropy of the positive against its own group's negatives: for a group's logits
    ``s_0 (positive), s_1 .. s_K``, ``-log softmax(s)_0``.

    The localised contrastive estimation of Gao, Dai & Callan ("Rethink Training of BERT
    Rerankers in Multi-Stage Retrieval Pipeline", ECIR 2021): each query's positive competes
    with hard negatives from the retriever that feeds the reranker, so the model learns to
    order exactly the lists it will see, instead of calibrating each pair on its own (BCE).
    Groups may differ in size: ``logits`` is (G, max group size) with -inf in the padding.
    """

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)  # (G,)
        return nn.functional.cross_entropy(logits, labels)  # the positive is column 0


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
    Groups whose positive was not retrieved (-1) count as 0 and are not scored, so the numbers
    are comparable before and after reranking and with the retriever.
    """
    for _, candidate_texts, positive in groups:
        if positive >= len(candidate_texts):
            raise RerankError(f"a validation group's positive index {positive} is out of range "
                              f"for {len(candidate_texts)} candidates")
    found = [g for g in groups if g[2] >= 0]
    if reranker is None:
        scores = [-np.arange(len(texts), dtype=np.float64) for _, texts, _ in found]
    else:
        scores = reranker.score_groups([(context, list(texts)) for context, texts, _ in found])
    metrics = [rank_metrics(s, g[2], k) for s, g in zip(scores, found)]
    n = len(groups)
    return {f"ndcg@{k}": float(sum(m[0] for m in metrics) / n) if n else 0.0,
            "mrr": float(sum(m[1] for m in metrics) / n) if n else 0.0,
            "n_groups": n, "n_with_positive": len(found)}


class _Schedule:
    """Linear warm-up then linear decay to 0 at ``total`` steps; ``total`` may be re-fitted."""

    def __init__(self, warmup_ratio: float, total: int) -> None:
        self.warmup_ratio, self.total = warmup_ratio, total

    def __call__(self, step: int) -> float:
        warmup = max(1, int(self.warmup_ratio * self.total))
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (self.total - step) / max(1, self.total - warmup))


def _group_logits(reranker: Reranker, batch: Sequence[TrainGroup]) -> torch.Tensor:
    contexts = [context for context, texts in batch for _ in texts]
    texts = [text for _, group in batch for text in group]
    flat = reranker.logits(reranker.tokenize(contexts, texts))  # (sum of group sizes,)
    width = max(len(group) for _, group in batch)
    logits = flat.new_full((len(batch), width), float("-inf"))  # (G, width)
    start = 0
    for row, (_, group) in enumerate(batch):
        logits[row, :len(group)] = flat[start:start + len(group)]
        start += len(group)
    return logits


def train_reranker(
    reranker: Reranker,
    train_groups: Sequence[TrainGroup],
    valid_groups: Sequence[tuple[str, Sequence[str], int]] = (),
    epochs: int = 1,
    groups_per_step: int = 4,
    lr: float = 2e-5,
    warmup_ratio: float = 0.1,
    max_steps: int | None = None,
    budget_cpu_seconds: float | None = None,
    seed: int = 0,
    show_progress: bool = True,
    weight_decay: float = 0.01,
) -> dict[str, Any]:
    """Fine-tune ``reranker`` in place on groups ``(context, [positive, negatives...])``.

    Stops at ``epochs`` passes, ``max_steps`` optimiser steps or ``budget_cpu_seconds`` of
    process CPU time, whichever comes first; the learning-rate schedule is laid out over the
    steps that fit.
    ``valid_groups``: ``(context, candidate_texts, index_of_positive or -1)`` in the retriever's
    order, evaluated before and after (NDCG@10, MRR). Returns the metrics, per-step
    ``loss_history``, ``steps``, ``groups_seen``, ``seconds``.
    """
    if not train_groups:
        raise RerankError("train_groups is empty; build them with rerank.build_train_groups")
    if any(len(group) < 2 for _, group in train_groups):
        raise RerankError("every training group needs a positive and at least one negative")
    if epochs < 1 or groups_per_step < 1 or lr <= 0 or not 0 <= warmup_ratio < 1:
        raise RerankError(f"need epochs >= 1, groups_per_step >= 1, lr > 0, 0 <= warmup_ratio "
                          f"< 1; got {epochs}, {groups_per_step}, {lr}, {warmup_ratio}")
    if max_steps is not None and max_steps < 1:
        raise RerankError(f"max_steps must be >= 1 or None, got {max_steps}")
    if budget_cpu_seconds is not None and budget_cpu_seconds <= 0:
        raise RerankError(f"budget_cpu_seconds must be > 0 or None, got {budget_cpu_seconds}")

    metrics: dict[str, Any] = {}
    if valid_groups:
        metrics["valid_retrieval"] = evaluate_groups(None, valid_groups)
        metrics["valid_before"] = evaluate_groups(reranker, valid_groups)
    steps_per_epoch = math.ceil(len(train_groups) / groups_per_step)
    planned = epochs * steps_per_epoch if max_steps is None else min(max_steps,
                                                                     epochs * steps_per_epoch)
    model = reranker.model
    no_decay = ("bias", "LayerNorm.weight", "norm.weight")
    param_groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(param_groups, lr=lr)
    schedule = _Schedule(warmup_ratio, planned)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    loss_fn = InGroupSoftmaxLoss()
    generator = torch.Generator().manual_seed(seed)
    loss_history: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    model.train()
    step, seen = 0, 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout masks
        bar = tqdm(total=planned, desc="rerank train", disable=not show_progress)
        for _ in range(epochs):
            order = torch.randperm(len(train_groups), generator=generator).tolist()
            for b in range(0, len(order), groups_per_step):
                used = time.process_time() - cpu_start
                out_of_time = step > 0 and budget_cpu_seconds and used >= budget_cpu_seconds
                if step >= schedule.total or out_of_time:
                    break
                batch = [train_groups[i] for i in order[b:b + groups_per_step]]
                loss = loss_fn(_group_logits(reranker, batch))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                seen += len(batch)
                loss_history.append(float(loss.detach()))
                if budget_cpu_seconds and step == TIMING_STEPS:
                    per_step = (time.process_time() - cpu_start) / step
                    fit = int(budget_cpu_seconds / per_step)
                    schedule.total = max(step + 1, min(planned, fit))
                    bar.total = schedule.total
                    log.info("%.2f CPU-s/step: %d steps fit the %.0f CPU-s budget (%d planned)",
                             per_step, schedule.total, budget_cpu_seconds, planned)
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(loss_history[-20:]):.4f}")
        bar.close()
    model.eval()
    reranker.refresh()
    metrics.update(seconds=time.perf_counter() - start,
                   cpu_seconds=time.process_time() - cpu_start, steps=step, groups_seen=seen,
                   loss_history=loss_history)
    if valid_groups:
        metrics["valid_after"] = evaluate_groups(reranker, valid_groups)
    log.info("rerank training: %d steps (%d groups) in %.1fs, loss %.4f -> %.4f", step, seen,
             metrics["seconds"], loss_history[0], float(np.mean(loss_history[-20:])))
    return metrics
