"""The one function that turns an item's fields into the text the towers read."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

CATEGORY_SEP = " > "


def _clean(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return " ".join(str(value).split())


def _category(value: Any) -> str:
    is_seq = not isinstance(value, str) and hasattr(value, "__iter__")
    if is_seq and not isinstance(value, Mapping):
        parts = [_clean(v) for v in list(value)]
        return CATEGORY_SEP.join(p for p in parts if p)
    return _clean(value)


def _attributes(value: Any) -> str:
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return _clean(value)
    if isinstance(value, Mapping):
        return "; ".join(f"{_clean(k)}: {_clean(v)}" for k, v in value.items() if _clean(v))
    return _clean(value)


def item_text(item: Mapping[str, Any], max_description_words: int = 40) -> str:
    """Build the text of one item from its fields, most informative first.

    ``title. category path. brand. attributes. description`` — each part only when present;
    the description is cut to ``max_description_words`` words so titles are not truncated
    away by the encoder's max length. Missing and NaN fields are skipped.

    >>> item_text({"title": "USB microscope", "category": ["Lab", "Optics"], "brand": "Acme"})
    'USB microscope. Lab > Optics. Brand: Acme.'
    """
    parts = [_clean(item.get("title"))]
    category = _category(item.get("category"))
    if category:
        parts.append(category)
    brand = _clean(item.get("brand"))
    if brand:
        parts.append(f"Brand: {brand}")
    attributes = _attributes(item.get("attributes"))
    if attributes:
        parts.append(attributes)
    description = _clean(item.get("description"))
    if description:
        words = description.split()
        parts.append(" ".join(words[:max_description_words]))
    text = ". ".join(p.rstrip(".") for p in parts if p)
    return text + "." if text else ""


def catalogue_texts(catalogue: Any) -> list[str]:
    """item_text for every row of a catalogue DataFrame, in row order."""
    return [item_text(row) for row in catalogue.to_dict("records")]
