"""The one schema of a catalogue item given as input: ``build_index.py add=`` files, the
service's ``POST /items`` and the inline items of sessions all go through :func:`parse_item`.

An item is an object with ``item_id`` (a non-empty string; numbers are refused, quote them),
``title`` (a non-empty string), and optionally ``category`` (``"A > B"`` or a list of strings),
``brand``, ``description`` (strings), ``attributes`` (an object of name: string / number /
boolean / list of those) and ``created_ts`` (integer unix seconds). Unknown keys are refused,
text must be valid Unicode within MAX_TEXT_CHARS (descriptions MAX_DESCRIPTION_CHARS), every
number finite. Errors are ``CatalogueError`` (``SessionError`` for inline items) with one line
and ``loc``, the path of the offending field (the service's 422 ``loc``).

File formats of ``add=`` are decoded to the same objects first (:func:`read_item_file`): JSON
and JSONL as they are; CSV cells are text, so a CSV ``created_ts`` is read as a number and a
CSV ``attributes`` as a JSON object; Parquet columns keep their types.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.errors import CatalogueError, EngineError
from engine.inputs import (
    MAX_ATTRIBUTES,
    MAX_DESCRIPTION_CHARS,
    MAX_FILE_BYTES,
    check_id,
    check_scalar,
    check_text,
    check_ts,
    kind,
    loads,
    show,
)

ITEM_KEYS: tuple[str, ...] = ("item_id", "title", "category", "brand", "description",
                              "attributes", "created_ts")
ITEM_FILE_FORMATS: tuple[str, ...] = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")


def _error(cls: type[EngineError], where: str, loc: tuple[str | int, ...]) -> Any:
    def fail(message: str) -> EngineError:
        field = message.split('"')[1] if message.startswith('"') else None
        error = cls(f"{where}: {message}" if where else message)
        error.loc = (*loc, field) if field and field in ITEM_KEYS else loc
        return error
    return fail


def parse_item(obj: Any, where: str = "", *, loc: tuple[str | int, ...] = (),
               inline: bool = False, error: type[EngineError] = CatalogueError
               ) -> dict[str, Any]:
    """Validate one item object; returns it normalised (stripped strings, ``category`` as
    given, absent keys absent). ``inline``: an item inside a session event (``item_id``
    optional). Raises ``error`` naming ``where`` and the field."""
    fail = _error(error, where, loc)
    if not isinstance(obj, Mapping):
        needs = '"title"' if inline else '"item_id" and "title"'
        raise fail(f"an item must be an object with at least {needs}, e.g. {{\"item_id\": "
                   f"\"NEW-1\", \"title\": \"Acme USB microscope\"}}; got {kind(obj)} "
                   f"{show(obj)}")
    unknown = sorted(str(k) for k in obj if k not in ITEM_KEYS)
    if unknown:
        raise _error(error, where, (*loc, unknown[0]))(
            f"unknown key(s) {unknown}; an item's keys are {list(ITEM_KEYS)}")
    item: dict[str, Any] = {}
    item_id = check_id(obj.get("item_id"), "item_id", fail, required=not inline)
    if item_id is not None:
        item["item_id"] = item_id
    item["title"] = check_text(obj.get("title"), "title", fail, required=True)
    category = obj.get("category")
    if isinstance(category, list):
        item["category"] = [check_text(c, "category", fail, required=True) for c in category]
    elif category is not None:
        if not isinstance(category, str):
            raise fail(f"\"category\" must be a string (\"A > B\") or a list of strings; got "
                       f"{kind(category)} {show(category)}")
        item["category"] = check_text(category, "category", fail)
    for key, limit in (("brand", None), ("description", MAX_DESCRIPTION_CHARS)):
        value = check_text(obj.get(key), key, fail, **({"max_chars": limit} if limit else {}))
        if value is not None:
            item[key] = value
    attributes = obj.get("attributes")
    if attributes is not None:
        if not isinstance(attributes, Mapping):
            raise fail(f"\"attributes\" must be an object of name: value; got "
                       f"{kind(attributes)} {show(attributes)}")
        if len(attributes) > MAX_ATTRIBUTES:
            raise fail(f"\"attributes\" holds {len(attributes)} entries; at most "
                       f"{MAX_ATTRIBUTES}")
        item["attributes"] = {check_text(name, "attributes", fail, required=True):
                              check_scalar(value, "attributes", fail)
                              for name, value in attributes.items()}
    created = check_ts(obj.get("created_ts"), "created_ts", fail)
    if created is not None:
        item["created_ts"] = created
    return {k: v for k, v in item.items() if v is not None}


def parse_items(objs: Any, source: str, *, loc: tuple[str | int, ...] = ("items",),
                line_numbers: Sequence[int] | None = None, label: str = "item"
                ) -> list[dict[str, Any]]:
    """Validate a list of items and refuse duplicate ids; messages name ``source`` and the
    item's position (``line N`` when ``line_numbers`` are given)."""
    if isinstance(objs, (str, bytes, Mapping)) or not isinstance(objs, Sequence):
        error = CatalogueError(f"{source}: expected a list of item objects with at least "
                               f"\"item_id\" and \"title\"; got {kind(objs)}")
        error.loc = loc
        raise error
    if not objs:
        error = CatalogueError(f"{source}: no items to add")
        error.loc = loc
        raise error
    items, first_at = [], {}
    for n, obj in enumerate(objs):
        where = f"{source} {label} {line_numbers[n] if line_numbers else n}"
        item = parse_item(obj, where, loc=(*loc, n))
        if item["item_id"] in first_at:
            error = CatalogueError(f"{where}: duplicate ids: \"item_id\" {item['item_id']!r} is "
                                   f"also {label} {first_at[item['item_id']]}; item ids must be "
                                   "unique")
            error.loc = (*loc, n, "item_id")
            raise error
        first_at[item["item_id"]] = line_numbers[n] if line_numbers else n
        items.append(item)
    return items


