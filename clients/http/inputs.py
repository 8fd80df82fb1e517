"""What a request's values must be beyond their JSON types: texts that are strings and valid
Unicode, within the front door's count, and errors named by the HTTP request's own fields.

JSON may escape a lone UTF-16 surrogate (`"\\ud800"`), which Python decodes into a str that no
UTF-8 encoder takes: the tokenizer and protobuf then failed deep inside a call (HTTP 500). Such a
text is refused here, by its field's path, like any other bad value.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pydantic import WithJsonSchema

from tunewire.errors import InvalidArgument, TunewireError

# Texts one embeddings request may carry: TEI's max_client_batch_size, the embedder's default.
MAX_INPUTS = 4096

# The schema of a field that `texts` checks (typed Any: pydantic's own errors for a union named
# its branches, `input.str`, where these name the item, `input[3]`).
TEXTS_SCHEMA = WithJsonSchema(
    {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
)


def unicode_text(text: str, field: str) -> str:
    """`text`, if UTF-8 can encode it (no lone surrogate)."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            raise InvalidArgument(
                f"is not valid Unicode: character {exc.start} is a lone surrogate",
                field=field,
            ) from None
    return text


def texts(value: object, field: str, allow_empty: bool) -> list[str]:
    """A string or a list of strings (`field`, `field[i]`), at most MAX_INPUTS of them."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise InvalidArgument("must be a string or a list of strings", field=field)
    if not items:
        raise InvalidArgument("must not be empty", field=field, reason="EMPTY_INPUT")
    if len(items) > MAX_INPUTS:
        raise InvalidArgument(
            f"{len(items)} inputs in one request; the limit is {MAX_INPUTS}: split the request",
            field=field,
            reason="TOO_MANY_INPUTS",
        )
    for i, text in enumerate(items):
        where = f"{field}[{i}]"
        if not isinstance(text, str):
            if _tokens(text) or isinstance(text, list) and all(map(_tokens, text)):
                raise InvalidArgument("token arrays are not accepted: send the text", field=where)
            raise InvalidArgument("must be a string", field=where)
        if not text and not allow_empty:
            raise InvalidArgument("must not be an empty string", field=where)
        unicode_text(text, where)
    return items


def _tokens(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def unicode_values(value: object, field: str) -> None:
    """Every string in a parsed JSON value (keys too) valid Unicode; `field` names the value,
    `field.key` / `field[i]` what is inside it."""
    stack = [(value, field)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            unicode_text(item, where)
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
        elif isinstance(item, dict):
            for key, v in item.items():
                unicode_text(key, where)
                stack.append((v, f"{where}.{key}" if where else key))


def renamed(err: TunewireError, old: str, new: str) -> TunewireError:
    """`err` with its field's leading `old` (`input`, `input[3]`) named `new` instead."""
    if err.field and (err.field == old or err.field.startswith(f"{old}[")):
        err.field = new + err.field[len(old) :]
    return err


_CELL = re.compile(r"columns\[(\d+)\]\.values(?:\[(\d+)\])?")


def renamed_cells(err: TunewireError, field: Callable[[int, int | None], str]) -> TunewireError:
    """`err` about PredictRows' `columns[i].values[j]` (or `.values`) named by the HTTP
    request's own field: `field(i, j)` (j None for the whole column)."""
    match = _CELL.fullmatch(err.field or "")
    if match:
        row = match[2]
        err.field = field(int(match[1]), None if row is None else int(row))
    return err
