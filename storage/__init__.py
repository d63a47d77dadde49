"""storage: how artifacts reach the disk. Standard library only, so every package may use it.

- ``storage.atomic``: the one atomic writer of files and directories (temp + fsync + swap),
  used by the towers, the reranker, the index and every json file.
- ``storage.lock``: the single-writer lock of an artifacts directory (``fcntl.flock``).
- ``storage.generations``: the serving state (catalogue, index, ... registered as
  ``StatePart``s) committed as whole generations behind one pointer.
- ``storage.stamp``: run stamps (``run_id``, ``split_fingerprint``) recorded in every part.
- ``storage.faults``: named checkpoints between write steps, where kill tests stop a writer.
"""

from __future__ import annotations

from storage.atomic import link_tree, resolve_dir, write_bytes, write_dir, write_file, write_json
from storage.generations import (
    Generation,
    StaleGenerationError,
    StateError,
    StatePart,
    StateStore,
    StateWriter,
)
from storage.lock import DirLock, LockTimeout
from storage.stamp import RUN_FILE, read_stamp, write_stamp

__all__ = [
    "RUN_FILE",
    "DirLock",
    "Generation",
    "LockTimeout",
    "StaleGenerationError",
    "StateError",
    "StatePart",
    "StateStore",
    "StateWriter",
    "link_tree",
    "read_stamp",
    "resolve_dir",
    "write_bytes",
    "write_dir",
    "write_file",
    "write_json",
    "write_stamp",
]
