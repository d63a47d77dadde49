"""Named steps of every artifact write, where a test can kill the writer (kill tests).

Each writer in ``storage`` calls :func:`checkpoint` after every step that changes the disk
(a part written, a directory synced, a rename, a pointer swap, a clean-up). In normal runs it
does nothing but count. A test sets ``FIRSTCLICK_KILL_AT=N`` in a writer's environment (or calls
:func:`kill_at`) and the writer SIGKILLs itself at its N-th checkpoint (1-based) or at the first
checkpoint of that name: a crash at a known instant, reproducible, for every instant in turn.
``FIRSTCLICK_TRACE_CHECKPOINTS=1`` prints each checkpoint's number and name on stderr, to list
them.
"""

from __future__ import annotations

import os
import signal
import sys

KILL_ENV = "FIRSTCLICK_KILL_AT"
TRACE_ENV = "FIRSTCLICK_TRACE_CHECKPOINTS"

_count = 0


def checkpoint(step: str) -> None:
    """One step of a write is on disk; die here if a test asked for it."""
    global _count
    _count += 1
    if os.environ.get(TRACE_ENV):
        print(f"checkpoint {_count} {step}", file=sys.stderr, flush=True)
    target = os.environ.get(KILL_ENV)
    if target and (target == step or target == str(_count)):
        os.kill(os.getpid(), signal.SIGKILL)


def kill_at(target: int | str | None) -> None:
    """Arm (or, with None, disarm) the kill and restart the count; for tests and their children."""
    global _count
    _count = 0
    if target is None:
        os.environ.pop(KILL_ENV, None)
    else:
        os.environ[KILL_ENV] = str(target)


def count() -> int:
    """Checkpoints passed since the process started (or since :func:`kill_at`)."""
    return _count
