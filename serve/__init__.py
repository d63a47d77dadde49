"""serve: the HTTP service (FastAPI) over ``engine.Recommender``.

``python -m serve --artifacts artifacts/demo --port 8000`` (or ``make serve``), or
``create_app(artifacts=...)`` under any ASGI server. Routes:

- ``POST /recommend`` — a session (the README's session JSON) -> the engine's result, exactly what
  ``query.py`` prints; query parameters ``k`` and ``rerank`` (bool) override the session's.
- ``POST /recommend/batch`` — ``{"sessions": [...]}`` (at most ``max_batch``) ->
  ``{"results": [...]}``, one batched user-tower pass and one index search.
- ``POST /items`` (one item, or ``{"items": [...]}``; ``?upsert=true`` replaces) and
  ``DELETE /items/{item_id}`` (ids may contain ``/``) — live catalogue edits, committed to the
  artifacts directory as one generation (``engine.edits``: the path of ``build_index.py
  add=/remove=`` too, under the same writer lock) before the answer, so a restart keeps them.
- ``POST /events`` (one event or ``{"events": [...]}``) — shop events into the durable event
  log (``serve/events.py``: user ids keyed-hashed, search text dropped, fsync before the
  answer) and the live interaction counts; ``DELETE /users/{user_id}`` removes a user's
  events from the log and says what it does not undo.
- ``GET /ui/`` — the page to try it (``serve/web.py``, static files in ``serve/web/``), with
  ``POST /catalogue/search``, ``GET /ui/examples`` and ``GET /ui/reports``.
- ``GET /healthz`` — liveness, artifacts loaded, index size (never needs a key).

With ``reload_every_s`` (``python -m serve --reload-every``, default 5 s) a watcher thread
(``serve/reload.py``) loads towers committed by ``python -m pipeline.refresh`` beside the
served ones and swaps them in with one assignment: no restart, no failed request.
- ``GET /metrics`` — Prometheus text: requests by route/status, latency per route and per engine
  stage (encode/search/rerank/total), recommendations by user segment, index size.
- ``GET /openapi.json``, ``/docs`` — the schema with the request/response models.

Bad input answers 422 in FastAPI's shape (``{"detail": [{"loc", "msg", "type"}]}``) with the
engine's own message (``parse_session`` and ``engine.items``: the same validation as
``query.py`` and ``build_index.py add=``); a body route called without ``Content-Type:
application/json`` 415; bodies past ``max_body_bytes`` (1 MiB) 413; a request asking for more
than ``max_results`` items in all 422; a missing or wrong ``X-API-Key`` (when keys are configured
via ``FIRSTCLICK_API_KEYS`` or ``--api-keys-file``; without keys the CLI needs ``--no-auth``)
401 with one body for both; a live edit while another process writes the artifacts 503 with
``Retry-After``; anything unexpected 500 JSON with a request id that is also in the log and the
``X-Request-ID`` header.

Worker and thread model: one uvicorn worker process holds the towers, the index and the reranker,
loaded once at start-up (a second process would double the memory and the load time; scale out
with replicas behind a load balancer instead — the service is stateless over its artifacts,
except live item edits, which each replica must receive). Handlers are ``async`` and only parse
and validate on the event loop; every engine call runs in a worker thread, at most
``--engine-threads`` (default 2, one per core of the target box) at a time, the rest waiting in
an ``anyio.CapacityLimiter`` queue. Torch's intra-op pool is set to ``--torch-threads`` (default
1) so 2 concurrent requests use 2 cores without oversubscribing them. Torch and faiss release
the GIL in their kernels, so the threads run in parallel. Responses are serialised to JSON in
those worker threads too, so the event loop (and ``/healthz``) stays free. The engine's
``RLock`` keeps searches off the index while it changes, and its catalogue snapshot is swapped
whole; writers are serialised by the artifacts' lock (in-process and across processes).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "create_app": "serve.app",
    "ServeMetrics": "serve.metrics",
    "ApiKeyCheck": "serve.auth",
    "main": "serve.__main__",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'serve' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
