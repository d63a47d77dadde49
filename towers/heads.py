"""Small parts shared by the item towers: the residual adapter and catalogue bookkeeping."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from towers.errors import TowerError


def warm_mask(item_popularity: Sequence[float] | np.ndarray | None, n_items: int) -> torch.Tensor:
    """[n_items] bool: True for items with training interactions (all True when unknown)."""
    if item_popularity is None:
        return torch.ones(n_items, dtype=torch.bool)
    counts = np.asarray(item_popularity, dtype=np.float64).reshape(-1)
    if counts.shape != (n_items,):
        raise TowerError(f"item_popularity must hold one training count per catalogue item "
                         f"({n_items}); got shape {counts.shape}")
    return torch.from_numpy(counts > 0)


def n_items_from(item_texts: Sequence[str] | None, n_items: int | None) -> list[str] | None:
    """Check that the catalogue size is given and consistent; return item_texts as a list."""
    if item_texts is None:
        if n_items is None or int(n_items) < 1:
            raise TowerError(f"give item_texts (the catalogue's texts, catalogue order) or "
                             f"n_items >= 1; got n_items={n_items!r}")
        return None
    texts = list(item_texts)
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise TowerError("item_texts must be a non-empty list of non-empty str, one per item "
                         "(recdata.text.catalogue_texts(catalogue))")
    if n_items is not None and int(n_items) != len(texts):
        raise TowerError(f"n_items={n_items} but item_texts has {len(texts)} entries")
    return texts


class ResidualAdapter(nn.Module):
    """``v + W2 gelu(W1 v)`` with W2 zero-initialised, so it starts as the identity (a randomly
    initialised output layer nearly stalled training, docs/architecture.md, Lessons), then an
    orthogonally initialised projection to ``out_dim`` only when it differs from ``in_dim``."""

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int | None = None):
        super().__init__()
        self.up = nn.Linear(in_dim, hidden_dim or in_dim)  # W1
        self.down = nn.Linear(hidden_dim or in_dim, in_dim)  # W2
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        self.proj: nn.Linear | None = None
        if out_dim is not None and out_dim != in_dim:
            self.proj = nn.Linear(in_dim, out_dim, bias=False)
            nn.init.orthogonal_(self.proj.weight)

    def forward(self, text_emb: torch.Tensor) -> torch.Tensor:  # (n, in_dim) -> (n, out_dim)
        out = text_emb + self.down(F.gelu(self.up(text_emb)))
        return out if self.proj is None else self.proj(out)
