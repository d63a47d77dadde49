"""What a benchmark ran on: CPU model and cores, platform, Python and library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def machine_info(libraries: Iterable[str]) -> dict[str, Any]:
    """CPU model (/proc/cpuinfo), cores, platform, Python, and the installed versions of
    ``libraries`` (distribution names; missing ones are left out)."""
    cpu_model = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in
                 Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu_model = names[0] if names else cpu_model
    except OSError:
        pass
    versions = {}
    for name in libraries:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"cpu_model": cpu_model, "cpu_cores": os.cpu_count(), "platform": platform.platform(),
            "python": sys.version.split()[0], "libraries": versions}


def git_commit(root: str | Path | None = None) -> dict[str, Any]:
    """The checkout's HEAD commit and whether tracked files differ from it (``dirty``), so a
    results file says exactly which code made it; ``None`` values outside a git checkout."""
    import subprocess

    cwd = Path(root) if root else Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                  timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"),
            "dirty": None if status is None else bool(status)}


def provenance(command: str, seed: int | dict[str, int], libraries: Iterable[str] = ()
               ) -> dict[str, Any]:
    """What every committed results file records: the exact command, the commit (and whether
    the tree was dirty), the seed(s), the machine and library versions, and when it ran."""
    import datetime

    return {"command": command, **git_commit(), "seed": seed, "machine": machine_info(libraries),
            "finished_at": datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec="seconds")}
