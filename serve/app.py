"""``create_app``: the FastAPI app over one ``engine.Recommender`` (see ``serve/__init__.py`` for
the routes and the worker/thread model).

Handlers are ``async``: they read and validate the body on the event loop (cheap, bounded by
``max_body_bytes``), then run the engine *and the JSON serialisation of its answer* in worker
threads bounded by an ``anyio`` ``CapacityLimiter`` (``engine_threads``), so at most that many
requests use the CPU at once, the rest queue instead of oversubscribing the cores, and the
event loop stays free for ``/healthz``. A request asks for at most ``max_results`` items in all
(k x sessions). Live edits go through ``Recommender.edit_items`` (the path of
``build_index.py add=/remove=`` too): the artifacts' writer lock, a reload when another
process committed, one generation per edit, persisted before they are acknowledged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic.json_schema import models_json_schema

from engine.errors import (
    SessionError,
)
from engine.recommender import DEFAULT_K, Recommender
from engine.session import Session
from recdata.eventlog import EventLog
from serve.auth import API_KEY_HEADER, ApiKeyCheck, ApiKeyMiddleware, keys_from_env
from serve.events import EventsService, add_event_routes
from serve.items import add_item_routes
from serve.metrics import RequestMiddleware, ServeMetrics
from serve.models import (
    REQUEST_MODELS,
    BatchResponse,
    ErrorResponse,
    HealthResponse,
    RecommendResponse,
    error_loc,
    json_body,
    parse_one,
    read_json,
    unprocessable,
)
from serve.privacy import Pseudonymizer
from serve.reload import reload_watcher

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB
DEFAULT_MAX_BATCH = 256  # sessions per /recommend/batch call
DEFAULT_MAX_ITEMS = 256  # items per POST /items call
DEFAULT_ENGINE_THREADS = 2  # engine calls running at once (the CPU cores of the target box)
DEFAULT_MAX_RESULTS = 10_000  # items per request, k x sessions (~3.5 MB of JSON)
DEFAULT_LOCK_WAIT_S = 10.0  # a live edit waits this long for another writer, then 503
TITLE = "firstclick"


@dataclass
class ServeState:
    """What the handlers share: the loaded engine and the app's limits, metrics and locks."""

    artifacts: Path | None
    recommender: Recommender | None
    rerank: bool
    auth: ApiKeyCheck
    max_body_bytes: int
    max_batch: int
    max_items: int
    engine_threads: int
    torch_threads: int | None
    max_results: int = DEFAULT_MAX_RESULTS
    lock_wait_s: float = DEFAULT_LOCK_WAIT_S
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    limiter: anyio.CapacityLimiter | None = None

    @property
    def engine(self) -> Recommender:
        if self.recommender is None:
            raise HTTPException(503, "the artifacts are still loading; retry shortly")
        return self.recommender

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread: engine calls take one of ``engine_threads`` slots."""
        return await anyio.to_thread.run_sync(partial(fn, *args), limiter=self.limiter)

    def check_results(self, k: int | None, sessions: list[Session],
                      base: tuple[str | int, ...]) -> None:
        """422 when the request asks for more than ``max_results`` items in all."""
        total = sum(k or s.k or DEFAULT_K for s in sessions)
        if total > self.max_results:
            where = ["query", "k"] if k is not None else list(base)
            raise unprocessable(where, f"the request asks for {total} items in all ("
                                f"{len(sessions)} session(s) x k); at most {self.max_results} "
                                "per request: lower k or split the batch")

    def edit(self, **kwargs: Any) -> dict[str, Any]:
        """A live edit (engine.edits), serialised within this process by ``write_lock``."""
        with self.write_lock:
            return self.engine.edit_items(lock_timeout=self.lock_wait_s, who="serve (live edit)",
                                          **kwargs)


def _k_error(err: SessionError, k: int | None, sessions: list[Session], n_items: int,
             base: tuple[str | int, ...]) -> HTTPException:
    """The engine refused a k (larger than the catalogue): point at the query or the session."""
    if k is not None:
        return unprocessable(["query", "k"], str(err))
    row = next((i for i, s in enumerate(sessions) if (s.k or DEFAULT_K) > n_items), None)
    where = [*base, row] if row is not None and base[-1] == "sessions" else list(base)
    return unprocessable(error_loc(str(err), tuple(where)), str(err))


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or invalid API key (only when API "
                                                 "keys are configured; never for /healthz)"},
    413: {"model": ErrorResponse, "description": "request body too large"},
    415: {"model": ErrorResponse, "description": "a body route was sent something other than "
                                                 "application/json"},
    500: {"model": ErrorResponse, "description": "unexpected error (see request_id in logs)"},
}


def create_app(artifacts: str | Path | None = None, recommender: Recommender | None = None,
               api_keys: set[str] | None = None, *, rerank: bool = True,
               rerank_mode: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_batch: int = DEFAULT_MAX_BATCH,
               max_items: int = DEFAULT_MAX_ITEMS, engine_threads: int = DEFAULT_ENGINE_THREADS,
               torch_threads: int | None = None, max_results: int = DEFAULT_MAX_RESULTS,
               lock_wait_s: float = DEFAULT_LOCK_WAIT_S,
               event_log: str | Path | EventLog | None = None,
               user_key: bytes | None = None, web: bool = True,
               reload_every_s: float | None = None) -> FastAPI:
    """The app over ``recommender``, or over ``artifacts`` loaded once at start-up (lifespan).

    ``api_keys``: None reads ``FIRSTCLICK_API_KEYS`` (set but without a usable key:
    AuthConfigError); an empty set turns auth off, explicitly (logged as a warning).
    ``torch_threads``: when set, torch's and FAISS's intra-op threads at start-up (process-wide,
    ``engine.loading.set_compute_threads``).
    ``max_results``: items one request may ask for in all (k x sessions).
    ``rerank_mode``: with ``artifacts``, overrides the run's rerank policy mode (``auto``,
    ``always``, ``never``; ``Recommender.from_artifacts``); reloads keep it.
    ``event_log``: the folder of the event log (``<artifacts>/events``, or an opened
    ``EventLog``) that ``POST /events`` appends to and the live counts are rebuilt from; None:
    no log (those routes answer 503).
    ``user_key``: the HMAC key user ids are pseudonymised with (``serve.privacy``); None:
    events are refused (503), since raw ids must not be stored. ``web``: serve the page (/ui/).
    ``reload_every_s``: poll the artifacts this often and swap in newly committed towers
    (``serve.reload``; ``python -m pipeline.refresh``); None: never.
    """
    if artifacts is None and recommender is None:
        raise ValueError("create_app needs artifacts= (a run directory) or recommender=")
    for name, value in (("max_body_bytes", max_body_bytes), ("max_batch", max_batch),
                        ("max_items", max_items), ("engine_threads", engine_threads),
                        ("max_results", max_results)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    keys = keys_from_env() if api_keys is None else set(api_keys)
    if not keys:
        log.warning("API-key auth is OFF: every client that can reach this service may edit "
                    "the catalogue; set %s or --api-keys-file to turn it on",
                    "FIRSTCLICK_API_KEYS")
    state = ServeState(
        artifacts=Path(artifacts) if artifacts is not None else None, recommender=recommender,
        rerank=rerank, auth=ApiKeyCheck(keys), max_body_bytes=max_body_bytes,
        max_batch=max_batch, max_items=max_items, engine_threads=engine_threads,
        torch_threads=torch_threads, max_results=max_results, lock_wait_s=lock_wait_s)
    events = EventsService(pseudonymizer=Pseudonymizer(user_key) if user_key else None)
    if isinstance(event_log, EventLog):
        events.log = event_log
    elif event_log is not None:
        events.log_dir = Path(event_log)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.torch_threads:
            from engine.loading import set_compute_threads

            set_compute_threads(state.torch_threads)
        if state.recommender is None:
            from engine.loading import quiet_libraries
            from engine.state import state_store

            quiet_libraries()
            await anyio.to_thread.run_sync(state_store(state.artifacts).tidy)
            state.recommender = await anyio.to_thread.run_sync(
                partial(Recommender.from_artifacts, state.artifacts, rerank=state.rerank,
                        rerank_mode=rerank_mode))
        state.limiter = anyio.CapacityLimiter(state.engine_threads)
        state.metrics.track_index_size(lambda: state.recommender.n_items)
        counts = await anyio.to_thread.run_sync(events.open)
        if counts is not None:
            state.recommender.counts = counts
        watcher = reload_watcher(state, events, reload_every_s)
        if watcher is not None:
            watcher.start()
        log.info("serving %s", state.recommender.info())
        try:
            yield
        finally:
            if watcher is not None:
                watcher.stop()
            events.close()

    app = FastAPI(title=TITLE, version="0.1.0", lifespan=lifespan, responses=ERRORS,
                  description="Cold-start recommendations over one artifacts directory: "
                              "two-tower retrieval, FAISS, cross-encoder rerank.")
    app.state.serve = state
    app.add_middleware(ApiKeyMiddleware, check=state.auth)  # inner: runs after the one below
    app.add_middleware(RequestMiddleware, metrics=state.metrics, routes=app.router.routes)
    _add_routes(app, state)
    add_event_routes(app, events, lambda: state.engine, state.max_body_bytes)
    if web:
        from serve.web import add_web_routes

        add_web_routes(app, lambda: state.engine)
    app.openapi = partial(_openapi, app, state.auth)  # type: ignore[method-assign]
    return app


def _add_routes(app: FastAPI, state: ServeState) -> None:
    @app.post("/recommend", response_model=RecommendResponse, openapi_extra=json_body("Session"),
              summary="Recommend items for one session")
    async def recommend(request: Request, k: int | None = Query(None, ge=1),
                        rerank: bool | None = None) -> Response:
        session = parse_one(await read_json(request, state.max_body_bytes), ("body",))
        state.check_results(k, [session], ("body", "k"))
        engine = state.engine

        def answer() -> tuple[dict, Response]:  # serialised off the event loop too
            result = engine.recommend(session, k=k, rerank=rerank)
            return result, JSONResponse(result)

        try:
            result, response = await state.run(answer)
        except SessionError as err:
            raise _k_error(err, k, [session], engine.n_items, ("body",)) from None
        state.metrics.observe_results("/recommend", [result])
        return response

    @app.post("/recommend/batch", response_model=BatchResponse,
              openapi_extra=json_body("BatchRequest"),
              summary="Recommend for many sessions in one encode and one index search")
    async def recommend_batch(request: Request, k: int | None = Query(None, ge=1),
                              rerank: bool | None = None) -> Response:
        body = await read_json(request, state.max_body_bytes)
        if not isinstance(body, dict) or not isinstance(body.get("sessions"), list):
            raise unprocessable(["body", "sessions"], 'expected {"sessions": [session, ...]}')
        if set(body) != {"sessions"}:
            extra = sorted(set(body) - {"sessions"})
            raise unprocessable(["body", extra[0]], f"unknown key(s) {extra}; the body is "
                                '{"sessions": [...]} (use query parameters k and rerank)')
        raw = body["sessions"]
        if not 1 <= len(raw) <= state.max_batch:
            raise unprocessable(["body", "sessions"], f"expected 1 to {state.max_batch} "
                                f"sessions per batch, got {len(raw)}; split the batch")
        sessions = [parse_one(obj, ("body", "sessions", i)) for i, obj in enumerate(raw)]
        state.check_results(k, sessions, ("body", "sessions"))
        engine = state.engine

        def answer() -> tuple[list[dict], Response]:  # serialised off the event loop too
            results = engine.recommend_many(sessions, k=k, rerank=rerank)
            return results, JSONResponse({"results": results})

        try:
            results, response = await state.run(answer)
        except SessionError as err:
            raise _k_error(err, k, sessions, engine.n_items, ("body", "sessions")) from None
        state.metrics.observe_results("/recommend/batch", results)
        return response

    add_item_routes(app, state)

    @app.get("/healthz", response_model=HealthResponse, summary="Liveness; no API key needed")
    async def healthz() -> Response:
        engine = state.recommender
        if engine is None:
            return JSONResponse({"status": "loading", "loaded": False, "items": 0}, 503)
        info = engine.info()
        return JSONResponse({"status": "ok", "loaded": True, "items": engine.n_items,
                             "run": info["run"], "reranker": bool(info["reranker"])})

    @app.get("/metrics", summary="Prometheus metrics (text exposition format)",
             response_class=Response)
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)


def _openapi(app: FastAPI, auth: ApiKeyCheck) -> dict[str, Any]:
    """FastAPI's schema plus the request models (the bodies are validated by the engine, so
    FastAPI does not see them) and, with auth on, the API-key security scheme."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description,
                         routes=app.routes)
    _, defs = models_json_schema([(m, "validation") for m in REQUEST_MODELS],
                                 ref_template="#/components/schemas/{model}")
    schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
    if auth.enabled:
        schema["components"]["securitySchemes"] = {
            "ApiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}}
        schema["security"] = [{"ApiKey": []}]
        schema["paths"]["/healthz"]["get"]["security"] = []
    app.openapi_schema = schema
    return schema
