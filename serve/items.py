"""The live catalogue-edit routes, ``POST /items`` and ``DELETE /items/{item_id}``.

Both go through ``Recommender.edit_items`` (``engine.edits``), the path ``build_index.py
add=/remove=`` takes too: the artifacts' writer lock, a reload when another process committed
since, one generation per edit, saved before the answer. Item bodies are validated by the one
item schema (``engine.items``). Ids may contain ``/`` (the path parameter takes the rest of the
path). Conflicts: an existing id 409, an unknown one 404, another writer holding the artifacts
past ``lock_wait_s`` 503 with ``Retry-After``, artifacts retrained under the service 409.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from engine.errors import (
    ArtifactsError,
    CatalogueError,
    DuplicateItemError,
    UnknownItemError,
    WriterBusyError,
)
from serve.models import (
    ErrorResponse,
    ItemRemoved,
    ItemsAdded,
    items_of,
    json_body,
    read_json,
    unprocessable,
)

if TYPE_CHECKING:
    from serve.app import ServeState

BUSY = {"model": ErrorResponse, "description": "another writer holds the artifacts; retry"}


def add_item_routes(app: FastAPI, state: ServeState) -> None:
    @app.post("/items", response_model=ItemsAdded, status_code=201,
              openapi_extra=json_body("ItemIn", "ItemsIn"),
              responses={409: {"model": ErrorResponse, "description": "item id exists"},
                         415: {"model": ErrorResponse, "description": "not application/json"},
                         503: BUSY},
              summary="Add catalogue items live (persisted)")
    async def add_items(request: Request, upsert: bool = False) -> Response:
        body = await read_json(request, state.max_body_bytes)
        items, base = items_of(body, state.max_items)
        try:
            result = await anyio.to_thread.run_sync(
                partial(state.edit, add=items, upsert=upsert, loc=base[1:]))
        except DuplicateItemError as err:
            raise HTTPException(409, f"{err}") from None
        except CatalogueError as err:
            raise unprocessable(["body", *err.loc], str(err)) from None
        return JSONResponse({"added": result["added"], "items": result["items"]},
                            status_code=201)

    @app.delete("/items/{item_id:path}", response_model=ItemRemoved,
                responses={404: {"model": ErrorResponse, "description": "no such item"},
                           503: BUSY},
                summary="Remove a catalogue item live (persisted); ids may contain '/'")
    async def remove_item(item_id: str) -> Response:
        try:
            result = await anyio.to_thread.run_sync(partial(state.edit, remove=[item_id]))
        except UnknownItemError as err:
            raise HTTPException(404, str(err)) from None
        except CatalogueError as err:
            raise unprocessable(["path", "item_id"], str(err)) from None
        return JSONResponse({"removed": item_id, "items": result["items"]})

    _add_error_handlers(app)


def _add_error_handlers(app: FastAPI) -> None:
    """Writer conflicts of live edits: another process holds the artifacts (503, retry), or
    the artifacts on disk were retrained under the running service (409, restart it)."""

    @app.exception_handler(WriterBusyError)
    async def busy(request: Request, err: WriterBusyError) -> Response:
        return JSONResponse({"detail": str(err)}, status_code=503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(ArtifactsError)
    async def conflict(request: Request, err: ArtifactsError) -> Response:
        return JSONResponse({"detail": f"{err}; restart the service on the current artifacts"},
                            status_code=409)
