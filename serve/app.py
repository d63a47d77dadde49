"""``create_app``: the FastAPI app over one ``engine.Recommender`` (see ``serve/__init__.py`` for
the routes and the worker/thread model).

Handlers are ``async``: they read and validate the body on the event loop (cheap, bounded by
``max_body_bytes``), then run the engine in worker threads bounded by an ``anyio``
``CapacityLimiter`` (``engine_threads``), so at most that many requests use the CPU at once and
the rest queue instead of oversubscribing the cores. Live edits are serialised by one lock and
persisted with ``Recommender.save`` before they are acknowledged.
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

from engine.errors import CatalogueError, SessionError
from engine.recommender import DEFAULT_K, Recommender
from engine.session import Session
from recdata.eventlog import EventLog
from serve.auth import API_KEY_HEADER, ApiKeyCheck, ApiKeyMiddleware, keys_from_env
from serve.events import EventsService, add_event_routes
from serve.metrics import RequestMiddleware, ServeMetrics
from serve.models import (
    REQUEST_MODELS,
    BatchResponse,
    ErrorResponse,
    HealthResponse,
    ItemRemoved,
    ItemsAdded,
    RecommendResponse,
    error_loc,
    items_of,
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


def _k_error(err: SessionError, k: int | None, sessions: list[Session], n_items: int,
             base: tuple[str | int, ...]) -> HTTPException:
    """The engine refused a k (larger than the catalogue): point at the query or the session."""
    if k is not None:
        return unprocessable(["query", "k"], str(err))
    row = next((i for i, s in enumerate(sessions) if (s.k or DEFAULT_K) > n_items), None)
    where = [*base, row] if row is not None and base[-1] == "sessions" else list(base)
    return unprocessable(error_loc(str(err), tuple(where)), str(err))


def _json_body(*models: str) -> dict[str, Any]:
    refs = [{"$ref": f"#/components/schemas/{m}"} for m in models]
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or invalid API key (only when API "
                                                 "keys are configured; never for /healthz)"},
    413: {"model": ErrorResponse, "description": "request body too large"},
    500: {"model": ErrorResponse, "description": "unexpected error (see request_id in logs)"},
}


def create_app(artifacts: str | Path | None = None, recommender: Recommender | None = None,
               api_keys: set[str] | None = None, *, rerank: bool = True,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_batch: int = DEFAULT_MAX_BATCH,
               max_items: int = DEFAULT_MAX_ITEMS, engine_threads: int = DEFAULT_ENGINE_THREADS,
               torch_threads: int | None = None, event_log: str | Path | EventLog | None = None,
               user_key: bytes | None = None, web: bool = True,
               reload_every_s: float | None = None) -> FastAPI:
    """The app over ``recommender``, or over ``artifacts`` loaded once at start-up (lifespan).

    ``api_keys``: None reads ``FIRSTCLICK_API_KEYS``; an empty set turns auth off.
    ``torch_threads``: when set, ``torch.set_num_threads`` at start-up (process-wide).
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
                        ("max_items", max_items), ("engine_threads", engine_threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    state = ServeState(
        artifacts=Path(artifacts) if artifacts is not None else None, recommender=recommender,
        rerank=rerank, auth=ApiKeyCheck(keys_from_env() if api_keys is None else api_keys),
        max_body_bytes=max_body_bytes, max_batch=max_batch, max_items=max_items,
        engine_threads=engine_threads, torch_threads=torch_threads)
    events = EventsService(pseudonymizer=Pseudonymizer(user_key) if user_key else None)
    if isinstance(event_log, EventLog):
        events.log = event_log
    elif event_log is not None:
        events.log_dir = Path(event_log)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.torch_threads:
            import torch

            torch.set_num_threads(state.torch_threads)
        if state.recommender is None:
            from engine.loading import quiet_libraries

            quiet_libraries()
            state.recommender = await anyio.to_thread.run_sync(
                partial(Recommender.from_artifacts, state.artifacts, rerank=state.rerank))
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
    @app.post("/recommend", response_model=RecommendResponse, openapi_extra=_json_body("Session"),
              summary="Recommend items for one session")
    async def recommend(request: Request, k: int | None = Query(None, ge=1),
                        rerank: bool | None = None) -> Response:
        session = parse_one(await read_json(request, state.max_body_bytes), ("body",))
        engine = state.engine
        try:
            result = await state.run(partial(engine.recommend, k=k, rerank=rerank), session)
        except SessionError as err:
            raise _k_error(err, k, [session], engine.n_items, ("body",)) from None
        state.metrics.observe_results("/recommend", [result])
        return JSONResponse(result)

    @app.post("/recommend/batch", response_model=BatchResponse,
              openapi_extra=_json_body("BatchRequest"),
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
        engine = state.engine
        try:
            results = await state.run(partial(engine.recommend_many, k=k, rerank=rerank),
                                      sessions)
        except SessionError as err:
            raise _k_error(err, k, sessions, engine.n_items, ("body", "sessions")) from None
        state.metrics.observe_results("/recommend/batch", results)
        return JSONResponse({"results": results})

    @app.post("/items", response_model=ItemsAdded, status_code=201,
              openapi_extra=_json_body("ItemIn", "ItemsIn"),
              responses={409: {"model": ErrorResponse, "description": "item id exists"}},
              summary="Add catalogue items live (persisted)")
    async def add_items(request: Request, upsert: bool = False) -> Response:
        body = await read_json(request, state.max_body_bytes)
        items, base = items_of(body, state.max_items)
        engine = state.engine

        def write() -> dict[str, Any]:
            with state.write_lock:
                present = [i["item_id"] for i in items
                           if isinstance(i.get("item_id"), str) and i["item_id"] in engine.index]
                if present and not upsert:
                    raise HTTPException(409, f"item id(s) already in the catalogue: "
                                        f"{present[:5]}; delete them first or POST with "
                                        "?upsert=true to replace their fields")
                added = engine.add_items(items, upsert=upsert)
                engine.save()
                return {"added": added, "items": engine.n_items}

        try:
            result = await anyio.to_thread.run_sync(write)
        except CatalogueError as err:
            raise unprocessable(list(base), str(err)) from None
        return JSONResponse(result, status_code=201)

    @app.delete("/items/{item_id}", response_model=ItemRemoved,
                responses={404: {"model": ErrorResponse, "description": "no such item"}},
                summary="Remove a catalogue item live (persisted)")
    async def remove_item(item_id: str) -> Response:
        engine = state.engine

        def write() -> dict[str, Any]:
            with state.write_lock:
                engine.remove_items([item_id])
                engine.save()
                return {"removed": item_id, "items": engine.n_items}

        try:
            return JSONResponse(await anyio.to_thread.run_sync(write))
        except CatalogueError as err:
            raise HTTPException(404, str(err)) from None

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
