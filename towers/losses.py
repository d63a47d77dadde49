"""Retrieval losses of the two-tower model: what each optimises, and why.

Both take L2-normalised user and item vectors and a temperature ``T`` (0.07 beat 0.2 by ~0.016
R@10, docs/architecture.md, Lessons).
``needs_catalogue`` tells the training module which inputs to build.
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


def history_mask(history_idx: torch.Tensor, n_items: int, target_idx: torch.Tensor) -> torch.Tensor:
    """(B, n_items) bool: True at each row's history items (``history_idx`` (B, L), -1 = padding),
    except the row's own target (a repeated item stays a valid positive)."""
    batch = history_idx.shape[0]
    mask = torch.zeros(batch, n_items + 1, dtype=torch.bool, device=history_idx.device)
    cols = torch.where(history_idx >= 0, history_idx, torch.full_like(history_idx, n_items))
    mask.scatter_(1, cols, True)
    mask = mask[:, :n_items]
    mask[torch.arange(batch, device=mask.device), target_idx] = False
    return mask


class InBatchSoftmaxLoss(nn.Module):
    """Sampled softmax over in-batch negatives, with logQ correction, accidental-hit masking and
    optional mixed (uniformly sampled) negatives.

    For row i (user ``u_i``, positive item ``v_i``) it minimises ``-log softmax_i(s_i.)`` with
    ``s_ij = u_i . v_j / T - log q_j`` over the batch's positives j (plus M extra columns of
    uniformly sampled items). Row i's positive is column i, so labels = arange(B).

    - **logQ correction** (Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus
      Item Recommendations", RecSys 2019): in-batch negatives are drawn with the items'
      popularity, so popular items are over-penalised; subtracting ``log q_j`` (q = the item's
      sampling probability) corrects the sampled softmax towards the full one. It applies to
      every column, the positive included.
    - **Accidental hits**: another row whose positive is the same item as row i's is not a
      negative for row i; its column is set to -inf in row i.
    - **Mixed negatives** (Yang et al., "Mixed Negative Sampling for Learning Two-tower Neural
      Networks in Recommendations", WWW 2020): uniformly sampled catalogue items reach the long
      tail that popularity-sampled in-batch negatives rarely contain. When mixing, both pools'
      ``log_q`` must be on one scale: the expected number of draws per batch, ``log(B p_j)`` for
      in-batch items and ``log(M / N)`` for uniform ones (``TwoTowerModule`` passes these).

    - **History masking** (``mask_history``): items already in row i's session are not
      negatives for row i (see ``FullSoftmaxLoss``).

    Keep this loss for catalogues whose vectors are too costly to compute in full each step;
    otherwise ``FullSoftmaxLoss`` is better (docs/architecture.md, Lessons).
    """

    needs_catalogue = False

    def __init__(
        self, temperature: float = 0.07, logq_correction: bool = True, n_mixed_negatives: int = 0,
        mask_history: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.logq_correction = bool(logq_correction)
        self.mask_history = bool(mask_history)
        if n_mixed_negatives < 0:
            raise TowerError(f"n_mixed_negatives must be >= 0; got {n_mixed_negatives}")
        self.n_mixed_negatives = int(n_mixed_negatives)

    def logits(
        self,
        user_emb: torch.Tensor,
        item_emb: torch.Tensor,
        item_idx: torch.Tensor,
        log_q: torch.Tensor | None = None,
        mixed_item_emb: torch.Tensor | None = None,
        mixed_item_idx: torch.Tensor | None = None,
        mixed_log_q: torch.Tensor | float | None = None,
        history_idx: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The corrected, masked logits (B, B + M); column i is row i's positive.
        ``history_idx`` (B, L) (-1 = padding) masks each row's session items when
        ``mask_history``."""
        batch = user_emb.shape[0]
        if item_emb.shape != user_emb.shape or tuple(item_idx.shape) != (batch,):
            raise TowerError(f"user_emb and item_emb must both be (B, dim) with item_idx (B,); "
                             f"got {tuple(user_emb.shape)}, {tuple(item_emb.shape)}, "
                             f"{tuple(item_idx.shape)}")
        if self.logq_correction and log_q is None:
            raise TowerError("logq_correction=True needs log_q (B,), the log sampling "
                             "probability of each positive; pass it or set logq_correction=False")
        logits = user_emb @ item_emb.T / self.temperature  # (B, B)
        if self.logq_correction:
            logits = logits - log_q.unsqueeze(0)  # type: ignore[union-attr]
        same = item_idx.unsqueeze(1) == item_idx.unsqueeze(0)  # (B, B)
        hits = same & ~torch.eye(batch, dtype=torch.bool, device=same.device)
        seen = None
        if self.mask_history and history_idx is not None:  # (B, L, 1) == (1, 1, B) -> (B, B)
            seen = (history_idx.unsqueeze(2) == item_idx.view(1, 1, -1)).any(dim=1)
            seen &= ~same  # never the row's own positive
            hits |= seen
        logits = logits.masked_fill(hits, float("-inf"))
        if mixed_item_emb is not None and mixed_item_emb.shape[0] > 0:
            if mixed_item_idx is None:
                raise TowerError("mixed_item_emb needs mixed_item_idx to mask accidental hits")
            mixed = user_emb @ mixed_item_emb.T / self.temperature  # (B, M)
            if self.logq_correction:
                if mixed_log_q is None:
                    raise TowerError("logq_correction=True needs mixed_log_q for mixed negatives")
                mixed = mixed - torch.as_tensor(mixed_log_q, dtype=mixed.dtype,
                                                device=mixed.device)
            drop = item_idx.unsqueeze(1) == mixed_item_idx.unsqueeze(0)  # (B, M)
            if seen is not None:
                drop |= (history_idx.unsqueeze(2) == mixed_item_idx.view(1, 1, -1)).any(dim=1)
            mixed = mixed.masked_fill(drop, float("-inf"))
            logits = torch.cat([logits, mixed], dim=1)  # (B, B + M)
        return logits

    def forward(
        self,
        user_emb: torch.Tensor,
        item_emb: torch.Tensor,
        item_idx: torch.Tensor,
        log_q: torch.Tensor | None = None,
        mixed_item_emb: torch.Tensor | None = None,
        mixed_item_idx: torch.Tensor | None = None,
        mixed_log_q: torch.Tensor | float | None = None,
        history_idx: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = self.logits(user_emb, item_emb, item_idx, log_q, mixed_item_emb,
                             mixed_item_idx, mixed_log_q, history_idx)
        labels = torch.arange(user_emb.shape[0], device=logits.device)
        return F.cross_entropy(logits, labels)


class FullSoftmaxLoss(nn.Module):
    """Cross-entropy of the target against every catalogue item that is not excluded.

    Minimises ``-log softmax(u . V^T / T)[target]`` over the whole catalogue: the exact objective
    that sampled softmax (Jean et al., ACL 2015; Yi et al., RecSys 2019) approximates, with no
    sampling bias to correct. Affordable whenever catalogue vectors are cheap to compute each
    step (frozen BERT: one adapter matmul); it beat in-batch softmax + logQ by ~0.012 R@10 at
    ~30% more time per epoch (docs/architecture.md, Lessons).

    ``exclude_mask`` (n_items,) bool removes items from the softmax: the held-out **new items**
    must never be negatives, or training pushes them down at every step
    (docs/architecture.md, Lessons).

    ``mask_history`` also removes each row's own session items (``history_idx``) from its
    softmax, the row's target excepted. Evaluation and serving never rank a session's items
    (they are masked), but as negatives they are the items a text tower finds most similar to
    the session, so unmasked training spends its gradient pushing the user vector away from
    them; masking aligns training with how the ranking is used.
    """

    needs_catalogue = True

    def __init__(self, temperature: float = 0.07, mask_history: bool = False) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.mask_history = bool(mask_history)

    def logits(
        self, user_emb: torch.Tensor, all_item_emb: torch.Tensor,
        exclude_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, n_items) with excluded items at -inf; ``exclude_mask`` is (n_items,) for
        every row or (B, n_items) per row."""
        if user_emb.dim() != 2 or all_item_emb.dim() != 2 or (
                user_emb.shape[1] != all_item_emb.shape[1]):
            raise TowerError(f"user_emb (B, dim) and all_item_emb (n_items, dim) must share dim; "
                             f"got {tuple(user_emb.shape)}, {tuple(all_item_emb.shape)}")
        logits = user_emb @ all_item_emb.T / self.temperature  # (B, n_items)
        if exclude_mask is not None:
            logits = logits.masked_fill(exclude_mask, float("-inf"))  # broadcasts (n_items,)
        return logits

    def forward(
        self, user_emb: torch.Tensor, all_item_emb: torch.Tensor, target_idx: torch.Tensor,
        exclude_mask: torch.Tensor | None = None, history_idx: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if exclude_mask is not None and bool(exclude_mask[target_idx].any()):
            raise TowerError("a training target is an excluded (new) item; new items must not "
                             "be training targets: drop them from the training examples")
        if self.mask_history and history_idx is not None:  # one (B, n_items) mask, one fill
            seen = history_mask(history_idx, all_item_emb.shape[0], target_idx)
            exclude_mask = seen if exclude_mask is None else seen | exclude_mask
        return F.cross_entropy(self.logits(user_emb, all_item_emb, exclude_mask), target_idx)
