"""``python -m pipeline.refresh --artifacts artifacts/demo``: the incremental refresh of a served
run from its event log, while the service keeps answering.

1. read the event log's events past the last refresh (``refresh.json``'s ``last_seq``); nothing
   new: say so and change nothing;
2. warm-start the run's towers and fine-tune them on those events for a few epochs
   (``pipeline.finetune``: BERT frozen, so the catalogue's BERT vectors stay valid), with a
   before/after measure on a held-out slice of the new events;
3. re-encode the catalogue: one adapter pass over the stored BERT vectors; BERT runs only for
   items added or re-described since training;
4. rebuild the index with the run's index settings and commit towers, index and
   ``refresh.json`` (``commit_refresh``).

A running ``python -m serve`` notices the new towers (``serve.reload``), loads the new state
beside the old one and swaps it in one assignment: no request fails during the swap. Errors
are one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.artifacts import ArtifactPaths, save_json

log = logging.getLogger(__name__)

REFRESH_FILE = "refresh.json"
TOWERS_FORMAT_KEYS = ("format_version", "item_tower_class", "user_tower", "dim", "fingerprint",
                      "item_ids")


@dataclass
class RefreshSettings:
    epochs: int = 2  # passes over the new examples
    lr: float = 3e-4  # AdamW learning rate (a third of training's: a warm start)
    batch_size: int = 128
    holdout_every: int = 10  # every n-th logged user's last new target is held out (0: none)
    seed: int = 0


def read_refresh_state(paths: ArtifactPaths) -> dict[str, Any]:
    """``refresh.json``: ``last_seq`` (0 before the first refresh) and past runs."""
    path = paths.root / REFRESH_FILE
    if not path.is_file():
        return {"last_seq": 0, "runs": []}
    return json.loads(path.read_text(encoding="utf-8"))


def commit_refresh(paths: ArtifactPaths, model: Any, index: Any, state: dict[str, Any],
                   generation: int) -> str:
    """Write the refreshed towers, commit the index built from them as a new generation of the
    serving state (``engine.state``; catalogue, BM25 and zero-shot parts carried over) and write
    ``refresh.json``; returns the new towers' fingerprint. All under the artifacts' writer lock,
    after checking that no other writer committed since ``generation`` was read (else
    ``storage.StaleGenerationError`` and nothing is written). Towers first, index second: a
    crash in between leaves towers the index was not built from, which the engine and the
    service's reload refuse (the old engine keeps serving) until the refresh is run again."""
    from engine.state import run_stamp, state_store
    from storage.generations import StaleGenerationError
    from towers import save_towers

    old_meta = paths.towers_meta()
    extra = {k: v for k, v in old_meta.items() if k not in TOWERS_FORMAT_KEYS}
    extra["refresh"] = {"last_seq": state["last_seq"], "at": state["runs"][-1]["at"]}
    store = state_store(paths.root)
    with store.writer(who=f"pipeline.refresh run={paths.run}") as writer:
        current = writer.current()
        on_disk = current.number if current is not None else 0
        if on_disk != generation:
            raise StaleGenerationError(
                f"{paths.root} changed while refreshing (generation {on_disk} on disk, "
                f"{generation} read): run the refresh again")
        save_towers(model, paths.towers, extra_meta=extra)
        writer.commit({"index": index}, expected=generation, stamp=run_stamp(paths),
                      note="refresh: fine-tuned towers")
        save_json(paths.root / REFRESH_FILE, state)
    return paths.towers_meta()["fingerprint"]


def refresh(root: str | Path, settings: RefreshSettings | None = None) -> dict[str, Any]:
    """Fine-tune the run in ``root`` on its event log since the last refresh and commit the
    result; returns a summary (``status``: ``refreshed`` or ``nothing new``)."""
    from pipeline.finetune import catalogue_vectors, fine_tune
    from pipeline.refresh_data import refresh_examples
    from recdata.eventlog import read_events
    from recdata.eventlog_source import resolve_log

    settings = settings or RefreshSettings()
    paths = ArtifactPaths(root)
    paths.check(("towers", "catalogue", "index"))
    paths.check_index_matches_towers()
    state = read_refresh_state(paths)
    since = int(state.get("last_seq", 0))
    events = read_events(resolve_log(paths.root))
    started = time.perf_counter()

    from engine.loading import load_model, read_config
    from index import CatalogueIndex

    model = load_model(paths, "cpu")
    config = read_config(paths)
    examples = refresh_examples(events, since, model.item_index,
                                int(config.get("data", {}).get("split", {}).get("history_cap",
                                                                                50)),
                                settings.holdout_every)
    summary: dict[str, Any] = {"run": paths.run, "since_seq": since, **examples.report}
    if examples.train.empty:
        return {**summary, "status": "nothing new", "last_seq": since}
    from engine.state import load_state, run_stamp

    generation, parts = load_state(paths, run_stamp(paths), names=("catalogue",))
    catalogue = parts["catalogue"]
    loss = config.get("loss", {}) or {}
    train = config.get("train", {}) or {}
    trained = fine_tune(model, examples, catalogue, epochs=settings.epochs, lr=settings.lr,
                        batch_size=settings.batch_size,
                        temperature=float(loss.get("temperature", 0.07)),
                        mask_history=bool(loss.get("mask_history", True)),
                        exclude_unseen=bool(train.get("exclude_unseen_negatives", True)),
                        seed=settings.seed)
    ids = catalogue["item_id"].tolist()
    vectors, from_text = catalogue_vectors(model, ids, catalogue["text"].tolist(), catalogue)
    manifest = paths.index_manifest()
    index = CatalogueIndex.build(vectors, ids, kind=manifest.get("kind", "flat"),
                                 **(manifest.get("params") or {}))
    run = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "since_seq": since,
           "last_seq": examples.last_seq, **examples.report, **trained,
           "bert_encoded_items": from_text, "indexed_items": len(index),
           "settings": asdict(settings)}
    new_state = {"last_seq": examples.last_seq, "runs": [*state.get("runs", []), run]}
    fingerprint = commit_refresh(paths, model, index, new_state, generation)
    seconds = round(time.perf_counter() - started, 1)
    return {**summary, **run, "status": "refreshed", "fingerprint": fingerprint,
            "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.refresh", description=__doc__
                                     .split("\n\n")[0])
    parser.add_argument("--artifacts", default="artifacts/demo", help="the run to refresh")
    defaults = RefreshSettings()
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--holdout-every", type=int, default=defaults.holdout_every)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.holdout_every < 0:
        print("error: --epochs and --batch-size must be >= 1, --lr > 0, --holdout-every >= 0",
              file=sys.stderr)
        return 2
    from engine.loading import quiet_libraries

    quiet_libraries()
    try:
        summary = refresh(args.artifacts, RefreshSettings(
            epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
            holdout_every=args.holdout_every, seed=args.seed))
    except ValueError as err:  # ArtifactsError, DataError (no log), TowerError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
