"""``TwoTowerModule``: training and full-catalogue validation of the towers with Lightning.

AdamW (BERT parameters at their own ``bert_lr``), linear warm-up then cosine decay per step;
gradient clipping is the Trainer's (``gradient_clip_val``). Validation ranks the whole catalogue
for every valid example with ``evaluation.RankingEvaluator`` (history masked, unmasked beside it)
and logs ``val/recall_at_10``, ``val/ndcg_at_10``, ``val/cold_user/recall_at_10``, ...,
``val/unmasked/recall_at_10``. Examples with an empty session are scored by training popularity
(the serving fallback), so every row counts. Validation runs on one device (no DDP gather).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from evaluation import RankingEvaluator
from towers.datamodule import EvalExamples
from towers.errors import TowerError
from towers.model import TwoTowerModel
from towers.schedules import warmup_cosine
from towers.user_tower import UserTower

log = logging.getLogger(__name__)


def _mask(values: Any, n_items: int, name: str) -> torch.Tensor:
    if values is None:
        return torch.zeros(n_items, dtype=torch.bool)
    mask = torch.as_tensor(np.asarray(values, dtype=bool))
    if tuple(mask.shape) != (n_items,):
        raise TowerError(f"{name} must be bool (n_items={n_items},); got shape {tuple(mask.shape)}")
    return mask


class TwoTowerModule(pl.LightningModule):
    """Trains ``TwoTowerModel(item_tower, user_tower)`` with ``loss`` (FullSoftmaxLoss or
    InBatchSoftmaxLoss). ``never_negative_mask`` items are never softmax negatives nor uniform
    negatives (train.py passes the held-out new items, plus items without training interactions
    when ``train.exclude_unseen_negatives``); ``item_popularity`` (train counts) gives logQ and
    the empty-session fallback."""

    def __init__(
        self,
        item_tower: nn.Module,
        user_tower: UserTower,
        loss: nn.Module,
        item_ids: Sequence[str] | None = None,
        item_popularity: Sequence[float] | np.ndarray | None = None,
        never_negative_mask: Sequence[bool] | np.ndarray | None = None,
        long_tail_mask: Sequence[bool] | np.ndarray | None = None,
        valid_examples: EvalExamples | None = None,
        test_examples: EvalExamples | None = None,
        lr: float = 1e-3,
        bert_lr: float = 2e-5,
        weight_decay: float = 0.01,
        max_steps: int | None = None,
        eval_batch_size: int = 256,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[[torch.optim.Optimizer, int], Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = TwoTowerModel(item_tower, user_tower, item_ids)
        self.loss = loss
        n_items = self.n_items = item_tower.n_items
        self.valid_examples, self.test_examples = valid_examples, test_examples
        self.lr, self.bert_lr, self.weight_decay = lr, bert_lr, weight_decay
        self.max_steps, self.eval_batch_size = max_steps, eval_batch_size
        self.make_optimizer = optimizer  # param groups -> optimizer; None: AdamW
        self.make_scheduler = scheduler  # (optimizer, total steps) -> scheduler; None: cosine
        self.save_hyperparameters(ignore=[  # scalars only: modules and arrays stay out
            "item_tower", "user_tower", "loss", "item_ids", "item_popularity",
            "never_negative_mask", "long_tail_mask", "valid_examples", "test_examples",
            "optimizer", "scheduler"])
        counts = (np.ones(n_items) if item_popularity is None
                  else np.asarray(item_popularity, dtype=np.float64).reshape(-1))
        if counts.shape != (n_items,) or (counts < 0).any():
            raise TowerError(f"item_popularity must be (n_items={n_items},) non-negative counts; "
                             f"got shape {counts.shape}")
        prob = counts / counts.sum() if counts.sum() > 0 else np.full(n_items, 1.0 / n_items)
        self.register_buffer("log_p", torch.from_numpy(np.log(np.maximum(prob, 1e-12))).float())
        self.register_buffer("fallback_scores", torch.from_numpy(np.log1p(counts)).float())
        self.register_buffer("never_negative_mask",
                             _mask(never_negative_mask, n_items, "never_negative_mask"))
        self.register_buffer("allowed_idx", torch.nonzero(~self.never_negative_mask).flatten())
        position = torch.full((n_items,), -1, dtype=torch.long)  # item -> row of the loss table
        position[self.allowed_idx] = torch.arange(len(self.allowed_idx))
        self.register_buffer("_table_position", position, persistent=False)
        self.long_tail_mask = (None if long_tail_mask is None
                               else _mask(long_tail_mask, n_items, "long_tail_mask").numpy())
        self._refreshed_at = 0  # global step of the last item-table refresh (0: construction)
        self._eval_items: torch.Tensor | None = None
        self._evaluator: RankingEvaluator | None = None
        self.last_result: dict[str, Any] | None = None

    @property
    def item_tower(self) -> nn.Module:
        return self.model.item_tower

    @property
    def user_tower(self) -> UserTower:
        return self.model.user_tower

    # ---- training ------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of one ``build_tensors`` batch (what ``training_step`` minimises): the
        candidates the loss asks for (``loss.negatives``), then one call of the one interface."""
        tower, target = self.item_tower, batch["target_idx"]
        seen = batch["hist_item_idx"]
        fresh = uniq = inverse = None
        if tower.encodes_in_forward:  # BERT with grad over the batch's distinct targets only
            uniq, inverse = torch.unique(target, return_inverse=True)
            fresh = tower.item_emb(uniq)  # (U, dim)
        log_q = None
        if self.loss.negatives == "catalogue":
            cand_ids, cand_emb, lookup = self._catalogue_candidates(seen, uniq, fresh)
            user_emb = self.model.user_emb(batch, item_lookup=lookup)
        else:  # the batch's targets (+ uniform draws), log q as expected draws per batch
            cand_ids = target
            cand_emb = fresh[inverse] if fresh is not None else tower.item_emb(target)  # (B, dim)
            user_emb = self.model.user_emb(batch)
            log_q = self.log_p[target] + math.log(target.shape[0])
            n_mixed = self.loss.n_mixed_negatives
            if n_mixed:
                pick = torch.randint(len(self.allowed_idx), (n_mixed,), device=target.device)
                mixed_idx = self.allowed_idx[pick]
                cand_ids = torch.cat([target, mixed_idx])
                cand_emb = torch.cat([cand_emb, tower.item_emb(mixed_idx, from_table=True)])
                log_q = torch.cat([log_q, torch.full((n_mixed,), math.log(
                    n_mixed / len(self.allowed_idx)), device=log_q.device)])
        return self.loss(user_emb, cand_emb, cand_ids, target, log_q=log_q, history_idx=seen,
                         never_negative=self.never_negative_mask[cand_ids])

    def _catalogue_candidates(
        self, seen: torch.Tensor, uniq: torch.Tensor | None, fresh: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """(candidate ids, their vectors, an item lookup for the user tower): the items that can
        be negatives, not the whole catalogue.

        Items in ``never_negative_mask`` (held-out and, by default, never-interacted items: 2,505
        of MovieLens's 9,125) only ever sit at -inf in the softmax, so their adapter pass would
        be thrown away: the table holds the allowed items (``allowed_idx``), then any history
        item outside them (kept for the user tower, still never a negative). Same loss as the
        full table with those columns masked."""
        tower, rows = self.item_tower, self.allowed_idx
        extra = torch.unique(seen[seen >= 0])
        extra = extra[self.never_negative_mask[extra]]  # history items that are never negatives
        position = self._table_position  # (n_items,) row of each item in the table, -1: none
        if len(extra):
            rows = torch.cat([rows, extra])
            position = position.clone()
            position[extra] = torch.arange(len(self.allowed_idx), len(rows), device=rows.device)
        table = tower.item_emb(rows, from_table=True)  # (A + E, dim): one adapter pass
        if fresh is not None:
            assert uniq is not None
            if bool((position[uniq] < 0).any()):
                raise TowerError("a training target is an excluded (new) item; new items must "
                                 "not be training targets: drop them from the training examples")
            table = table.index_copy(0, position[uniq], fresh)
        return rows, table, lambda idx: table[torch.where(idx >= 0, position[idx.clamp(min=0)],
                                                          idx)]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["target_idx"]))
        return loss

    def _refresh(self) -> None:
        if self.item_tower.encodes_in_forward and self.global_step != self._refreshed_at:
            self.item_tower.refresh_base_emb()
            self._refreshed_at = self.global_step

    def on_train_epoch_start(self) -> None:
        self._refresh()

    # ---- evaluation ----------------------------------------------------------------------
    def _start_eval(self) -> None:
        self._refresh()
        self._eval_items = self.model.all_item_emb().detach()  # (n_items, dim)
        self._evaluator = RankingEvaluator(self.n_items, self.long_tail_mask)

    @torch.no_grad()
    def _add_batch(self, batch: dict[str, torch.Tensor], examples: EvalExamples | None) -> None:
        if examples is None:
            raise TowerError("evaluation needs the EvalExamples its loader came from: pass "
                             "valid_examples= / test_examples= (SessionDataModule.valid / .test)")
        assert self._evaluator is not None and self._eval_items is not None
        items = self._eval_items
        rows = batch["row"].cpu().numpy()
        has_events = batch["hist_len"] > 0
        scores = self.fallback_scores.expand(len(rows), -1).clone()  # (B, n_items)
        if bool(has_events.any()):
            sub = {name: tensor[has_events] for name, tensor in batch.items()}
            user_emb = self.model.user_emb(sub, item_lookup=lambda idx: items[idx])
            scores[has_events] = user_emb @ items.T
        segments = {kind: [labels[r] for r in rows] for kind, labels in examples.segments.items()
                    if any(label is not None for label in labels)}
        self._evaluator.add(scores.float().cpu().numpy(), batch["target_idx"].cpu().numpy(),
                            history=[examples.history[r] for r in rows], segments=segments)

    def _log_result(self, prefix: str) -> dict[str, Any]:
        assert self._evaluator is not None
        result = self._evaluator.result()
        metrics: dict[str, float] = {}
        for view, tag in (("masked", ""), ("unmasked", "unmasked/")):
            sections = {"": result[view]["overall"]}
            if view == "masked":
                sections.update({f"{seg.split('=', 1)[1]}/": values
                                 for seg, values in result[view]["by_segment"].items()})
            for seg, values in sections.items():
                metrics.update({f"{prefix}/{tag}{seg}{name}": float(value)
                                for name, value in values.items()
                                if name != "count" and math.isfinite(value)})
        if self._trainer is not None:
            self.log_dict(metrics)
        self.last_result = result
        return result

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._add_batch(batch, self.valid_examples)

    def on_validation_epoch_end(self) -> None:
        self._log_result("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._add_batch(batch, self.test_examples)

    def on_test_epoch_end(self) -> None:
        self._log_result("test")

    def evaluate(self, examples: EvalExamples, batch_size: int | None = None) -> dict[str, Any]:
        """Full-catalogue evaluation of ``examples`` outside a Trainer (e.g. the test split):
        the ``RankingEvaluator.result()`` dict."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                self._start_eval()
                size, step = len(examples), batch_size or self.eval_batch_size
                for start in range(0, size, step):
                    batch = {name: tensor[start:start + step].to(self.device)
                             for name, tensor in examples.tensors.items()}
                    self._add_batch(batch, examples)
                assert self._evaluator is not None
                self.last_result = self._evaluator.result()
                return self.last_result
        finally:
            self.train(was_training)

    # ---- optimisation --------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        bert = {id(p) for p in self.item_tower.text_encoder_parameters()}
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for param in self.parameters():
            if param.requires_grad:  # no decay on biases, norms and scalars
                groups.setdefault((id(param) in bert, param.dim() >= 2), []).append(param)
        make = self.make_optimizer or torch.optim.AdamW  # conf: module.optimizer (_partial_)
        optimizer = make(
            [{"params": params, "lr": self.bert_lr if is_bert else self.lr,
              "weight_decay": self.weight_decay if decay else 0.0}
             for (is_bert, decay), params in groups.items()])
        total = self.max_steps or self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise TowerError("the cosine schedule needs a finite number of steps: set max_steps "
                             "on the module or max_steps / max_epochs on the Trainer")
        make = self.make_scheduler or warmup_cosine  # conf: module.scheduler (_partial_)
        scheduler = make(optimizer, int(total))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
