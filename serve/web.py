"""The page to try the recommender (``/ui/``): static HTML/JS/CSS from ``serve/web/`` (no build
step) and the small JSON routes it needs besides ``/recommend`` and ``/events``.

- ``GET /`` redirects to ``/ui/``; ``GET /ui/`` is the page, ``/ui/static/*`` its files.
- ``POST /catalogue/search`` ``{"q": "kettle", "limit": 20}`` -> items whose title, category
  or brand hold every word (title hits first, then by popularity); ``{"q": ""}`` gives the
  popular items; ``{"ids": [...]}`` looks items up. A POST, so search words never sit in a URL
  (or an access log).
- ``GET /ui/examples`` -> the example sessions (``examples/*.json`` of the checkout).
- ``GET /ui/reports`` -> the benchmark reports (``benchmarks/results/*.md``) as HTML;
  ``GET /ui/reports/files/{name}.png`` their plots.

The page, its files, the examples and the reports are public (no API key: they hold no data);
the catalogue search, like every data route, needs the key when keys are configured.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from recdata import PROJECT_ROOT
from serve.events import require_json
from serve.models import read_json, unprocessable

WEB_DIR = Path(__file__).resolve().parent / "web"
REPORTS_DIR = PROJECT_ROOT / "benchmarks" / "results"
EXAMPLES_DIR = PROJECT_ROOT / "examples"
MAX_RESULTS = 50
_PNG = re.compile(r"^[A-Za-z0-9_.-]+\.png$")
_IMG_SRC = re.compile(r'src="([A-Za-z0-9_.-]+\.png)"')


class _SearchText:
    """Lower-cased searchable text of one catalogue snapshot (rebuilt when it is swapped)."""

    def __init__(self) -> None:
        self._frame: Any = None
        self.title: np.ndarray = np.zeros(0, object)
        self.full: np.ndarray = np.zeros(0, object)
        self.row_of: dict[str, int] = {}

    def of(self, frame: Any) -> _SearchText:
        if frame is not self._frame:
            title = frame["title"].astype(str).str.lower()
            extra = (frame["category"].fillna("").astype(str) + " "
                     + frame["brand"].fillna("").astype(str)).str.lower()
            self.title = title.to_numpy(dtype=object)
            self.full = (title + " " + extra).to_numpy(dtype=object)
            self.row_of = {str(i): r for r, i in enumerate(frame["item_id"])}
            self._frame = frame
        return self


def _item_view(frame: Any, row: int, counts: Any) -> dict[str, Any]:
    item_id = str(frame["item_id"].iat[row])
    total, recent = counts.get(item_id) if counts is not None else (0, 0)
    return {"item_id": item_id, "title": str(frame["title"].iat[row]),
            "category": frame["category"].iat[row], "brand": frame["brand"].iat[row],
            "segment": str(frame["segment"].iat[row]),
            "popularity": int(frame["popularity"].iat[row]), "logged": total, "recent": recent}


def search_catalogue(engine: Any, text: _SearchText, query: str, limit: int) -> list[dict]:
    """Items holding every word of ``query`` (title hits first, then popularity)."""
    frame = engine.catalogue
    counts = engine.counts
    text = text.of(frame)
    words = query.lower().split()
    if not words:
        order = [text.row_of[i] for i in engine.popular_ids()[:limit] if i in text.row_of]
        return [_item_view(frame, r, counts) for r in order]
    hits = np.fromiter((all(w in t for w in words) for t in text.full), bool, len(text.full))
    in_title = np.fromiter((all(w in t for w in words) for t in text.title), bool,
                           len(text.title))
    rows = np.flatnonzero(hits)
    popularity = frame["popularity"].to_numpy()[rows]
    rows = rows[np.lexsort((-popularity, ~in_title[rows]))]
    return [_item_view(frame, int(r), counts) for r in rows[:limit]]


def render_reports(folder: Path = REPORTS_DIR) -> list[dict[str, str]]:
    """Every ``*.md`` report as ``{"name", "html"}``, plots pointed at ``/ui/reports/files``."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    reports = []
    for path in sorted(folder.glob("*.md")) if folder.is_dir() else []:
        html = md.render(path.read_text(encoding="utf-8"))
        reports.append({"name": path.stem,
                        "html": _IMG_SRC.sub(r'src="/ui/reports/files/\1"', html)})
    return reports


def add_web_routes(app: FastAPI, engine: Callable[[], Any]) -> None:
    """Register the page and its routes; ``engine()`` returns the loaded Recommender."""
    text = _SearchText()
    app.mount("/ui/static", StaticFiles(directory=WEB_DIR), name="ui-static")

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/ui/")

    @app.get("/ui/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    @app.post("/catalogue/search", summary="Search the catalogue by words, or look up ids")
    async def catalogue_search(request: Request) -> Response:
        require_json(request)
        recommender = engine()
        body = await read_json(request, 64 * 1024)
        if not isinstance(body, dict) or not set(body) <= {"q", "limit", "ids"}:
            raise unprocessable(["body"], 'expected {"q": "words", "limit": 20} or '
                                '{"ids": ["I00042", ...]}')
        limit = body.get("limit", 20)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_RESULTS:
            raise unprocessable(["body", "limit"], f"expected an integer 1..{MAX_RESULTS}")
        if "ids" in body:
            ids = body["ids"]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise unprocessable(["body", "ids"], "expected a list of item id strings")
            frame, counts = recommender.catalogue, recommender.counts
            row_of = text.of(frame).row_of
            rows = [row_of[i] for i in ids[:MAX_RESULTS] if i in row_of]
            return JSONResponse({"items": [_item_view(frame, r, counts) for r in rows]})
        query = body.get("q", "")
        if not isinstance(query, str):
            raise unprocessable(["body", "q"], "expected a string of search words")
        return JSONResponse({"items": search_catalogue(recommender, text, query, limit)})

    @app.get("/ui/examples", include_in_schema=False)
    async def examples() -> Response:
        found = []
        for path in sorted(EXAMPLES_DIR.glob("*.json")) if EXAMPLES_DIR.is_dir() else []:
            try:
                found.append({"name": path.stem, "session": json.loads(path.read_text())})
            except (OSError, ValueError):
                continue
        return JSONResponse({"examples": found})

    @app.get("/ui/reports", include_in_schema=False)
    async def reports() -> Response:
        return JSONResponse({"reports": render_reports()})

    @app.get("/ui/reports/files/{name}", include_in_schema=False)
    async def report_file(name: str) -> Response:
        path = REPORTS_DIR / name
        if not _PNG.match(name) or not path.is_file():
            raise HTTPException(404, "no such plot")
        return FileResponse(path, media_type="image/png")
