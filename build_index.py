"""``python build_index.py run_name=demo [index=hnsw]``: the run's catalogue -> a FAISS index.

Encodes every catalogue.parquet item with the run's towers (trained items from the item
tower's table, items added since from their text alone), builds the index chosen by ``index=``
and saves it atomically to ``artifacts/<run>/index/`` with the towers' fingerprint, which
loading checks.

``add=new_items.jsonl`` / ``remove=[I1,I2]`` edit the saved index and catalogue.parquet in place
instead (see conf/build_index.yaml). Bad input: one line on stderr, exit 2, nothing written.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from engine.artifacts import ArtifactPaths
from engine.loading import quiet_libraries

log = logging.getLogger("build_index")


def build(paths: ArtifactPaths, index_kwargs: dict[str, Any], batch_size: int = 256,
          progress: bool = True) -> dict[str, Any]:
    """Encode the whole catalogue and save a fresh index; returns a summary."""
    from engine.artifacts import load_catalogue
    from engine.encoding import encode_catalogue
    from engine.loading import load_model, resolve_device
    from index import CatalogueIndex

    paths.check(("towers", "catalogue"))
    start = time.perf_counter()
    model = load_model(paths, resolve_device(index_kwargs.get("use_gpu")))
    catalogue = load_catalogue(paths.root)
    item_ids = catalogue["item_id"].tolist()
    links = None
    if getattr(model.item_tower, "graph", None) is not None:  # items added since training
        from engine.graph import GraphExplainer

        added = catalogue.loc[~catalogue["item_id"].isin(model.item_index)]
        by_id = dict(zip(added["item_id"], GraphExplainer(model).links_for(added)))
        links = [by_id.get(i, []) for i in item_ids]
    item_emb = encode_catalogue(model, item_ids, catalogue["text"].tolist(), batch_size,
                                progress, links)  # (n_items, dim)
    index = CatalogueIndex.build(item_emb, item_ids, **index_kwargs)
    fingerprint = paths.towers_meta()["fingerprint"]
    index.save(paths.index, manifest_extra={"model_fingerprint": fingerprint, "run": paths.run})
    return {"index": index.factory_string, "items": len(index), "dim": index.dim,
            "seconds": round(time.perf_counter() - start, 2), "path": str(paths.index)}


def edit(paths: ArtifactPaths, add: str | None, remove: list[str], upsert: bool = False,
         use_gpu: bool | None = None) -> dict[str, Any]:
    """Remove then add items in the saved index and catalogue.parquet; saves only when every
    step succeeded."""
    from engine.artifacts import load_catalogue
    from engine.catalogue import new_catalogue_rows, read_item_file
    from engine.errors import CatalogueError

    # check everything against the catalogue before any model is loaded
    paths.check(("towers", "catalogue", "index"))
    paths.check_index_matches_towers()
    known = set(load_catalogue(paths.root)["item_id"])
    unknown = [i for i in remove if i not in known]
    if unknown:
        raise CatalogueError(f"remove=: {len(unknown)} item id(s) not in the catalogue: "
                             f"{unknown[:5]}")
    new_items = read_item_file(add) if add else None
    if new_items is not None:
        new_ids = new_catalogue_rows(new_items, source=f"add={add}")["item_id"]
        present = [i for i in new_ids if i in known and i not in remove]
        if present and not upsert:
            raise CatalogueError(f"add=: {len(present)} item id(s) already in the catalogue: "
                                 f"{present[:5]}; pass upsert=true to replace them")
    from engine.recommender import Recommender

    recommender = Recommender.from_artifacts(paths.root, rerank=False, use_gpu=use_gpu)
    removed = recommender.remove_items(remove) if remove else 0
    added = recommender.add_items(new_items, upsert=upsert) if new_items is not None else []
    recommender.save()
    return {"added": len(added), "removed": removed, "items": recommender.n_items,
            "path": str(paths.index)}


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
        print(f"edited {summary['path']}: +{summary['added']} -{summary['removed']} items, "
              f"{summary['items']} indexed")
    else:
        summary = build(paths, index_kwargs, int(cfg.batch_size), bool(cfg.progress))
        print(f"built {summary['index']} over {summary['items']} items (dim {summary['dim']}) "
              f"in {summary['seconds']}s -> {summary['path']}")
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
