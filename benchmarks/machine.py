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
