"""``python query.py --session s.json``: recommendations for a session, with reasons.

``--session`` takes a session (README "Contracts"), a JSON list of sessions, a ``.jsonl`` file (one
session per line, one result per line), or ``-`` for stdin. Output: the result JSON on stdout
(``--pretty`` for a readable list; ``--timings`` adds a per-stage summary on stderr).

Bad input (unreadable file, a file past MAX_FILE_BYTES such as /dev/zero, malformed or too
deeply nested JSON, wrong types, unknown event type, invalid text or timestamps, k <= 0 or
larger than the catalogue, missing artifacts or parts of different runs, damaged or pickled
weights) prints one ``error: ...`` line on stderr and exits 2 with nothing on stdout. Arguments,
the session file and the artifacts' json files are checked before torch is imported, so
mistakes fail in well under a second.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from engine.artifacts import ArtifactPaths
from engine.cli import DEFAULT_ARTIFACTS, positive_int
from engine.errors import SessionError
from engine.inputs import MAX_FILE_BYTES
from engine.loading import log_to_stderr, quiet_libraries
from engine.session import Session, parse_sessions_text

DEFAULT_K = 10  # engine.recommender.DEFAULT_K, repeated to keep torch out of argument checks
STAGES = ("encode", "search", "rank", "rerank", "total")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="query.py", description="Recommend items for a shopper's session, with reasons.")
    parser.add_argument("--session", required=True,
                        help="session .json, sessions .jsonl (one per line), or - for stdin")
    parser.add_argument("--k", type=positive_int, default=None,
                        help=f"items per session (overrides the session's k; default "
                             f"{DEFAULT_K})")
    parser.add_argument("--artifacts", default=DEFAULT_ARTIFACTS,
                        help=f"artifacts directory of a run (default {DEFAULT_ARTIFACTS})")
    parser.add_argument("--no-rerank", action="store_true",
                        help="skip the cross-encoder (retrieval scores only)")
    parser.add_argument("--timings", action="store_true",
                        help="print a per-stage timing summary on stderr")
    parser.add_argument("--pretty", action="store_true",
                        help="a readable ranked list with titles and reasons instead of JSON")
    return parser


def _too_big(source: str) -> SessionError:
    return SessionError(f"--session {source} is larger than {MAX_FILE_BYTES >> 20} MiB; split "
                        "it into several files")


def read_sessions(source: str, stdin: TextIO) -> tuple[list[Session], bool]:
    """Sessions from a file or stdin (at most MAX_FILE_BYTES, read no further: a device like
    /dev/zero is refused, not read forever); returns (sessions, many)."""
    if source == "-":
        text = stdin.read(MAX_FILE_BYTES + 1)
        if len(text) > MAX_FILE_BYTES:
            raise _too_big("-")
        return parse_sessions_text(text, source="stdin")
    path = Path(source)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise _too_big(source)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise SessionError(f"cannot read --session {source}: {reason}") from None
    jsonl = True if path.suffix.lower() in (".jsonl", ".ndjson") else None
    return parse_sessions_text(text, jsonl=jsonl, source=source)


def check_k(sessions: Sequence[Session], k: int | None, n_items: int) -> None:
    for session in sessions:
        want = k or session.k or DEFAULT_K
        if want > n_items:
            raise SessionError(f"{session.where()}k={want} is larger than the catalogue "
                               f"({n_items} items); ask for at most {n_items}")


def format_pretty(result: dict[str, Any]) -> str:
    head = [result["segment"], "reranked" if result["reranked"] else "not reranked",
            f"{result['timings_ms']['total']:.1f} ms"]
    if result.get("user_id"):
        head.insert(0, f"user {result['user_id']}")
    lines = [" | ".join(head)]
    if result.get("fallback"):
        lines.append(f"  fallback: {result['fallback']}")
    for item in result["items"]:
        lines.append(f"{item['rank']:>3}. {item['title']}  [{item['item_id']}, "
                     f"{item['item_segment']}, score {item['score']:.3f}]")
        lines.append(f"       because {item['because']}")
    lines.extend(f"  warning: {w}" for w in result["warnings"])
    return "\n".join(lines)


def format_timings(results: Sequence[dict[str, Any]]) -> str:
    def median(values: list[float]) -> float:
        values = sorted(values)
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

    parts = [f"{stage} {median([r['timings_ms'][stage] for r in results]):.2f}"
             for stage in STAGES]
    label = "timings (ms)" if len(results) == 1 else f"timings (ms, median of {len(results)})"
    return f"{label}: " + "  ".join(parts)


def main(argv: list[str] | None = None, stdin: TextIO | None = None,
         stdout: TextIO | None = None) -> int:
    """Run the CLI; returns the exit status (0, or 2 for bad input)."""
    args = build_parser().parse_args(argv)
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    log_to_stderr(logging.WARNING)
    try:
        sessions, many = read_sessions(args.session, stdin)
        paths = ArtifactPaths(args.artifacts)
        paths.check(("towers", "catalogue", "index"))
        manifest = paths.check_index_matches_towers()
        check_k(sessions, args.k, int(manifest.get("count", 0)))
        from engine.state import check_run

        check_run(paths, ("catalogue", "index") if args.no_rerank
                  else ("catalogue", "index", "reranker"))
        quiet_libraries()
        from engine.recommender import Recommender  # torch, transformers, faiss: seconds

        recommender = Recommender.from_artifacts(paths.root, rerank=not args.no_rerank)
        results = recommender.recommend_many(sessions, k=args.k)
    except ValueError as err:  # every engine/library bad-input error is a ValueError subclass
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.pretty:
        stdout.write("\n\n".join(format_pretty(r) for r in results) + "\n")
    elif many:
        stdout.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    else:
        stdout.write(json.dumps(results[0], indent=2, ensure_ascii=False) + "\n")
    if args.timings:
        print(format_timings(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
