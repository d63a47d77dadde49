"""Save and load trained towers (``artifacts/<run>/towers/``).

Layout: ``item_tower/`` (BERT in sentence-transformers format + ``item_tower.safetensors`` +
json, see ``ItemTower.save``), ``user_tower.safetensors``, and ``towers.json`` with the format
version, both towers' configs, the item fingerprint, the item id order and the run identity
(``run_id``, minted by the training stage; ``split_fingerprint``). Everything loads through
safetensors: nothing is unpickled. The directory is written atomically by
``storage.atomic.write_dir`` (the writer every artifact shares).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from storage.atomic import resolve_dir, write_dir
from towers.errors import TowerError
from towers.id_tower import IdItemTower
from towers.item_tower import ItemTower
from towers.model import TwoTowerModel
from towers.user_tower import UserTower

FORMAT_VERSION = 1
ITEM_TOWER_CLASSES = {"ItemTower": ItemTower, "IdItemTower": IdItemTower}


def save_towers(model: TwoTowerModel, directory: str | Path,
                extra_meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` to ``directory`` atomically; returns the directory. ``extra_meta`` (JSON
    values: the run identity ``run_id`` and ``split_fingerprint``, the data name) is stored in
    towers.json beside the format keys."""
    if model.item_ids is None:
        raise TowerError("save_towers needs the model's item_ids (the catalogue order its item "
                         "indices refer to): build TwoTowerModel(..., item_ids=...)")
    extra = dict(extra_meta or {})
    clash = sorted(set(extra) & {"format_version", "item_tower_class", "user_tower", "dim",
                                 "fingerprint", "item_ids"})
    if clash:
        raise TowerError(f"save_towers extra_meta keys {clash} would overwrite towers.json's "
                         "own")

    def fill(tmp: Path) -> None:
        fingerprint = model.item_tower.save(tmp / "item_tower")
        user_state = model.user_tower.state_dict()
        save_file({k: v.detach().cpu().contiguous() for k, v in user_state.items()},
                  str(tmp / "user_tower.safetensors"))
        info = {"format_version": FORMAT_VERSION,
                "item_tower_class": type(model.item_tower).__name__,
                "user_tower": model.user_tower.config, "dim": model.dim,
                "fingerprint": fingerprint, **extra, "item_ids": model.item_ids}
        (tmp / "towers.json").write_text(json.dumps(info))

    return write_dir(directory, fill)


def _damaged_json(source: Path) -> str | None:
    """The first json file under ``source`` that does not parse, with the parser's message."""
    for path in sorted(source.rglob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"{path} is not valid JSON ({err})"
    return None


def load_towers(directory: str | Path, device: str | None = None) -> TwoTowerModel:
    """Load towers saved by ``save_towers`` for inference (eval mode, on ``device``).

    A damaged file raises TowerError naming it: json files by their parser's message, weights
    by safetensors' (nothing is unpickled)."""
    from safetensors import SafetensorError

    source = resolve_dir(directory)
    meta_file = source / "towers.json"
    if not meta_file.exists():
        raise TowerError(f"{source} holds no towers.json; expected a directory written by "
                         "towers.save_towers (artifacts/<run>/towers)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise TowerError(f"{meta_file} must hold a JSON object")
        if meta.get("format_version") != FORMAT_VERSION:
            raise TowerError(f"{meta_file}: format_version {meta.get('format_version')!r}, this "
                             f"code reads {FORMAT_VERSION}")
        cls = ITEM_TOWER_CLASSES.get(meta.get("item_tower_class", ""))
        if cls is None:
            raise TowerError(f"{meta_file}: unknown item_tower_class "
                             f"{meta.get('item_tower_class')!r}; expected one of "
                             f"{sorted(ITEM_TOWER_CLASSES)}")
        item_tower = cls.load(source / "item_tower", device=device)
        user_tower = UserTower(**meta["user_tower"])
        user_file = source / "user_tower.safetensors"
        try:
            user_state = load_file(str(user_file))
        except SafetensorError as err:
            raise TowerError(f"{user_file} is not a valid safetensors file ({err})") from None
        user_tower.load_state_dict(user_state)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TowerError(_damaged_json(source) or f"{source}: a json file is damaged") from None
    except SafetensorError as err:
        raise TowerError(f"{source}: a weights file is damaged ({err})") from None
    model = TwoTowerModel(item_tower, user_tower, meta["item_ids"]).to(device or "cpu").eval()
    if model.fingerprint() != meta["fingerprint"]:
        raise TowerError(f"{source}: the loaded item tower's fingerprint differs from the one "
                         "recorded at save time; the directory is corrupt or was edited")
    return model
