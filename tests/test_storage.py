"""Tests of storage/ and the serving-state generations: kill tests (a writer SIGKILLed at every
step of a commit leaves the old state or the new one, never a mix), the single-writer lock,
stale writers, clean-up of what a killed writer left, run stamps. Torch-free and fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from engine import ArtifactsError
from engine.artifacts import ArtifactPaths
from engine.state import check_same_run, load_state, run_stamp, state_store
from storage import DirLock, LockTimeout, StaleGenerationError, read_stamp, write_dir
from storage.generations import POINTER, STATE_DIR

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "kill_writer.py"
OLD_IDS = {f"I{n:04d}" for n in range(40)}
NEW_IDS = (OLD_IDS - {"I0001", "I0002", "I0003"}) | {f"NEW-{n}" for n in range(4)}


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Run the kill driver once: every scenario, killed at each of its checkpoints."""
    work = tmp_path_factory.mktemp("kill")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, str(DRIVER), str(work)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return work, json.loads(proc.stdout.strip().splitlines()[-1])


def state_ids(root: Path) -> tuple[int, set[str]]:
    """(generation, ids) as a reader sees the run, after checking catalogue == index."""
    paths = ArtifactPaths(root)
    generation, parts = load_state(paths, run_stamp(paths), use_gpu=False)
    catalogue_ids = set(parts["catalogue"]["item_id"])
    assert catalogue_ids == set(parts["index"].ids), "catalogue and index disagree"
    return generation, catalogue_ids


@pytest.mark.parametrize("scenario", ["edit", "migrate"])
def test_a_writer_killed_at_any_step_leaves_the_old_or_the_new_state(
        killed: tuple[Path, dict], scenario: str) -> None:
    work, report = killed
    result = report[scenario]
    assert result["checkpoints"] >= 12  # every file, sync, rename and swap of a commit
    assert set(result["runs"].values()) == {"killed"}, result["runs"]
    seen = set()
    for n in range(1, result["checkpoints"] + 1):
        root = work / f"{scenario}-{n}"
        generation, ids = state_ids(root)
        assert ids in (OLD_IDS, NEW_IDS), f"killed at checkpoint {n}: a mixed state"
        seen.add("new" if ids == NEW_IDS else "old")
        # the next writer cleans what the killed one left, and commits on top
        store = state_store(root)
        with store.writer(timeout=5) as writer:
            leftovers = sorted(p.name for p in (root / STATE_DIR).iterdir()
                               if p.name.startswith(".tmp"))
            assert leftovers == []
            gen = writer.current()
            assert gen is not None and gen.number == generation
            frame = load_state(ArtifactPaths(root), run_stamp(ArtifactPaths(root)),
                               names=("catalogue",))[1]["catalogue"]
            writer.commit({"catalogue": frame}, expected=generation,
                          stamp=run_stamp(ArtifactPaths(root)))
        assert state_ids(root) == (generation + 1, ids)
        dirs = sorted(p.name for p in (root / STATE_DIR).iterdir())
        assert dirs == [POINTER, f"g{generation:06d}", f"g{generation + 1:06d}"] or (
            generation == 0 and dirs == [POINTER, "g000001"])
        if scenario == "migrate":  # the top-level layout is gone once a generation is current
            assert not (root / "catalogue.parquet").exists() and not (root / "index").exists()
    assert seen == {"old", "new"}  # the kill points span both sides of the pointer swap


@pytest.mark.parametrize("scenario", ["dir", "dir_renames"])
def test_a_directory_writer_killed_at_any_step_leaves_a_complete_directory(
        killed: tuple[Path, dict], scenario: str) -> None:
    work, report = killed
    result = report[scenario]
    assert set(result["runs"].values()) == {"killed"} and result["checkpoints"] >= 4
    for n in range(1, result["checkpoints"] + 1):
        root = work / f"{scenario}-{n}"
        from storage import resolve_dir

        target = resolve_dir(root / "towers_like")
        contents = {p.name: p.read_text() for p in target.iterdir()}
        parts = {k: v for k, v in contents.items() if k.startswith("part")}
        assert set(parts.values()) in ({"old\n"}, {"new\n"}) and len(parts) == 3, n
        write_dir(root / "towers_like", lambda temp: (temp / "x").write_text("next\n"))
        assert sorted(p.name for p in root.iterdir()) == ["towers_like"]  # nothing stale left


# ---- the lock and stale writers ----------------------------------------------------------------
def test_lock_excludes_other_processes_and_names_the_holder(tmp_path: Path) -> None:
    code = ("import sys, time; from storage import DirLock\n"
            "with DirLock(sys.argv[1], who='the other writer'):\n"
            "    print('locked', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockTimeout, match=r"being written by another process \(pid \d+: "
                                              r"the other writer\)"):
            DirLock(tmp_path, timeout=0.2).acquire()
    finally:
        holder.kill()  # SIGKILL: the kernel drops its flock
        holder.wait()
    with DirLock(tmp_path, timeout=5):  # free again: a dead holder never keeps it
        pass


def test_lock_serialises_threads_and_is_reentrant(tmp_path: Path) -> None:
    order: list[str] = []
    with DirLock(tmp_path):
        with DirLock(tmp_path):  # the same thread re-enters
            order.append("outer")

        def other() -> None:
            with DirLock(tmp_path, timeout=10):
                order.append("other")

        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.2)  # the other thread is waiting on the lock now (order, not timing)
        order.append("still mine")
    thread.join()
    assert order == ["outer", "still mine", "other"]


