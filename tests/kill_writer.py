"""Kill-test driver (tests/test_storage.py runs it; not a test module itself).

    python tests/kill_writer.py WORKDIR

In a fresh interpreter without torch, builds small torch-free artifacts (towers.json, a
catalogue and a flat index of random vectors, committed as the serving state) and, for each
scenario, first runs the write once to count its checkpoints (``storage.faults``), then forks
one writer per checkpoint N with the kill armed at N: the child SIGKILLs itself there. Each
writer works on its own copy ``WORKDIR/<scenario>-<N>``. Prints one JSON object:
``{scenario: {"checkpoints": n, "runs": {N: "killed" | "exit 0" | ...}}}``.

Scenarios:
- ``edit``: ``engine.edits.edit_items`` -- the live-edit path of the service and of
  ``build_index.py add=/remove=`` -- removing 3 items and adding 4, on a stub recommender whose
  encoder returns seeded random vectors (no model), committing catalogue + index as one
  generation;
- ``migrate``: the same edit on the pre-generation layout (catalogue.parquet and index/ at the
  top of the run directory): the first commit moves the state into ``state/``;
- ``dir`` / ``dir_renames``: ``storage.write_dir`` replacing a directory (the towers' and the
  reranker's writer), with the atomic exchange and with the two-rename fallback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from engine.artifacts import ArtifactPaths, catalogue_frame
from engine.catalogue import CatalogueState
from engine.state import load_state, run_stamp, state_store
from index import CatalogueIndex
from storage import faults, write_dir

DIM = 8
N_ITEMS = 40
RUN_ID = "kill-test-run"
REMOVED = ["I0001", "I0002", "I0003"]
ADDED = [{"item_id": f"NEW-{n}", "title": f"new item {n}"} for n in range(4)]


class FakeEncoder:
    supports_text = True

    def item_emb(self, texts: list[str]) -> np.ndarray:
        rng = np.random.default_rng(len(texts))
        return rng.standard_normal((len(texts), DIM)).astype(np.float32)


class StubRecommender:
    """What ``engine.edits`` uses of a Recommender, without towers (no torch)."""

    def __init__(self, root: Path) -> None:
        self.paths = ArtifactPaths(root)
        self.stamp = run_stamp(self.paths)
        self.encoder = FakeEncoder()
        self._lock = threading.RLock()
        self.reload_state()

    def reload_state(self) -> None:
        self.generation, parts = load_state(self.paths, self.stamp, use_gpu=False)
        self.index = parts["index"]
        self._state = CatalogueState.from_frame(parts["catalogue"])

    @property
    def n_items(self) -> int:
        return len(self.index)

    ranking_parts = None  # no BM25 / zero-shot parts in this run

    def state_values(self) -> dict:
        return {"catalogue": self._state.frame, "index": self.index}


def make_template(root: Path, legacy: bool) -> None:
    """A run with towers.json, a catalogue and an index (as generations, or top-level)."""
    (root / "towers").mkdir(parents=True)
    (root / "towers" / "towers.json").write_text(json.dumps(
        {"format_version": 1, "fingerprint": "f" * 64, "run_id": RUN_ID,
         "split_fingerprint": "split-1"}))
    ids = [f"I{n:04d}" for n in range(N_ITEMS)]
    catalogue = pd.DataFrame({"item_id": ids, "title": [f"item {n}" for n in range(N_ITEMS)]})
    frame = catalogue_frame(catalogue, [f"item {n}." for n in range(N_ITEMS)],
                            [1] * N_ITEMS, ["head"] * N_ITEMS)
    vectors = np.random.default_rng(0).standard_normal((N_ITEMS, DIM)).astype(np.float32)
    index = CatalogueIndex.build(vectors, ids, "flat", use_gpu=False)
    paths = ArtifactPaths(root)
    stamp = run_stamp(paths)
    if legacy:
        from engine.artifacts import write_catalogue

        write_catalogue(root / "catalogue.parquet", frame, stamp)
        index.save(root / "index", manifest_extra=dict(stamp))
        return
    with state_store(root).writer() as writer:
        writer.commit({"catalogue": frame, "index": index}, expected=None, stamp=stamp)


def write_once(scenario: str, root: Path) -> None:
    """The write under test, on the run at ``root``."""
    if scenario in ("edit", "migrate"):
        from engine.edits import edit_items

        edit_items(StubRecommender(root), add=ADDED, remove=REMOVED, lock_timeout=5)
        return
    if scenario == "dir_renames":
        import storage.atomic as atomic

        atomic._exchange_works = False

    def fill(temp: Path) -> None:
        for n in range(3):
            (temp / f"part{n}.txt").write_text("new\n")

    write_dir(root / "towers_like", fill, stamp={"run_id": "new"})


def run(scenario: str, template: Path, work: Path) -> dict:
    def copy(name: str) -> Path:
        target = work / name
        shutil.copytree(template, target, symlinks=True)
        return target

    faults.kill_at(None)
    write_once(scenario, copy(f"{scenario}-count"))
    total = faults.count()
    runs = {}
    for n in range(1, total + 1):
        root = copy(f"{scenario}-{n}")
        pid = os.fork()
        if pid == 0:  # the writer
            try:
                faults.kill_at(n)
                write_once(scenario, root)
                os._exit(0)
            except BaseException as err:  # noqa: BLE001 - reported through the exit status
                print(f"writer {scenario}-{n}: {type(err).__name__}: {err}", file=sys.stderr)
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            runs[n] = "killed" if os.WTERMSIG(status) == signal.SIGKILL else "signal"
        else:
            runs[n] = f"exit {os.WEXITSTATUS(status)}"
    return {"checkpoints": total, "runs": runs}


def main(work: Path) -> None:
    faiss.omp_set_num_threads(1)  # no OpenMP pool in the parent: the forked writers stay sane
    templates = {"state": work / "template-state", "legacy": work / "template-legacy"}
    make_template(templates["state"], legacy=False)
    make_template(templates["legacy"], legacy=True)
    dir_template = work / "template-dir"
    (dir_template / "towers_like").mkdir(parents=True)
    for n in range(3):
        (dir_template / "towers_like" / f"part{n}.txt").write_text("old\n")
    out = {"edit": run("edit", templates["state"], work),
           "migrate": run("migrate", templates["legacy"], work),
           "dir": run("dir", dir_template, work),
           "dir_renames": run("dir_renames", dir_template, work)}
    print(json.dumps(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
