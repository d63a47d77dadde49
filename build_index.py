"""``python build_index.py run_name=demo [index=hnsw]``: the run's catalogue -> a FAISS index.

Encodes every catalogue item of the run's current serving state with the run's towers (trained
items from the item tower's table, items added since from their text alone), builds the index
chosen by ``index=`` and commits it as a new generation of ``artifacts/<run>/state/`` (the
catalogue carried over), stamped with the towers' fingerprint and run id, which loading checks.

``add=new_items.jsonl`` / ``remove=[I1,I2]`` edit the index and the catalogue instead (see
conf/build_index.yaml), through ``Recommender.edit_items``: the same code path as the service's
``POST /items`` / ``DELETE /items/{id}``, under the same writer lock, one generation per edit.
Bad input: one line on stderr, exit 2, nothing written; the items file is validated before any
model is loaded.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from engine.artifacts import ArtifactPaths
from engine.loading import quiet_libraries
from pipeline.index_stage import build

log = logging.getLogger("build_index")


def edit(paths: ArtifactPaths, add: str | None, remove: list[str], upsert: bool = False,
         use_gpu: bool | None = None) -> dict[str, Any]:
    """Remove then add items: one generation committed by ``Recommender.edit_items``."""
    from engine.artifacts import load_catalogue
    from engine.errors import CatalogueError
    from engine.items import read_item_file
    from engine.state import check_run

    # check everything against the catalogue before any model is loaded
    paths.check(("towers", "catalogue", "index"))
    paths.check_index_matches_towers()
    check_run(paths)
    known = set(load_catalogue(paths.root)["item_id"])
    unknown = [i for i in remove if i not in known]
    if unknown:
        raise CatalogueError(f"remove=: {len(unknown)} item id(s) not in the catalogue: "
                             f"{unknown[:5]}")
    new_items = read_item_file(add) if add else None
    if new_items is not None:
        present = [i["item_id"] for i in new_items if i["item_id"] in known
                   and i["item_id"] not in remove]
        if present and not upsert:
            raise CatalogueError(f"add=: {len(present)} item id(s) already in the catalogue: "
                                 f"{present[:5]}; pass upsert=true to replace them")
    from engine.recommender import Recommender

    recommender = Recommender.from_artifacts(paths.root, rerank=False, use_gpu=use_gpu)
    summary = recommender.edit_items(add=new_items, remove=remove, upsert=upsert,
                                     who=f"build_index.py run_name={paths.run} add={add} "
                                         f"remove={remove}")
    return {"added": len(summary["added"]), "removed": summary["removed"],
            "items": summary["items"], "path": str(paths.index),
            "generation": summary["generation"]}


def run(cfg: DictConfig) -> dict[str, Any]:
    paths = ArtifactPaths(Path(cfg.artifacts_dir) / str(cfg.run_name))
    index_kwargs = OmegaConf.to_container(cfg.index, resolve=True)
    remove = OmegaConf.to_container(cfg.remove) if cfg.remove is not None else []
    if isinstance(remove, str):
        remove = [remove]
    if not isinstance(remove, list) or not all(isinstance(i, (str, int)) for i in remove):
        from engine.errors import CatalogueError

        raise CatalogueError(f"remove= must be a list of item ids, e.g. remove=[I00001,I00002]; "
                             f"got {remove!r}")
    if cfg.add or remove:
        summary = edit(paths, cfg.add, [str(i) for i in remove], bool(cfg.upsert),
                       index_kwargs.get("use_gpu"))
        print(f"edited {paths.root} (generation {summary['generation']}): "
              f"+{summary['added']} -{summary['removed']} items, {summary['items']} indexed")
    else:
        summary = build(paths, index_kwargs, int(cfg.batch_size), bool(cfg.progress),
                        bool(cfg.get("ranking", True)), cfg.get("zero_shot_model"))
        print(f"built {summary['index']} over {summary['items']} items (dim {summary['dim']}) "
              f"in {summary['seconds']}s -> {summary['path']} (generation "
              f"{summary['generation']})")
    return summary


CONF_DIR = str(Path(__file__).resolve().parent / "conf")  # absolute: works when imported too


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="build_index")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except ValueError as err:  # every library's bad-input error is a ValueError subclass
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """Entry point; ``argv`` are Hydra overrides (tests call ``main(["run_name=x", ...])``)."""
    quiet_libraries()
    saved = sys.argv
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        _hydra_main()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
