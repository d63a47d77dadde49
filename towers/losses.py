"""Retrieval losses of the two-tower model: what each optimises, and why.

One interface (:class:`RetrievalLoss`, as TFRS's retrieval task): user vectors, candidate
vectors, candidate ids, target ids, optional log-q, history and never-negative masks, built from
small logit transforms. The losses differ only in the candidates they are given
(``negatives``): the catalogue, or the batch (+ uniform draws).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from towers.errors import TowerError


def _check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise TowerError(f"temperature must be > 0; got {temperature}")
    return float(temperature)


# ---- logit transforms: each takes and returns (B, C) logits over C candidates ----------------
def positive_columns(cand_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """(B,) the candidate column of each row's target. Candidates laid out as the batch's own
    targets first (in-batch: ``cand_ids[:B] == target_ids``) give row i column i; otherwise the
    column holding the target's id. A target that is no candidate raises TowerError."""
    batch = target_ids.shape[0]
    if cand_ids.shape[0] >= batch and bool((cand_ids[:batch] == target_ids).all()):
        return torch.arange(batch, device=cand_ids.device)
    match = target_ids.unsqueeze(1) == cand_ids.unsqueeze(0)  # (B, C)
    if not bool(match.any(dim=1).all()):
        raise TowerError("a training target is not among the candidates: an excluded (new) "
                         "item, which must not be a training target, or candidates that miss "
                         "a target (they must hold the catalogue rows, or the batch's targets)")
    return match.int().argmax(dim=1)  # the first matching column


def correct_log_q(logits: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """logQ correction (Yi et al., RecSys 2019): subtract each candidate's log sampling
    probability ``log_q`` (C,), so a sampled softmax approximates the full one."""
    return logits - log_q.unsqueeze(0)


def mask_accidental_hits(logits: torch.Tensor, cand_ids: torch.Tensor, target_ids: torch.Tensor,
                         labels: torch.Tensor) -> torch.Tensor:
    """A column holding the row's target item, other than its positive column, is no negative."""
    hits = target_ids.unsqueeze(1) == cand_ids.unsqueeze(0)  # (B, C)
    hits[torch.arange(len(labels), device=labels.device), labels] = False
    return logits.masked_fill(hits, float("-inf"))


def history_columns(cand_ids: torch.Tensor, history_idx: torch.Tensor) -> torch.Tensor:
    """(B, C) bool: True where the candidate is one of the row's session items (``history_idx``
    (B, L), -1 = padding). Unique candidate ids (a catalogue table) take a sorted lookup and a
    scatter, (B, L) work; repeated ids (in-batch) a (B, L, C) comparison."""
    batch, n_cand = history_idx.shape[0], cand_ids.shape[0]
    order = torch.argsort(cand_ids)
    ordered = cand_ids[order]
    if n_cand and bool((ordered[1:] != ordered[:-1]).all()):
        pos = torch.searchsorted(ordered, history_idx.clamp(min=0)).clamp(max=max(n_cand - 1, 0))
        found = (ordered[pos] == history_idx) & (history_idx >= 0)
        cols = torch.where(found, order[pos], torch.full_like(pos, n_cand))
        mask = torch.zeros(batch, n_cand + 1, dtype=torch.bool, device=cand_ids.device)
        mask.scatter_(1, cols, True)
        return mask[:, :n_cand]
    return (history_idx.unsqueeze(2) == cand_ids.view(1, 1, -1)).any(dim=1)


def mask_history(logits: torch.Tensor, cand_ids: torch.Tensor, history_idx: torch.Tensor,
                 target_ids: torch.Tensor) -> torch.Tensor:
    """The row's session items are not its negatives; its target stays (a repeat is a valid
    positive)."""
    seen = history_columns(cand_ids, history_idx)
    seen &= target_ids.unsqueeze(1) != cand_ids.unsqueeze(0)
    return logits.masked_fill(seen, float("-inf"))


def mask_never_negatives(logits: torch.Tensor, never_negative: torch.Tensor,
                         labels: torch.Tensor) -> torch.Tensor:
    """Candidates in ``never_negative`` (C,) bool (held-out / never-interacted items) sit at -inf
    for every row; a row whose positive is one of them raises TowerError."""
    if bool(never_negative[labels].any()):
        raise TowerError("a training target is an excluded (new) item; new items must not "
                         "be training targets: drop them from the training examples")
    return logits.masked_fill(never_negative.unsqueeze(0), float("-inf"))


class RetrievalLoss(nn.Module):
    """Softmax cross-entropy of each row's target among candidate items, as TFRS's retrieval
    task: ``loss(user_emb, cand_emb, cand_ids, target_ids, log_q=, history_idx=,
    never_negative=)`` with L2-normalised (B, dim) users and (C, dim) candidates. The logits
    ``u . v / T`` pass through the transforms above: logQ correction (when ``logq_correction``),
    accidental hits, the history mask (when ``mask_history``), never-negatives.

    ``negatives`` names the candidates the training module builds: ``"catalogue"`` (every item
    that may be a negative, :class:`FullSoftmaxLoss`) or ``"batch"`` (the batch's targets plus
    ``n_mixed_negatives`` uniform draws, :class:`InBatchSoftmaxLoss`).
    """

    negatives = "catalogue"

    def __init__(self, temperature: float = 0.07, logq_correction: bool = False,
                 mask_history: bool = False, n_mixed_negatives: int = 0) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.logq_correction = bool(logq_correction)
        self.mask_history = bool(mask_history)
        if n_mixed_negatives < 0:
            raise TowerError(f"n_mixed_negatives must be >= 0; got {n_mixed_negatives}")
        self.n_mixed_negatives = int(n_mixed_negatives)

    def logits(self, user_emb: torch.Tensor, cand_emb: torch.Tensor, cand_ids: torch.Tensor,
               target_ids: torch.Tensor, log_q: torch.Tensor | None = None,
               history_idx: torch.Tensor | None = None,
               never_negative: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, C), labels (B,)): the transformed logits and each row's positive column."""
        if (user_emb.dim() != 2 or cand_emb.dim() != 2 or user_emb.shape[1] != cand_emb.shape[1]
                or tuple(cand_ids.shape) != (cand_emb.shape[0],)
                or tuple(target_ids.shape) != (user_emb.shape[0],)):
            raise TowerError(f"expected user_emb (B, dim), cand_emb (C, dim), cand_ids (C,), "
                             f"target_ids (B,); got {tuple(user_emb.shape)}, "
                             f"{tuple(cand_emb.shape)}, {tuple(cand_ids.shape)}, "
                             f"{tuple(target_ids.shape)}")
        labels = positive_columns(cand_ids, target_ids)
        logits = user_emb @ cand_emb.T / self.temperature  # (B, C)
        if self.logq_correction:
            if log_q is None:
                raise TowerError("logq_correction=True needs log_q (C,), the log sampling "
                                 "probability of each candidate; pass it or set "
                                 "logq_correction=False")
            logits = correct_log_q(logits, log_q)
        logits = mask_accidental_hits(logits, cand_ids, target_ids, labels)
        if self.mask_history and history_idx is not None:
            logits = mask_history(logits, cand_ids, history_idx, target_ids)
        if never_negative is not None:
            logits = mask_never_negatives(logits, never_negative, labels)
        return logits, labels

    def forward(self, user_emb: torch.Tensor, cand_emb: torch.Tensor, cand_ids: torch.Tensor,
                target_ids: torch.Tensor, log_q: torch.Tensor | None = None,
                history_idx: torch.Tensor | None = None,
                never_negative: torch.Tensor | None = None) -> torch.Tensor:
        logits, labels = self.logits(user_emb, cand_emb, cand_ids, target_ids, log_q,
                                     history_idx, never_negative)
        return F.cross_entropy(logits, labels)


