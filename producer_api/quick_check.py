"""A quick check of the common message shape, ahead of the marshmallow schema.

Validating a message with marshmallow costs far more than storing it, and a batch holds up to 500
of them. Most messages have the same plain shape (users or topics, installed channels, plain
content or a template), so `quick_load` checks exactly that shape in a few dictionary look-ups
and returns what the schema would have loaded. Anything it is not sure of (an address, a URL, a
time, a wrong type, an error of any kind) it declines, and the schema decides and words the
error. The schema stays the authority: a property test holds `quick_load` to give either None or
exactly the schema's result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeGuard

from producer_api.vocabulary import CATEGORIES, MAX_RECIPIENTS, PRIORITIES

_FIELDS = frozenset(
    {
        "to",
        "channels",
        "content",
        "template",
        "params",
        "category",
        "priority",
        "send_at",
        "expires_at",
        "dedup_key",
        "callback_url",
    }
)
_CONTENT_FIELDS = frozenset({"title", "body", "url", "data"})
#: Fields whose values the quick check leaves to the schema unless they are absent or null.
_SCHEMA_ONLY = ("send_at", "expires_at", "callback_url")
_RECIPIENT_LIMITS = {"user_id": 200, "topic": 100}


def _text(value: Any, low: int, high: int) -> bool:
    return type(value) is str and low <= len(value) <= high


def _string_keys(value: Any) -> bool:
    return type(value) is dict and all(type(key) is str for key in value)


def _recipients(to: Any) -> TypeGuard[list[dict[str, str]]]:
    if type(to) is not list or not 1 <= len(to) <= MAX_RECIPIENTS:
        return False
    for entry in to:
        if type(entry) is not dict or len(entry) != 1:
            return False
        ((kind, value),) = entry.items()
        high = _RECIPIENT_LIMITS.get(kind)
        if high is None or not _text(value, 1, high):
            return False
    return True


def _content(content: Any) -> dict[str, Any] | None:
    if type(content) is not dict or not content.keys() <= _CONTENT_FIELDS:
        return None
    body = content.get("body", "")
    data = content.get("data", {})
    if (
        not _text(content.get("title"), 1, 200)
        or not _text(body, 0, 4000)
        or content.get("url") is not None
        or not _string_keys(data)
    ):
        return None
    return {"title": content["title"], "body": body, "url": None, "data": dict(data)}


def quick_load(body: Any, channel_names: Callable[[], tuple[str, ...]]) -> dict[str, Any] | None:
    """What `MessageCreateSchema().load(body)` returns, or None to let the schema decide."""
    if type(body) is not dict or not body.keys() <= _FIELDS:
        return None
    if any(body.get(name) is not None for name in _SCHEMA_ONLY):
        return None
    to, channels = body.get("to"), body.get("channels")
    if not _recipients(to) or type(channels) is not list or not channels:
        return None
    known = channel_names()
    if not all(type(c) is str and c in known for c in channels):
        return None
    if len(set(channels)) != len(channels):
        return None
    category = body.get("category", "notification")
    priority = body.get("priority", "normal")
    dedup_key = body.get("dedup_key")
    if category not in CATEGORIES or priority not in PRIORITIES:
        return None
    if dedup_key is not None and not _text(dedup_key, 1, 200):
        return None
    loaded: dict[str, Any] = {
        "to": [dict(entry) for entry in to],
        "channels": list(channels),
        "category": category,
        "priority": priority,
        "send_at": None,
        "expires_at": None,
        "dedup_key": dedup_key,
        "callback_url": None,
    }
    content, template, params = body.get("content"), body.get("template"), body.get("params")
    if (content is None) == (template is None) or (params is not None and template is None):
        return None
    if content is not None:
        checked = _content(content)
        if checked is None:
            return None
        loaded["content"] = checked
    else:
        if not _text(template, 1, 100) or (params is not None and not _string_keys(params)):
            return None
        loaded["template"] = template
    if "params" in body:
        loaded["params"] = None if params is None else dict(params)
    for name in ("content", "template"):
        if name in body and name not in loaded:
            loaded[name] = None
    return loaded
