"""``python -m serve --artifacts DIR [--port 8000] [--host 127.0.0.1]``: the HTTP service in the
foreground (one uvicorn worker process; see ``serve/__init__.py``).

Arguments, the API keys and the artifacts' json files are checked, and the artifacts are
loaded, before uvicorn starts: a missing or mismatched run, or an API-keys variable or file
without a usable key, prints one ``error: ...`` line on stderr and exits 2, with no traceback
and no half-started server. Without keys the service refuses to start unless ``--no-auth``
says so (then it logs a warning).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engine.artifacts import ArtifactPaths
from engine.cli import (
    DEFAULT_ARTIFACTS,
    DEFAULT_SERVE_THREADS,
    RERANK_MODES,
    port_number,
    positive_int,
)
from engine.loading import log_to_stderr, quiet_libraries, set_compute_threads
from recdata.eventlog import LOG_FILE, EventLog
from serve.auth import AuthConfigError, keys_from_env, keys_from_file
from serve.privacy import USER_KEY_ENV, UserKeyError, key_from_env, key_from_file

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# the defaults of serve.app, repeated to keep torch out of argument checks
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_BATCH = 256
DEFAULT_ENGINE_THREADS = 2
DEFAULT_MAX_RESULTS = 10_000
DEFAULT_RELOAD_EVERY_S = 5.0  # serve.reload's default, repeated to keep imports light


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serve",
        description="HTTP recommendations over one artifacts directory (FastAPI + uvicorn).")
    parser.add_argument("--artifacts", default=DEFAULT_ARTIFACTS,
                        help=f"artifacts directory of a run (default {DEFAULT_ARTIFACTS})")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                        help=f"TCP port (default {DEFAULT_PORT})")
    parser.add_argument("--no-rerank", action="store_true",
                        help="do not load the cross-encoder (retrieval scores only)")
    parser.add_argument("--rerank-mode", choices=RERANK_MODES, default=None,
                        help="override the run's rerank policy: auto (its per-group rules, "
                             "decided on validation), always (re-score the top N of every "
                             "session), never; default: the run's own policy")
    parser.add_argument("--api-keys-file", default=None,
                        help="file of API keys, one per line; with it (or FIRSTCLICK_API_KEYS, "
                             "comma-separated) every route but /healthz needs X-API-Key")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve without API keys (anyone who can reach the port may edit "
                             "the catalogue); required when no key is configured")
    parser.add_argument("--engine-threads", type=positive_int, default=DEFAULT_ENGINE_THREADS,
                        help="engine calls running at once; more queue (default "
                             f"{DEFAULT_ENGINE_THREADS}, the target's CPU cores)")
    parser.add_argument("--torch-threads", type=positive_int, default=DEFAULT_SERVE_THREADS,
                        help="intra-op threads (torch and FAISS) per engine call (default "
                             f"{DEFAULT_SERVE_THREADS}: no oversubscription)")
    parser.add_argument("--max-body-bytes", type=positive_int, default=DEFAULT_MAX_BODY_BYTES,
                        help=f"larger bodies get 413 (default {DEFAULT_MAX_BODY_BYTES})")
    parser.add_argument("--max-batch", type=positive_int, default=DEFAULT_MAX_BATCH,
                        help=f"sessions per /recommend/batch (default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--max-results", type=positive_int, default=DEFAULT_MAX_RESULTS,
                        help="items one request may ask for in all, k x sessions (default "
                             f"{DEFAULT_MAX_RESULTS})")
    parser.add_argument("--event-log", default=None, metavar="DIR",
                        help="folder of the event log POST /events appends to (default "
                             "<artifacts>/events)")
    parser.add_argument("--no-event-log", action="store_true",
                        help="no event log: /events and /users answer 503, no live counts")
    parser.add_argument("--user-key-file", default=None, metavar="PATH",
                        help=f"HMAC key that pseudonymises user ids (created when missing; "
                             f"never inside the artifacts); default: ${USER_KEY_ENV}, and "
                             "without either, events are refused")
    parser.add_argument("--reload-every", type=float, default=DEFAULT_RELOAD_EVERY_S,
                        metavar="SECONDS",
                        help="poll the artifacts this often; newly committed towers (python -m "
                             "pipeline.refresh) are loaded and swapped in without a restart "
                             f"(default {DEFAULT_RELOAD_EVERY_S:g}; 0: never)")
    parser.add_argument("--log-level", default="info",
                        choices=("critical", "error", "warning", "info", "debug"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Check, load, then serve until interrupted; returns the exit status (0, or 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.no_rerank and args.rerank_mode:
        parser.error(f"--rerank-mode {args.rerank_mode} needs the cross-encoder; drop "
                     "--no-rerank (or --rerank-mode)")
    log_to_stderr(args.log_level.upper(), "%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.reload_every < 0:
            raise ValueError(f"--reload-every must be >= 0 seconds (0: never), got "
                             f"{args.reload_every:g}")
        api_keys = keys_from_env()
        if args.api_keys_file:
            api_keys |= keys_from_file(args.api_keys_file)
        if api_keys and args.no_auth:
            raise AuthConfigError("--no-auth contradicts the API keys configured (in "
                                  "FIRSTCLICK_API_KEYS or --api-keys-file); drop one of them")
        if not api_keys and not args.no_auth:
            raise AuthConfigError("no API key configured: set FIRSTCLICK_API_KEYS=k1,k2 or "
                                  "--api-keys-file FILE, or pass --no-auth to serve without "
                                  "auth (anyone who can reach the port may edit the catalogue)")
        paths = ArtifactPaths(args.artifacts)
        paths.check(("towers", "catalogue", "index"))
        user_key = (key_from_file(args.user_key_file, paths.root) if args.user_key_file
                    else key_from_env())
        event_dir = None if args.no_event_log else Path(args.event_log or paths.root / "events")
        paths.check_index_matches_towers()
        from engine.state import check_run

        check_run(paths, ("catalogue", "index") if args.no_rerank
                  else ("catalogue", "index", "reranker"))
        quiet_libraries()
        import torch  # noqa: F401 - seconds; after the cheap checks

        from engine.recommender import Recommender
        from engine.state import state_store

        set_compute_threads(args.torch_threads)
        state_store(paths.root).tidy()  # what a killed writer left (skipped if one is writing)
        recommender = Recommender.from_artifacts(paths.root, rerank=not args.no_rerank,
                                                 rerank_mode=args.rerank_mode)
        # opened (locked, torn tail recovered) before uvicorn, so a second writer fails here
        event_log = EventLog.open(event_dir / LOG_FILE) if event_dir is not None else None
    except (AuthConfigError, UserKeyError, ValueError) as err:  # engine errors: ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    import uvicorn

    from serve.app import create_app

    app = create_app(recommender=recommender, api_keys=api_keys,
                     max_body_bytes=args.max_body_bytes, max_batch=args.max_batch,
                     engine_threads=args.engine_threads, torch_threads=args.torch_threads,
                     max_results=args.max_results, event_log=event_log, user_key=user_key,
                     reload_every_s=args.reload_every or None)
    logger = logging.getLogger(__name__)
    logger.info("serving %s on http://%s:%d (auth %s); the page: http://%s:%d/ui/", paths.root,
                args.host, args.port, "on" if api_keys else "OFF (--no-auth)", args.host,
                args.port)
    if event_log is not None and user_key is None:
        logger.warning("no user-id key (%s or --user-key-file): POST /events is refused",
                       USER_KEY_ENV)
    # uvicorn's access log prints raw paths and query strings (user ids, search words): off;
    # serve.metrics logs route templates at debug level instead
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level=args.log_level,
                access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