def small_state(root: Path) -> pd.DataFrame:
    from engine.artifacts import catalogue_frame

    (root / "towers").mkdir(parents=True)
    (root / "towers" / "towers.json").write_text(json.dumps(
        {"fingerprint": "f", "run_id": "run-a", "split_fingerprint": "s"}))
    frame = catalogue_frame(pd.DataFrame({"item_id": ["a", "b"], "title": ["A", "B"]}),
                            ["A.", "B."], [1, 0], ["head", "new"])
    with state_store(root).writer() as writer:
        writer.commit({"catalogue": frame}, expected=None, stamp=run_stamp(ArtifactPaths(root)))
    return frame


def test_a_stale_writer_is_refused_not_silently_overwriting(tmp_path: Path) -> None:
    frame = small_state(tmp_path)
    store, stamp = state_store(tmp_path), run_stamp(ArtifactPaths(tmp_path))
    read_at = store.number()
    with store.writer() as writer:  # another writer commits after ours read the state
        writer.commit({"catalogue": frame.iloc[:1]}, expected=read_at, stamp=stamp)
    with store.writer() as writer, pytest.raises(StaleGenerationError,
                                                  match="changed since it was read"):
        writer.commit({"catalogue": frame}, expected=read_at, stamp=stamp)
    assert load_state(ArtifactPaths(tmp_path), stamp, names=("catalogue",))[1][
        "catalogue"]["item_id"].tolist() == ["a"]


def test_stale_temp_and_uncommitted_generations_are_removed_at_writer_start(
        tmp_path: Path) -> None:
    small_state(tmp_path)
    state = tmp_path / STATE_DIR
    (state / ".tmp-g000002-123-456").mkdir()  # a commit killed while writing
    (state / "g000007").mkdir()  # renamed, but killed before the pointer swap
    (state / ".CURRENT.tmp-abcd").write_text("{")
    assert state_store(tmp_path).number() == 1  # readers ignore all of it
    held, done = threading.Event(), threading.Event()

    def writer_at_work() -> None:
        with DirLock(tmp_path):
            held.set()
            done.wait(timeout=30)

    thread = threading.Thread(target=writer_at_work)
    thread.start()
    assert held.wait(timeout=30)
    assert not state_store(tmp_path).tidy()  # a writer at work: a starting service waits not
    done.set()
    thread.join()
    assert (state / "g000007").exists()
    assert state_store(tmp_path).tidy()  # as the service does at start (also every writer)
    assert sorted(p.name for p in state.iterdir()) == [POINTER, "g000001"]


def test_parts_of_another_run_are_refused_in_one_line(tmp_path: Path) -> None:
    small_state(tmp_path)
    paths = ArtifactPaths(tmp_path)
    (tmp_path / "towers" / "towers.json").write_text(json.dumps(
        {"fingerprint": "f", "run_id": "run-b", "split_fingerprint": "s"}))  # retrained
    with pytest.raises(ArtifactsError) as err:
        load_state(paths, run_stamp(paths), names=("catalogue",))
    message = str(err.value)
    assert "mixes parts of different training runs" in message and "\n" not in message
    assert "run id run-b" in message and "catalogue run id run-a" in message
    assert f"python train.py run_name={tmp_path.name}" in message
    reranker = tmp_path / "reranker"
    write_dir(reranker, lambda temp: None, stamp={"run_id": "run-a", "split_fingerprint": "s"})
    assert read_stamp(reranker)["run_id"] == "run-a"
    with pytest.raises(ArtifactsError, match=r"reranker run id run-a.*stage=reranker"):
        check_same_run(paths, {"reranker": read_stamp(reranker)})


def test_a_registered_part_is_written_carried_and_dropped_by_commits(tmp_path: Path) -> None:
    """The registry contract: one StatePart entry, and commits handle the part like the rest."""
    from storage import StatePart, StateStore

    def part(name: str) -> StatePart:
        return StatePart(name, f"{name}.txt",
                         save=lambda value, path, stamp: path.write_text(f"{value}|{stamp['r']}"),
                         load=lambda path: path.read_text().split("|")[0],
                         read_stamp=lambda path: {"r": path.read_text().split("|")[1]})

    store = StateStore(tmp_path, [part("counts"), part("other")])
    with store.writer() as writer:
        writer.commit({"counts": "1", "other": "x"}, expected=0, stamp={"r": "a"})
        writer.commit({"counts": "2"}, expected=1, stamp={"r": "b"})  # "other" carried
    gen, values = store.load(["counts", "other"])
    assert (gen.number, values) == (2, {"counts": "2", "other": "x"})
    assert store.part("other").read_stamp(gen.path(store.part("other"))) == {"r": "a"}
    assert gen.manifest["parts"]["other"]["written_in"] == 1
    with store.writer() as writer:
        writer.commit({}, expected=2, stamp={"r": "b"}, drop=["other"])
    assert not store.current().has(store.part("other"))
