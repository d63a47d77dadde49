"""The item tower: a sentence-transformers BERT over item text, a residual adapter, and an
optional ID embedding trained with ID dropout.

Fine-tune modes (``finetune=FineTune(mode=...)``, ``tower.finetune`` in conf/tower/bert.yaml):

- ``frozen``: BERT is never trained. Item base vectors are encoded once (through the encoder
  cache when ``cache_dir`` is set) into the buffer ``base_item_emb`` [n_items, d_text]; every
  step maps the whole catalogue through the adapter in one matmul.
- ``top_layers``: the last ``FineTune.top_layers`` transformer blocks train (the pooler, unused by
  mean pooling, stays as it is).
- ``lora``: LoRA adapters (peft) on attention query/value; BERT's own weights stay fixed.
- ``full``: every BERT weight is trained.

In the fine-tune modes ``item_emb(idx)`` runs BERT on the items' texts in the forward pass (with
grad when grad is enabled). Catalogue-wide vectors (``all_item_emb``, history items with
``from_table=True``, query vectors) come from ``base_item_emb`` / ``base_query_emb``, re-encoded
under no_grad by ``refresh_base_emb()`` (the training module calls it at the start of every
training and validation epoch) and passed through the adapter with grad. Negatives and history
inputs thus see BERT weights at most one epoch old while positives see the current ones (stale
negatives as in ANCE), which keeps a step to one BERT pass over the batch's targets.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from towers.bert import (
    apply_lora,
    eval_mode,
    load_sentence_model,
    merged_copy,
    sentence_embedding,
    text_dim,
    transformer_layers,
)
from towers.encoder_cache import encode_cached, model_fingerprint, update_tensor_digest
from towers.errors import TowerError
from towers.graph import EntityEncoder, build_entity_encoder, graph_explanation
from towers.heads import ResidualAdapter, n_items_from, warm_mask

log = logging.getLogger(__name__)

ITEM_TOWER_MODES: tuple[str, ...] = ("frozen", "top_layers", "lora", "full")


@dataclass(frozen=True)
class FineTune:
    """How the item tower's BERT trains (``tower.finetune``): ``mode`` (see the module doc),
    the blocks trained in ``top_layers`` mode, and the LoRA adapter's rank / scaling / dropout
    in ``lora`` mode. The heads (adapter, ID embedding, entity part) always train."""

    mode: str = "frozen"
    top_layers: int = 2
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.mode not in ITEM_TOWER_MODES:
            raise TowerError(f"finetune.mode must be one of {list(ITEM_TOWER_MODES)}, got "
                             f"{self.mode!r}")
        if self.top_layers < 1 or self.lora_r < 1 or not 0.0 <= self.lora_dropout < 1.0:
            raise TowerError(f"finetune needs top_layers >= 1, lora_r >= 1, 0 <= lora_dropout "
                             f"< 1; got {self.top_layers}, {self.lora_r}, {self.lora_dropout}")

    @classmethod
    def of(cls, value: FineTune | Mapping[str, Any] | None) -> FineTune:
        """``value`` as a FineTune: None = frozen; a mapping (a config node) = its keys."""
        if value is None or isinstance(value, FineTune):
            return value or cls()
        if not isinstance(value, Mapping):
            raise TowerError(f"finetune must be a FineTune or a mapping of its fields; got "
                             f"{type(value).__name__}")
        unknown = sorted(set(value) - {f.name for f in fields(cls)} - {"_target_"})
        if unknown:
            raise TowerError(f"finetune: unknown keys {unknown}; expected "
                             f"{[f.name for f in fields(cls)]}")
        return cls(**{k: v for k, v in value.items() if k != "_target_"})


class ItemTower(nn.Module):
    """BERT text vector -> residual adapter (+ ID embedding) (+ entity part) -> L2-normalised
    item vector. ``graph=True`` adds :class:`towers.graph.EntityEncoder` over ``item_graph``
    (``recdata.graph.GraphArrays`` of the catalogue, or a dict with the same fields)."""

    supports_text = True

    def __init__(
        self,
        model_path: str,
        item_texts: Sequence[str] | None = None,
        n_items: int | None = None,
        finetune: FineTune | Mapping[str, Any] | None = None,
        output_dim: int | None = None,
        adapter_hidden: int | None = None,
        id_dim: int = 0,
        id_dropout: float = 0.5,
        item_popularity: Sequence[float] | np.ndarray | None = None,
        query_texts: Sequence[str] | None = None,
        cache_dir: str | None = None,
        max_seq_length: int | None = None,
        encode_batch_size: int = 64,
        show_progress: bool = True,
        graph: bool = False,
        graph_agg: str = "mean",
        item_graph: Any = None,
        graph_spec: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        tune = FineTune.of(finetune)
        texts = n_items_from(item_texts, n_items)
        n_items = len(texts) if texts is not None else int(n_items)  # type: ignore[arg-type]
        if not 0.0 <= id_dropout <= 1.0 or id_dim < 0:
            raise TowerError(f"need 0 <= id_dropout <= 1, id_dim >= 0; got {id_dropout}, "
                             f"{id_dim}")
        self.mode, self.n_items, self.id_dropout = tune.mode, n_items, float(id_dropout)
        self.cache_dir, self.batch_size = cache_dir, encode_batch_size
        self.show_progress = show_progress
        self.config: dict[str, Any] = {
            "output_dim": output_dim, "adapter_hidden": adapter_hidden, "id_dim": id_dim,
            "id_dropout": id_dropout, "finetune": asdict(tune),
            "max_seq_length": max_seq_length, "encode_batch_size": encode_batch_size,
            "graph": bool(graph), "graph_agg": graph_agg, "graph_spec": dict(graph_spec or {})}
        self.bert = load_sentence_model(model_path, max_seq_length=max_seq_length)
        self.d_text = text_dim(self.bert)
        self.dim = int(output_dim or self.d_text)
        self.adapter = ResidualAdapter(self.d_text, adapter_hidden, self.dim)
        self.id_emb: nn.Embedding | None = None
        self.id_proj: nn.Linear | None = None
        if id_dim > 0:
            self.id_emb = nn.Embedding(n_items, id_dim)
            nn.init.zeros_(self.id_emb.weight)  # starts as the text-only tower
            if id_dim != self.dim:
                self.id_proj = nn.Linear(id_dim, self.dim, bias=False)
                nn.init.orthogonal_(self.id_proj.weight)
        self.register_buffer("warm_mask", warm_mask(item_popularity, n_items))
        self.register_buffer("base_item_emb", torch.zeros(n_items, self.d_text))
        self.register_buffer("base_query_emb", torch.zeros(0, self.d_text), persistent=False)
        self.item_texts, self.query_texts = texts, []
        if texts is not None:  # before LoRA wraps BERT, so the cache is shared with frozen runs
            self.base_item_emb.copy_(self._encode_base(texts, use_cache=True))
        self.graph: EntityEncoder | None = None
        if graph:
            self.graph = build_entity_encoder(
                item_graph, graph_agg, self.n_items, self.d_text, self.dim,
                encode=(lambda names: self._encode_base(names, use_cache=True)) if texts else None)
        self._configure_trainable(tune)
        if query_texts:
            self.set_query_texts(query_texts)

    # ---- configuration -------------------------------------------------------------------
    def _configure_trainable(self, tune: FineTune) -> None:
        for param in self.bert.parameters():
            param.requires_grad_(self.mode == "full")
        if self.mode == "top_layers":
            layers = transformer_layers(self.bert)
            for param in layers[-min(tune.top_layers, len(layers)):].parameters():
                param.requires_grad_(True)
        elif self.mode == "lora":
            apply_lora(self.bert, tune.lora_r, tune.lora_alpha, tune.lora_dropout)
            for name, param in self.bert.named_parameters():
                param.requires_grad_("lora_" in name)
        if self.mode == "frozen":
            self.bert.eval()

    def train(self, mode: bool = True) -> ItemTower:
        super().train(mode)
        if self.mode == "frozen":
            self.bert.eval()  # never trained: no dropout
        return self

    @property
    def encodes_in_forward(self) -> bool:
        """True when ``item_emb`` runs BERT (the fine-tune modes)."""
        return self.mode != "frozen"

    def trainable_parameter_names(self) -> list[str]:
        return [name for name, param in self.named_parameters() if param.requires_grad]

    def text_encoder_parameters(self) -> list[nn.Parameter]:
        """The trainable BERT parameters (for their own, smaller learning rate)."""
        return [param for param in self.bert.parameters() if param.requires_grad]

    # ---- base text vectors ---------------------------------------------------------------
    def _encode_base(self, texts: Sequence[str], use_cache: bool = False) -> torch.Tensor:
        device = self.base_item_emb.device
        if not texts:
            return torch.zeros(0, self.d_text, device=device)
        if use_cache and self.cache_dir:
            vectors = encode_cached(self.bert, list(texts), self.cache_dir, self.batch_size,
                                    self.show_progress)
        else:
            with torch.no_grad(), eval_mode(self.bert):
                vectors = self.bert.encode(list(texts), batch_size=self.batch_size,
                                           show_progress_bar=self.show_progress,
                                           convert_to_numpy=True, normalize_embeddings=True)
        return torch.from_numpy(np.asarray(vectors, dtype=np.float32)).to(device)

    def set_query_texts(self, query_texts: Sequence[str]) -> None:
        """Fix the table of search-query texts that ``query_emb`` indexes (training queries)."""
        self.query_texts = list(query_texts)
        # cache only in frozen mode: a trained BERT's fingerprint changes with every step
        frozen = not self.encodes_in_forward
        self.base_query_emb = self._encode_base(self.query_texts, use_cache=frozen)

    @torch.inference_mode(False)  # Lightning validates under inference mode; tables stay normal
    @torch.no_grad()
    def refresh_base_emb(self) -> None:
        """Re-encode the item and query tables with the current BERT (fine-tune modes only)."""
        if not self.encodes_in_forward:
            return
        if self.item_texts is None:
            raise TowerError("cannot refresh base_item_emb: this tower holds no item_texts")
        self.base_item_emb.copy_(self._encode_base(self.item_texts))
        self.base_query_emb = self._encode_base(self.query_texts)

    # ---- vectors -------------------------------------------------------------------------
    def _check_idx(self, item_idx: torch.Tensor) -> torch.Tensor:
        if item_idx.dtype != torch.long or (item_idx.numel() and (
                int(item_idx.min()) < 0 or int(item_idx.max()) >= self.n_items)):
            raise TowerError(f"item_idx must be int64 indices in [0, {self.n_items}); got dtype "
                             f"{item_idx.dtype}, shape {tuple(item_idx.shape)}")
        return item_idx

    def item_id_emb(self, item_idx: torch.Tensor) -> torch.Tensor:
        """ID part [B, dim]: zero for items without training interactions, and for a random
        share ``id_dropout`` of rows while training (ID dropout keeps the text path strong)."""
        if self.id_emb is None:
            return torch.zeros(len(item_idx), self.dim, device=self.base_item_emb.device)
        vec = self.id_emb(item_idx)
        if self.id_proj is not None:
            vec = self.id_proj(vec)
        keep = self.warm_mask[item_idx]
        if self.training and self.id_dropout > 0:
            keep = keep & (torch.rand(keep.shape, device=keep.device) >= self.id_dropout)
        return vec * keep.unsqueeze(-1).to(vec.dtype)  # (B, dim)

    def _unnormalised(self, base: torch.Tensor, item_idx: torch.Tensor | None,
                      links: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        out = self.adapter(base)  # (n, dim)
        if self.id_emb is not None and item_idx is not None:
            out = out + self.item_id_emb(item_idx)
        if self.graph is not None and (item_idx is not None or links is not None):
            out = out + self.graph(base, item_idx, links)  # the entity part
        return out

    def _finish(self, base: torch.Tensor, item_idx: torch.Tensor | None,
                links: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        return F.normalize(self._unnormalised(base, item_idx, links), dim=-1)

    def item_emb(self, item_idx: torch.Tensor, from_table: bool = False) -> torch.Tensor:
        """Item vectors [B, dim], L2-normalised. Fine-tune modes run BERT on the items' texts
        unless ``from_table`` (then the refreshed ``base_item_emb`` is used)."""
        item_idx = self._check_idx(item_idx)
        if not self.encodes_in_forward or from_table:
            return self._finish(self.base_item_emb[item_idx], item_idx)
        if self.item_texts is None:
            raise TowerError("this tower holds no item_texts, so it cannot run BERT on items")
        texts = [self.item_texts[i] for i in item_idx.tolist()]
        return self._finish(sentence_embedding(self.bert, texts), item_idx)

    def all_item_emb(self) -> torch.Tensor:
        """Every catalogue item [n_items, dim]: one adapter pass over ``base_item_emb``."""
        idx = torch.arange(self.n_items, device=self.base_item_emb.device)
        return self._finish(self.base_item_emb, idx)

    def query_emb(self, query_idx: torch.Tensor) -> torch.Tensor:
        """Search-query vectors [B, dim] from the query table, through the same adapter."""
        return self._finish(self.base_query_emb[query_idx], None)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str],
                     links: Sequence[Sequence[tuple[str, str]]] | None = None) -> torch.Tensor:
        """Vectors [n, dim] of arbitrary texts (new items, queries): BERT -> adapter, no ID;
        with ``links`` (per text, its (relation, entity) name pairs) and a graph tower, plus
        the entity part of the entities it knows."""
        base = self._encode_base(list(texts))
        if links is None or self.graph is None:
            return self._finish(base, None)
        if len(links) != len(texts):
            raise TowerError(f"links must hold one list per text ({len(texts)}); got {len(links)}")
        return self._finish(base, None, self.graph.links_of(links))

    def graph_explanation(self, texts: Sequence[str] | None = None,
                          links: Sequence[Sequence[tuple[str, str]]] | None = None
                          ) -> dict[str, Any] | None:
        """Per-link terms of the entity part (``towers.graph.graph_explanation``)."""
        return graph_explanation(self, texts, links)

    # ---- persistence ---------------------------------------------------------------------
    def fingerprint(self, bert: nn.Module | None = None) -> str:
        """sha256 of everything that decides item vectors: BERT (``bert`` if given, e.g. the
        LoRA-merged copy that is saved), adapter, ID part, tables."""
        digest = hashlib.sha256(model_fingerprint(bert if bert is not None else self.bert).encode())
        update_tensor_digest(digest, ((k, v) for k, v in self.state_dict().items()
                                      if not k.startswith("bert.")))
        return digest.hexdigest()

    def save(self, directory: str | Path) -> str:
        """BERT in sentence-transformers format (LoRA merged), the rest as safetensors + json.
        Returns the fingerprint of what was written (equal to the loaded tower's)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if self.encodes_in_forward:
            self.refresh_base_emb()  # the saved table must match the saved BERT
        bert = merged_copy(self.bert)
        bert.save(str(out / "item_bert"), create_model_card=False)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                   if not k.startswith("bert.")}
        save_file(tensors, str(out / "item_tower.safetensors"))
        meta = {"class": "ItemTower", "trained_mode": self.mode, "n_items": self.n_items,
                "d_text": self.d_text, "dim": self.dim, "config": self.config,
                "bert_fingerprint": model_fingerprint(bert), "fingerprint": self.fingerprint(bert)}
        (out / "item_tower.json").write_text(json.dumps(meta, indent=1))
        (out / "item_texts.json").write_text(json.dumps(self.item_texts))
        if self.graph is not None:
            (out / "item_graph.json").write_text(json.dumps(self.graph.names()))
        return meta["fingerprint"]

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> ItemTower:
        """Rebuild a saved tower for inference: mode ``frozen`` over the saved (merged) BERT."""
        src = Path(directory)
        meta = json.loads((src / "item_tower.json").read_text())
        state = load_file(str(src / "item_tower.safetensors"))
        item_graph = None
        if meta["config"].get("graph"):
            names = json.loads((src / "item_graph.json").read_text())
            item_graph = {"entity_names": names["entities"],
                          "relation_names": names["relations"],
                          "item_entity": state["graph.item_entity"],
                          "item_relation": state["graph.item_relation"]}
        config = dict(meta["config"])
        # towers saved before the text_dropout experiment was removed, and before the fine-tune
        # settings became one sub-config; a loaded tower serves frozen (LoRA merged) anyway
        for old in ("text_dropout", "top_layers", "lora_r", "lora_alpha", "lora_dropout",
                    "finetune"):
            config.pop(old, None)
        tower = cls(model_path=str(src / "item_bert"), n_items=meta["n_items"],
                    show_progress=False, item_graph=item_graph, **config)
        missing, unexpected = tower.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("bert.")]
        if missing or unexpected:
            raise TowerError(f"{src}: item_tower.safetensors does not match item_tower.json "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        texts_file = src / "item_texts.json"
        tower.item_texts = json.loads(texts_file.read_text()) if texts_file.exists() else None
        return tower.to(device or "cpu")
