"""Save and load trained towers (``artifacts/<run>/towers/``).

Layout: ``item_tower/`` (BERT in sentence-transformers format + ``item_tower.safetensors`` +
json, see ``ItemTower.save``), ``user_tower.safetensors``, and ``towers.json`` with the format
version, both towers' configs, the item fingerprint and the item id order. Everything loads
through safetensors: nothing is unpickled. Writes go to a temporary sibling directory that
replaces the target only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from towers.errors import TowerError
from towers.id_tower import IdItemTower
from towers.item_tower import ItemTower
from towers.model import TwoTowerModel
from towers.user_tower import UserTower

FORMAT_VERSION = 1
ITEM_TOWER_CLASSES = {"ItemTower": ItemTower, "IdItemTower": IdItemTower}


def save_towers(model: TwoTowerModel, directory: str | Path,
                extra_meta: dict | None = None) -> Path:
    """Write ``model`` to ``directory`` atomically; returns the directory. ``extra_meta`` (JSON
    values, e.g. the run's ``split_fingerprint``) is stored in towers.json beside the format
    keys."""
    if model.item_ids is None:
        raise TowerError("save_towers needs the model's item_ids (the catalogue order its item "
                         "indices refer to): build TwoTowerModel(..., item_ids=...)")
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fingerprint = model.item_tower.save(tmp / "item_tower")
        user_state = model.user_tower.state_dict()
        save_file({k: v.detach().cpu().contiguous() for k, v in user_state.items()},
                  str(tmp / "user_tower.safetensors"))
        meta = {**(extra_meta or {}), "format_version": FORMAT_VERSION,
                "item_tower_class": type(model.item_tower).__name__,
                "user_tower": model.user_tower.config, "dim": model.dim,
                "fingerprint": fingerprint, "item_ids": model.item_ids}
        (tmp / "towers.json").write_text(json.dumps(meta))
        if target.exists():  # swap: rename(2) cannot replace a non-empty directory
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_towers(directory: str | Path, device: str | None = None) -> TwoTowerModel:
    """Load towers saved by ``save_towers`` for inference (eval mode, on ``device``)."""
    source = Path(directory)
    meta_file = source / "towers.json"
    if not meta_file.exists():
        raise TowerError(f"{source} holds no towers.json; expected a directory written by "
                         "towers.save_towers (artifacts/<run>/towers)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise TowerError(f"{meta_file}: format_version {meta.get('format_version')!r}, this code "
                         f"reads {FORMAT_VERSION}")
    cls = ITEM_TOWER_CLASSES.get(meta.get("item_tower_class", ""))
    if cls is None:
        raise TowerError(f"{meta_file}: unknown item_tower_class {meta.get('item_tower_class')!r}"
                         f"; expected one of {sorted(ITEM_TOWER_CLASSES)}")
    item_tower = cls.load(source / "item_tower", device=device)
    user_tower = UserTower(**meta["user_tower"])
    user_tower.load_state_dict(load_file(str(source / "user_tower.safetensors")))
    model = TwoTowerModel(item_tower, user_tower, meta["item_ids"]).to(device or "cpu").eval()
    if model.fingerprint() != meta["fingerprint"]:
        raise TowerError(f"{source}: the loaded item tower's fingerprint differs from the one "
                         "recorded at save time; the directory is corrupt or was edited")
    return model
