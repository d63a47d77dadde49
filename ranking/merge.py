"""Merge the sources' candidates into one set per session, remembering each source's rank.

Sources are interleaved round-robin by rank (each source's best first), duplicates kept once,
until ``size`` candidates; so a source's top items always make it in, whichever sources
return many. ``quotas`` say how many each source retrieves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ranking.sources import Candidates


@dataclass
class Merged:
    """One session's merged candidates."""

    rows: np.ndarray  # (m,) int64 catalogue rows, in merge order
    ranks: dict[str, np.ndarray]  # source -> (m,) 0-based rank in that source, NaN if absent


def merge(per_source: Mapping[str, list[Candidates]], size: int) -> list[Merged]:
    """Round-robin merge of each session's candidate lists (``per_source[name][session]``)."""
    names = list(per_source)
    n_sessions = len(next(iter(per_source.values()))) if per_source else 0
    out = []
    for session in range(n_sessions):
        lists = [per_source[name][session].rows for name in names]
        position: dict[int, int] = {}
        depth = max((len(rows) for rows in lists), default=0)
        for rank in range(depth):
            for rows in lists:
                if rank < len(rows) and int(rows[rank]) not in position:
                    if len(position) == size:
                        break
                    position[int(rows[rank])] = len(position)
            if len(position) == size:
                break
        rows = np.fromiter(position, np.int64, count=len(position))
        ranks = {}
        for name, cand in zip(names, lists):
            rank = np.full(len(rows), np.nan)
            for r, row in enumerate(cand.tolist()):
                at = position.get(row)
                if at is not None:
                    rank[at] = r
            ranks[name] = rank
        out.append(Merged(rows, ranks))
    return out