class InBatchSoftmaxLoss(RetrievalLoss):
    """Sampled softmax over in-batch negatives, with logQ correction, accidental-hit masking and
    optional mixed (uniformly sampled) negatives.

    Candidates are the batch's positives (row i's positive is column i) plus ``n_mixed_negatives``
    uniformly sampled catalogue items; ``s_ij = u_i . v_j / T - log q_j``.

    - **logQ correction** (Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus
      Item Recommendations", RecSys 2019): in-batch negatives are drawn with the items'
      popularity, so popular items are over-penalised; subtracting ``log q_j`` corrects the
      sampled softmax towards the full one, the positive's column included.
    - **Accidental hits**: another column holding row i's item is not a negative for row i.
    - **Mixed negatives** (Yang et al., "Mixed Negative Sampling for Learning Two-tower Neural
      Networks in Recommendations", WWW 2020): uniform draws reach the long tail that
      popularity-sampled in-batch negatives rarely contain. Both pools' ``log_q`` share one
      scale: expected draws per batch, ``log(B p_j)`` in-batch and ``log(M / N)`` uniform
      (``TwoTowerModule`` passes these).
    - **History masking** (``mask_history``): the row's session items are not its negatives.

    Keep this loss for catalogues whose vectors are too costly to compute in full each step;
    otherwise ``FullSoftmaxLoss`` is better (docs/architecture.md, Lessons).
    """

    negatives = "batch"

    def __init__(self, temperature: float = 0.07, logq_correction: bool = True,
                 n_mixed_negatives: int = 0, mask_history: bool = False) -> None:
        super().__init__(temperature, logq_correction, mask_history, n_mixed_negatives)


class FullSoftmaxLoss(RetrievalLoss):
    """Cross-entropy of the target against every catalogue item that may be a negative.

    Minimises ``-log softmax(u . V^T / T)[target]`` over the catalogue: the exact objective that
    sampled softmax (Jean et al., ACL 2015; Yi et al., RecSys 2019) approximates, with no
    sampling bias to correct. Affordable whenever catalogue vectors are cheap to compute each
    step (frozen BERT: one adapter matmul) (docs/architecture.md, Lessons).

    ``never_negative`` removes items from the softmax: the held-out **new items** must never be
    negatives, or training pushes them down at every step (docs/architecture.md, Lessons).

    ``mask_history`` also removes each row's own session items from its softmax, the target
    excepted. Evaluation and serving never rank a session's items (they are masked), but as
    negatives they are the items a text tower finds most similar to the session, so unmasked
    training spends its gradient pushing the user vector away from them.
    """

    negatives = "catalogue"

    def __init__(self, temperature: float = 0.07, mask_history: bool = True) -> None:
        super().__init__(temperature, logq_correction=False, mask_history=mask_history)
