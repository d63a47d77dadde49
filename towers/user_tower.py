"""The user tower: a session's recent events -> one L2-normalised user vector.

Each event's vector is the item vector from the item tower, or for a search event the query
text's vector (same BERT, same adapter); a learned event-type embedding and a position embedding
(0 = the most recent event) are added before the sequence encoder. The output keeps an open
"recent items" path: ``user = normalise(recency-weighted mean of event vectors + W_out h)`` with
``W_out`` zero-initialised, so at initialisation the user vector is the recency-weighted mean of
the session's item/query vectors (the zero-shot baseline) and training only adds to it
(docs/architecture.md, Lessons: a randomly initialised output layer nearly stalled training).

``hidden_dim`` narrows the sequence encoder: event vectors pass through a bias-free, orthogonally
initialised projection ``dim -> hidden_dim`` before the type and position embeddings are added,
the GRU / transformer runs at ``hidden_dim``, and ``W_out`` maps back to ``dim``. The recurrent
cost per event falls with ``hidden_dim**2`` (384 -> 128: ~6x fewer multiply-adds); the residual
mean still reads the full ``dim``-wide vectors. ``hidden_dim=None`` (or ``= dim``) is the original
full-width tower, parameter for parameter, so towers saved before the option existed load as
they were.

``forward_indexed`` takes each distinct event vector once (``vectors`` (V, dim)) and an index
(B, L) into it: the projection runs once per distinct item or query of the batch instead of once
per event (in a MovieLens batch of 128 x 50 events the same film recurs many times), with the
same result as ``forward`` on the gathered (B, L, dim) tensor.

Input layout (see ``towers.data``): left-aligned, column 0 = the oldest kept event, ``lengths``
= number of events per row (1..L); columns >= length are padding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from recdata.schema import EVENT_TYPES
from towers.errors import EmptySessionError, TowerError

USER_ENCODERS: tuple[str, ...] = ("gru", "transformer", "mean")
PAD_TYPE = len(EVENT_TYPES)  # event-type index of padding
TYPE_INDEX: dict[str, int] = {name: i for i, name in enumerate(EVENT_TYPES)}


class UserTower(nn.Module):
    """Session encoder. ``kind``: ``gru`` (default: matched a 2-layer transformer and ran ~25%
    faster, docs/architecture.md, Lessons), ``transformer`` (pre-LN, causal, pad-masked) or ``mean``
    (recency-weighted mean of the enriched event vectors); ``hidden_dim`` is the encoder's width
    (None = ``dim``)."""

    padded_min_fill = 0.6  # GRU: padded route when events fill this share of (B, L), see below

    def __init__(
        self,
        dim: int,
        kind: str = "gru",
        max_seq_len: int = 50,
        n_layers: int | None = None,
        n_heads: int = 4,
        dropout: float = 0.1,
        recency_decay: float = 0.8,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        if kind not in USER_ENCODERS:
            raise TowerError(f"kind= must be one of {list(USER_ENCODERS)}, got {kind!r}")
        if dim < 1 or max_seq_len < 1 or not 0.0 < recency_decay < 1.0:
            raise TowerError(f"need dim >= 1, max_seq_len >= 1, 0 < recency_decay < 1; got "
                             f"{dim}, {max_seq_len}, {recency_decay}")
        if hidden_dim is not None and hidden_dim < 1:
            raise TowerError(f"hidden_dim must be >= 1 or null (= dim); got {hidden_dim}")
        width = int(hidden_dim or dim)  # the sequence encoder's width
        if kind == "transformer" and width % n_heads:
            raise TowerError(f"the transformer's width {width} (hidden_dim, or dim when null) "
                             f"must be divisible by n_heads={n_heads}")
        self.dim, self.kind, self.max_seq_len = int(dim), kind, int(max_seq_len)
        self.hidden_dim = width
        self.config: dict[str, Any] = {
            "dim": dim, "kind": kind, "max_seq_len": max_seq_len, "n_layers": n_layers,
            "n_heads": n_heads, "dropout": dropout, "recency_decay": recency_decay,
            "hidden_dim": hidden_dim}
        self.in_proj: nn.Linear | None = None
        if width != self.dim:  # rows orthonormal: event geometry kept, at the narrower width
            self.in_proj = nn.Linear(self.dim, width, bias=False)
            nn.init.orthogonal_(self.in_proj.weight)
        self.type_emb = nn.Embedding(len(EVENT_TYPES) + 1, width, padding_idx=PAD_TYPE)
        self.pos_emb = nn.Embedding(max_seq_len, width)
        for emb in (self.type_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.type_emb.weight[PAD_TYPE].zero_()
        self.dropout = nn.Dropout(dropout)
        # learnable recency decay of the residual mean, kept in (0, 1) by a sigmoid
        logit = math.log(recency_decay / (1 - recency_decay))
        self.recency_logit = nn.Parameter(torch.tensor(logit))
        self.gru: nn.GRU | None = None
        self.transformer: nn.TransformerEncoder | None = None
        if kind == "gru":
            layers = n_layers or 1
            self.gru = nn.GRU(width, width, num_layers=layers, batch_first=True,
                              dropout=dropout if layers > 1 else 0.0)
        elif kind == "transformer":
            block = nn.TransformerEncoderLayer(width, n_heads, dim_feedforward=2 * width,
                                               dropout=dropout, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.transformer = nn.TransformerEncoder(block, n_layers or 2,
                                                     norm=nn.LayerNorm(width),
                                                     enable_nested_tensor=False)
        self.out = nn.Linear(width, self.dim)
        nn.init.zeros_(self.out.weight)  # zero: the residual path alone at initialisation
        nn.init.zeros_(self.out.bias)

    def _check(self, event_emb: torch.Tensor, event_type: torch.Tensor,
               lengths: torch.Tensor) -> None:
        if event_emb.dim() != 3 or event_emb.shape[-1] != self.dim:
            raise TowerError(f"event_emb must be (batch, seq, {self.dim}); got "
                             f"{tuple(event_emb.shape)}")
        batch, seq = event_emb.shape[:2]
        if seq > self.max_seq_len:
            raise TowerError(f"sessions hold {seq} events but max_seq_len={self.max_seq_len}; "
                             "keep the most recent max_seq_len (towers.data does)")
        if tuple(event_type.shape) != (batch, seq) or tuple(lengths.shape) != (batch,):
            raise TowerError(f"event_type must be ({batch}, {seq}) and lengths ({batch},); got "
                             f"{tuple(event_type.shape)}, {tuple(lengths.shape)}")
        if batch and int(lengths.min()) < 1:
            rows = torch.nonzero(lengths < 1).flatten()[:5].tolist()
            raise EmptySessionError(f"session row(s) {rows} have no events; a user vector needs "
                                    "at least one item or query event (fall back to popularity)")
        if batch and int(lengths.max()) > seq:
            raise TowerError(f"lengths must be <= {seq}; got {int(lengths.max())}")

    def forward(
        self, event_emb: torch.Tensor, event_type: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """``event_emb`` (B, L, dim) item/query vectors, ``event_type`` (B, L) EVENT_TYPES
        indices, ``lengths`` (B,) events per row -> user vectors (B, dim), L2-normalised."""
        self._check(event_emb, event_type, lengths)
        projected = event_emb if self.in_proj is None else self.in_proj(event_emb)
        return self._encode(event_emb, projected, event_type, lengths)

    def forward_indexed(
        self, vectors: torch.Tensor, event_index: torch.Tensor, event_type: torch.Tensor,
        lengths: torch.Tensor,
    ) -> torch.Tensor:
        """``forward`` with each distinct event vector given once: ``vectors`` (V, dim) and
        ``event_index`` (B, L) int64 rows of ``vectors`` (padding may point at any row, e.g. a
        zero row). Equal to ``forward(vectors[event_index], ...)``; the projection to
        ``hidden_dim`` runs on the V vectors instead of the B * L events."""
        if vectors.dim() != 2 or vectors.shape[-1] != self.dim:
            raise TowerError(f"vectors must be (n_vectors, {self.dim}); got "
                             f"{tuple(vectors.shape)}")
        if event_index.dim() != 2 or event_index.dtype != torch.long:
            raise TowerError(f"event_index must be (batch, seq) int64; got "
                             f"{tuple(event_index.shape)} {event_index.dtype}")
        event_emb = vectors[event_index]  # (B, L, dim)
        self._check(event_emb, event_type, lengths)
        projected = event_emb if self.in_proj is None else self.in_proj(vectors)[event_index]
        return self._encode(event_emb, projected, event_type, lengths)

    def _encode(
        self, event_emb: torch.Tensor, projected: torch.Tensor, event_type: torch.Tensor,
        lengths: torch.Tensor,
    ) -> torch.Tensor:
        """``event_emb`` (B, L, dim) feeds the residual mean, ``projected`` (B, L, hidden_dim)
        (the same vectors at the encoder's width) the sequence encoder."""
        batch, seq = event_emb.shape[:2]
        longest = int(lengths.max()) if batch else seq
        if longest < seq:  # columns past every row's length are padding in every row
            event_emb, projected = event_emb[:, :longest], projected[:, :longest]
            event_type, seq = event_type[:, :longest], longest
        steps = torch.arange(seq, device=event_emb.device)
        valid = steps < lengths.unsqueeze(1)  # (B, L)
        pos = (lengths.unsqueeze(1) - 1 - steps).clamp(min=0)  # (B, L), 0 = most recent
        decay = torch.sigmoid(self.recency_logit)
        weight = decay ** pos.to(event_emb.dtype) * valid  # (B, L)
        weight = weight / weight.sum(dim=1, keepdim=True)
        recent = (weight.unsqueeze(-1) * event_emb).sum(dim=1)  # (B, dim)
        event_type = event_type.masked_fill(~valid, PAD_TYPE)
        enriched = projected + self.type_emb(event_type) + self.pos_emb(pos)  # (B, L, width)
        enriched = self.dropout(enriched * valid.unsqueeze(-1))
        if self.gru is not None:
            hidden = self._gru_last_state(enriched, lengths)  # (B, width)
        elif self.transformer is not None:
            causal = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=valid.device), 1)
            states = self.transformer(enriched, mask=causal, src_key_padding_mask=~valid)
            hidden = states[torch.arange(batch, device=valid.device), lengths - 1]  # (B, width)
        else:
            hidden = (weight.unsqueeze(-1) * enriched).sum(dim=1)  # (B, width)
        return F.normalize(recent + self.out(hidden), dim=-1)

    def _gru_last_state(self, enriched: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The GRU's (last layer's) state after each row's last event, (B, width). Two exact
        routes: over the padded batch, reading each row's state at its own last event (a GRU is
        causal, so the padding after it never reaches that state), or over packed sequences
        (no step on padding). Padded runs faster per step on CPU (the input projection of all
        steps is one matmul), packed skips the padding: padded when rows fill at least
        ``padded_min_fill`` of the (B, L) grid (measured: padded ~0.6x packed's time per step)."""
        assert self.gru is not None
        batch, seq = enriched.shape[:2]
        if batch and float(lengths.sum()) >= self.padded_min_fill * batch * seq:
            states, _ = self.gru(enriched)  # (B, L, width)
            return states[torch.arange(batch, device=enriched.device), lengths - 1]
        packed = pack_padded_sequence(enriched, lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        _, last_hidden = self.gru(packed)  # (layers, B, width)
        return last_hidden[-1]
