"""The one atomic writer of artifact files and directories (towers, reranker, index, json).

- :func:`write_file` / :func:`write_json`: fill a temp file beside the target, fsync it, then
  ``os.replace`` it over the target and fsync the parent directory. A reader sees the old file
  or the new one.
- :func:`write_dir`: fill a temp directory beside the target (same parent, so renames stay on
  one file system), optionally add a run stamp (``run.json``), fsync every file and directory in
  it, then swap it in. On Linux the swap is one ``renameat2(RENAME_EXCHANGE)`` call: the target
  path always names a complete directory, old or new. Where the kernel or file system lacks it,
  two renames (target -> ``.<name>.old-*``, temp -> target); between them the target is
  missing, and :func:`resolve_dir` (readers) falls back to the old copy, which the next write
  (:func:`recover_dir`) moves back.
- Temp and old copies left by a killed writer are removed by the next write of the same target.
  One writer per target at a time: callers hold the artifacts lock (``storage.lock``).

Every step calls ``storage.faults.checkpoint`` so kill tests can stop a writer between any two.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.faults import checkpoint

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_exchange_works: bool | None = None if sys.platform.startswith("linux") else False


def fsync_file(path: str | os.PathLike[str]) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: str | os.PathLike[str]) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory; rename durability is best effort
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (and ``root`` itself), deepest first."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)


def _temp_name(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{uuid.uuid4().hex[:8]}")


def write_file(path: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """``fill(temp_path)`` writes the content; then the temp file replaces ``path`` atomically.

    On any exception the temp file is removed, ``path`` is untouched and the exception
    propagates.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_name(target, "tmp")
    try:
        fill(temp)
        fsync_file(temp)
        checkpoint(f"file.synced:{target.name}")
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    checkpoint(f"file.replaced:{target.name}")
    return target


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return write_file(path, lambda temp: temp.write_bytes(data))


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    """``obj`` as JSON (UTF-8, a trailing newline), written atomically."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"
    return write_file(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where unsupported."""
    global _exchange_works
    if _exchange_works is False:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        _exchange_works = False
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        _exchange_works = True
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this kernel or file system lacks it
        _exchange_works = False
        return False
    raise OSError(errno, os.strerror(errno), str(a))


def write_dir(path: str | os.PathLike[str], fill: Callable[[Path], None], *,
              stamp: dict[str, Any] | None = None) -> Path:
    """``fill(temp_dir)`` writes a directory's content; then it replaces ``path`` atomically.

    ``stamp`` (e.g. the run identity) is written as ``run.json`` inside it (see
    ``storage.stamp``). On any exception the temp directory is removed, ``path`` is untouched
    and the exception propagates.
    """
    from storage.stamp import write_stamp

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"cannot write a directory to {target}: it is a file")
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    temp = _temp_name(target, "tmp")
    temp.mkdir()
    try:
        fill(temp)
        if stamp is not None:
            write_stamp(temp, stamp)
        checkpoint(f"dir.filled:{target.name}")
        fsync_tree(temp)
        checkpoint(f"dir.synced:{target.name}")
        if not target.exists():
            os.rename(temp, target)
        elif _exchange(temp, target):  # temp now holds the old directory
            checkpoint(f"dir.exchanged:{target.name}")
            shutil.rmtree(temp, ignore_errors=True)
        else:
            old = _temp_name(target, "old")
            os.rename(target, old)
            checkpoint(f"dir.moved_old:{target.name}")
            os.rename(temp, target)
            checkpoint(f"dir.renamed:{target.name}")
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        recover_dir(target)  # puts an old copy back if the swap was cut; removes the temp dir
        raise
    fsync_dir(target.parent)
    checkpoint(f"dir.done:{target.name}")
    return target


def _olds(target: Path) -> list[Path]:
    """``.<name>.old-*`` siblings, newest first (each was a complete target once)."""
    if not target.parent.is_dir():
        return []
    olds = [p for p in target.parent.glob(f".{target.name}.old-*") if p.is_dir()]
    return sorted(olds, key=lambda p: p.stat().st_mtime, reverse=True)


def resolve_dir(path: str | os.PathLike[str]) -> Path:
    """Where to read the directory ``path`` from: itself, or, when a two-rename swap was cut
    between its renames, the old copy it left."""
    target = Path(path)
    if target.exists():
        return target
    olds = _olds(target)
    if olds:
        log.warning("%s is missing; reading %s left by an interrupted write", target, olds[0])
        return olds[0]
    return target


def recover_dir(path: str | os.PathLike[str]) -> None:
    """Before writing ``path``: put back an old copy a cut swap left, drop temp and old
    copies (one writer per target, so nothing else is writing them)."""
    target = Path(path)
    if not target.exists():
        olds = _olds(target)
        if olds:
            log.warning("restoring %s from %s left by an interrupted write", target, olds[0])
            os.rename(olds[0], target)
    for stale in [*target.parent.glob(f".{target.name}.tmp-*"), *_olds(target)]:
        log.info("removing %s left by an interrupted write", stale)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def link_tree(source: Path, target: Path) -> None:
    """Copy a file or directory by hard links (files are never changed in place once written,
    so sharing them between generations is safe); a real copy where links are refused."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir():
        shutil.copytree(source, target, copy_function=link)
    else:
        link(str(source), str(target))
