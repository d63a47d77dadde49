"""The classic ID-only item tower (``tower=id``): one learned vector per catalogue item, no text.

It is the baseline the text tower is measured against: an item never seen in training keeps a
zero vector (it scores 0 for every user, so it is never recommended on merit), and new text
cannot be embedded at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from towers.encoder_cache import update_tensor_digest
from towers.errors import TowerError
from towers.heads import n_items_from, warm_mask


class IdItemTower(nn.Module):
    """Item vector = L2-normalised ID embedding; zero for items with no training interactions.

    Takes the same keyword arguments as ``ItemTower`` where they make sense (``item_texts`` only
    sets the catalogue size; ``query_texts`` is ignored) so configs can swap the two.
    """

    mode = "id"
    supports_text = False
    encodes_in_forward = False

    def __init__(
        self,
        n_items: int | None = None,
        dim: int = 64,
        item_texts: Sequence[str] | None = None,
        query_texts: Sequence[str] | None = None,
        item_popularity: Sequence[float] | np.ndarray | None = None,
        init_std: float = 0.1,
    ) -> None:
        super().__init__()
        texts = n_items_from(item_texts, n_items)
        self.n_items = len(texts) if texts is not None else int(n_items)  # type: ignore[arg-type]
        if dim < 1:
            raise TowerError(f"dim must be >= 1; got {dim}")
        self.dim = int(dim)
        self.config: dict[str, Any] = {"dim": self.dim, "init_std": init_std}
        self.emb = nn.Embedding(self.n_items, self.dim)
        nn.init.normal_(self.emb.weight, std=init_std)
        self.register_buffer("warm_mask", warm_mask(item_popularity, self.n_items))

    def trainable_parameter_names(self) -> list[str]:
        return [name for name, param in self.named_parameters() if param.requires_grad]

    def text_encoder_parameters(self) -> list[nn.Parameter]:
        return []

    def set_query_texts(self, query_texts: Sequence[str]) -> None:
        """No text path: search events get a zero vector (their event type still counts)."""

    def refresh_base_emb(self) -> None:
        """Nothing to refresh."""

    def item_emb(self, item_idx: torch.Tensor, from_table: bool = False) -> torch.Tensor:
        if item_idx.dtype != torch.long or (item_idx.numel() and (
                int(item_idx.min()) < 0 or int(item_idx.max()) >= self.n_items)):
            raise TowerError(f"item_idx must be int64 indices in [0, {self.n_items}); got dtype "
                             f"{item_idx.dtype}, shape {tuple(item_idx.shape)}")
        vec = self.emb(item_idx) * self.warm_mask[item_idx].unsqueeze(-1).to(self.emb.weight.dtype)
        return F.normalize(vec, dim=-1)  # (B, dim); unseen items stay 0

    def all_item_emb(self) -> torch.Tensor:
        return self.item_emb(torch.arange(self.n_items, device=self.emb.weight.device))

    def query_emb(self, query_idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(query_idx), self.dim, device=self.emb.weight.device)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        raise TowerError("tower=id has no text encoder: it cannot embed new items or query text. "
                         "Use a text tower (tower=bert or tower=tiny) to serve cold-start items")

    def fingerprint(self) -> str:
        digest = hashlib.sha256(b"IdItemTower")
        update_tensor_digest(digest, self.state_dict().items())
        return digest.hexdigest()

    def save(self, directory: str | Path) -> str:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(out / "item_tower.safetensors"))
        meta = {"class": "IdItemTower", "n_items": self.n_items, "dim": self.dim,
                "config": self.config, "fingerprint": self.fingerprint()}
        (out / "item_tower.json").write_text(json.dumps(meta, indent=1))
        return meta["fingerprint"]

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> IdItemTower:
        src = Path(directory)
        meta = json.loads((src / "item_tower.json").read_text())
        tower = cls(n_items=meta["n_items"], **meta["config"])
        tower.load_state_dict(load_file(str(src / "item_tower.safetensors")))
        return tower.to(device or "cpu")