def plain_value(value: Any) -> Any:
    """A pandas/numpy cell as the plain JSON value it stands for (missing -> None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "tolist"):  # numpy scalars and arrays (Parquet list columns)
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _csv_cell(key: str, value: Any, where: str) -> Any:
    value = plain_value(value)
    if not isinstance(value, str) or not value.strip():
        return None if isinstance(value, str) else value
    if key == "created_ts":
        try:
            number = float(value)
        except ValueError:
            return value  # the schema refuses it with its own message
        return int(number) if number.is_integer() else number
    if key == "attributes":
        try:
            return loads(value, CatalogueError, where)
        except json.JSONDecodeError as err:
            raise CatalogueError(f"{where}: \"attributes\" must be a JSON object in CSV "
                                 f"({err.msg})") from None
    return value


def read_item_file(path: str | Path) -> list[dict[str, Any]]:
    """Validated items from a JSONL, JSON (a list), CSV or Parquet file (see module docstring);
    CatalogueError naming the file, the line or row, and the field."""
    path = Path(path)
    source = f"add={path}"
    suffix = path.suffix.lower()
    if suffix not in ITEM_FILE_FORMATS:
        raise CatalogueError(f"{source}: expected a file ending in one of "
                             f"{list(ITEM_FILE_FORMATS)}, got {suffix or 'no suffix'!r}")
    if not path.is_file():
        raise CatalogueError(f"{source}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise CatalogueError(f"{source}: the file is larger than {MAX_FILE_BYTES >> 20} MiB; "
                             "split it into several add= runs")
    try:
        if suffix in (".parquet", ".csv"):
            import pandas as pd

            frame = (pd.read_parquet(path) if suffix == ".parquet"
                     else pd.read_csv(path, dtype=str, keep_default_na=False))
            unknown = [str(c) for c in frame.columns if c not in ITEM_KEYS]
            if unknown:
                raise CatalogueError(f"{source}: unknown column(s) {unknown}; allowed columns "
                                     f"are {list(ITEM_KEYS)}")
            rows = [{k: (_csv_cell(k, v, f"{source} row {n + 2}") if suffix == ".csv"
                         else plain_value(v)) for k, v in row.items()}
                    for n, row in enumerate(frame.to_dict("records"))]
            rows = [{k: v for k, v in row.items() if v is not None} for row in rows]
            first = 2 if suffix == ".csv" else 1  # a CSV's line 1 is its header
            return parse_items(rows, source, line_numbers=[first + n for n in range(len(rows))],
                               label="row")
        text = path.read_text(encoding="utf-8")
    except CatalogueError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise CatalogueError(f"{source}: unreadable ({type(err).__name__}: {err})") from None
    if suffix == ".json":
        try:
            rows = loads(text, CatalogueError, source)
        except json.JSONDecodeError as err:
            raise CatalogueError(f"{source}: not valid JSON ({err.msg} at line {err.lineno} "
                                 f"column {err.colno}); expected a list of item objects"
                                 ) from None
        return parse_items(rows, source)
    rows, numbers = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(loads(line, CatalogueError, f"{source} line {number}"))
            except json.JSONDecodeError as err:
                raise CatalogueError(f"{source} line {number}: not valid JSON ({err.msg}); "
                                     "expected one item object per line") from None
            numbers.append(number)
    return parse_items(rows, source, line_numbers=numbers, label="line")
