"""Prometheus metrics of one app, in its own ``CollectorRegistry`` (two apps in one process, as
in the tests, never share or clash): requests by route/method/status, latency per route, the
engine's per-stage latency (its ``timings_ms``), recommendations by user segment, index size.

Routes are labelled by their path template (``/items/{item_id}``), never the raw path, so the
label set stays bounded whatever clients send. ``RequestMiddleware`` (the app's outermost
middleware) does the per-request part: request id, counts, latency, crash -> 500 JSON.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("encode", "search", "rank", "rerank", "total")
# seconds: 0.5 ms .. 10 s, dense where a CPU request lands (tens of ms)
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
)
PREFIX = "firstclick"


class ServeMetrics:
    """The app's collectors; ``render`` gives the Prometheus text exposition."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{PREFIX}_http_requests", "HTTP requests by route template, method and status",
            ("route", "method", "status"), registry=self.registry)
        self.request_seconds = Histogram(
            f"{PREFIX}_http_request_duration_seconds", "HTTP request latency by route template",
            ("route", "method"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage_seconds = Histogram(
            f"{PREFIX}_engine_stage_duration_seconds",
            "engine time per stage (encode, search, rerank, total) per recommend call",
            ("route", "stage"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.recommendations = Counter(
            f"{PREFIX}_recommendations", "sessions answered, by user segment and rerank",
            ("segment", "reranked"), registry=self.registry)
        self.index_items = Gauge(
            f"{PREFIX}_index_items", "items the index can return", registry=self.registry)
        self.in_flight = Gauge(
            f"{PREFIX}_http_requests_in_flight", "HTTP requests being served",
            registry=self.registry)

    def track_index_size(self, size: Callable[[], float]) -> None:
        """Read the index size at scrape time (live adds/removes change it)."""
        self.index_items.set_function(size)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route, method).observe(seconds)

    def observe_results(self, route: str, results: Sequence[dict[str, Any]]) -> None:
        """Stage times of one engine call: each result carries its own share of the batch's
        stages, so the call's time per stage is their sum."""
        if not results:
            return
        timings = [r["timings_ms"] for r in results]
        stage_ms = {stage: sum(t.get(stage, 0.0) for t in timings) for stage in STAGES}
        for stage in STAGES:
            self.stage_seconds.labels(route, stage).observe(stage_ms[stage] / 1000.0)
        for result in results:
            self.recommendations.labels(result["segment"], str(bool(result["reranked"])).lower()
                                        ).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
REQUEST_ID_HEADER = "x-request-id"


def route_label(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The matched route's path template; matched here when the request never reached the
    router (e.g. refused by auth); ``unmatched`` for paths no route serves."""
    route = scope.get("route")
    if route is None:
        route = next((r for r in routes if r.matches(scope)[0] == Match.FULL), None)
    return getattr(route, "path", None) or "unmatched"


class RequestMiddleware:
    """Outermost ASGI middleware: a request id per request (``X-Request-ID``, kept when the
    client sent a sane one), count and latency per route, an access log line (debug level; route
    template only), and any exception that escaped the app turned into a 500 JSON body naming
    the request id (logged with its traceback)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = next((v.decode("latin-1") for k, v in scope["headers"]
                           if k.lower() == REQUEST_ID_HEADER.encode()), "")
        if not _REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        start = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # the route template, never the raw path (it may hold a user id)
            log.exception("request %s %s %s failed", request_id, scope["method"],
                          route_label(scope, self.routes))
            status = 500
            if not started:
                response = JSONResponse(
                    {"detail": "internal server error", "request_id": request_id}, 500,
                    headers={REQUEST_ID_HEADER: request_id})
                await response(scope, receive, send)
        finally:
            self.metrics.in_flight.dec()
            route, seconds = route_label(scope, self.routes), time.perf_counter() - start
            self.metrics.observe_request(route, scope["method"], status, seconds)
            # the access log: route template, status, time; no path values, query strings or
            # bodies (they may hold user ids, search words, session contents)
            log.debug("%s %s %d %.1f ms id=%s", scope["method"], route, status, seconds * 1e3,
                      request_id)
