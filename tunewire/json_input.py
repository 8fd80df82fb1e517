"""Parsing JSON that clients send (a job's config, generation overrides) without surprises.

Python's json module answers hostile input with exceptions no client should see as INTERNAL: a
RecursionError for deeply nested arrays (100,000 `[`), a ValueError for an integer of more than
4,300 digits. Nesting deeper than `MAX_DEPTH` is refused as well, because everything that later
walks the value (validation, records) recurses too. Each is INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import json
from typing import Any

from tunewire.errors import InvalidArgument

# Far deeper than any config (Ludwig's nest a handful of levels), far below the recursion limit.
MAX_DEPTH = 64


def parse_json(text: str, field: str, max_depth: int = MAX_DEPTH) -> Any:
    """The value `text` holds, or InvalidArgument on `field` saying what is wrong with it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"not valid JSON: {exc}", field=field) from None
    except RecursionError:
        raise InvalidArgument(
            f"nested too deeply (at most {max_depth} levels)", field=field
        ) from None
    except ValueError as exc:  # an integer past Python's digit limit
        raise InvalidArgument(f"not accepted: {exc}", field=field) from None
    if _depth(value) > max_depth:
        raise InvalidArgument(f"nested too deeply (at most {max_depth} levels)", field=field)
    return value


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in `value` (iteratively: no recursion of its own)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest
