"""Request bodies parsed as JSON within limits that the rest of a service can rely on.

Python's parser raises RecursionError on deeply nested arrays and ValueError on integers of
more than 4300 digits; neither is a `json.JSONDecodeError`, so code that catches only that
answers such bodies with a 500. Nesting that the parser survives can still exhaust the stack of
whatever walks the value next (validation, the store's JSON encoder). `loads` turns all of these
into errors a caller can answer as a 400: `json.JSONDecodeError` for text that is not JSON (as
webargs raises it), `UnreadableJson` for JSON beyond the limits.
"""

from __future__ import annotations

import json
import sys
from typing import Any

#: The deepest nesting of arrays and objects a body may have.
MAX_DEPTH = 100


class UnreadableJson(ValueError):
    """A JSON document this service does not read: nested too deeply, or a number too long."""


def loads(raw: bytes | str) -> Any:
    """The JSON value of `raw` (UTF-8 when bytes); see the module docstring for the errors."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise json.JSONDecodeError(
                f"Bytes decoding error : {error.reason}", doc=str(error.object), pos=error.start
            ) from error
    try:
        value = json.loads(raw)
    except RecursionError:
        raise UnreadableJson(_too_deep()) from None
    except json.JSONDecodeError:
        raise
    except ValueError:
        # The only other ValueError of the parser: an integer over the conversion limit.
        raise UnreadableJson(
            f"The body holds a number of more than {sys.get_int_max_str_digits()} digits."
        ) from None
    # Cheap on the common body: fewer brackets than the limit cannot nest deeper than it.
    if raw.count("[") + raw.count("{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise UnreadableJson(_too_deep())
    return value


def _too_deep() -> str:
    return f"The body nests arrays and objects more than {MAX_DEPTH} levels deep."


def _depth(value: Any) -> int:
    """How deeply `value` nests arrays and objects, found without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest
