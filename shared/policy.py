"""The settings of the dispatcher's policy stages: the operator's defaults and each app's own.

A policy is one document, the same shape in `[policy]` of `omnipush.toml` (durations written
as `"5m"`) and in `PUT /v1/policy` (durations in seconds):

- `dedup_window`: category -> seconds within which the same content (or `dedup_key`) to the
  same recipient on the same channel is `deduplicated`; 0 turns content dedup off.
- `frequency_cap`: category -> `{"limit", "window"}`, at most `limit` deliveries per recipient,
  channel and category in any `window` seconds (`throttled`); null is unlimited.
- `discard`: `{"all": bool, "templates": [code, ...]}`, messages of the app (or of those
  templates) are `canceled` at dispatch instead of sent.
- `fail_open` (operator only): the Redis stages (`dedup`, `frequency_cap`) that let a delivery
  through unchecked while Redis is unreachable, instead of holding the dispatcher until it is
  back.

An app's stored overrides replace the defaults key by key (a category of `dedup_window`, a
category of `frequency_cap`, `discard` as a whole); what it leaves out stays the operator's.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, select

from shared.models import AppPolicy, table_of

CATEGORIES = ("notification", "marketing", "verification")
#: The stages that keep their state in Redis, by the name `fail_open` lists them with.
REDIS_STAGES = ("dedup", "frequency_cap")
DEFAULT_DEDUP_SECONDS = 300.0
DAY_SECONDS = 86400.0
#: The bounds of an app's settings (and of the operator's): a dedup window of at most 30 days,
#: a frequency cap of at most a million deliveries in at most 31 days.
MAX_DEDUP_WINDOW = 30 * DAY_SECONDS
MAX_CAP_WINDOW = 31 * DAY_SECONDS
MAX_CAP_LIMIT = 1_000_000

_P = table_of(AppPolicy)
# Built once: the dispatcher reads the overrides in every batch.
_OVERRIDES = select(_P.c.app_id, _P.c.overrides).where(
    _P.c.app_id.in_(bindparam("ids", expanding=True))
)


@dataclass(frozen=True)
class Cap:
    """At most `limit` deliveries in any `window` seconds."""

    limit: int
    window: float


@dataclass(frozen=True)
class Policy:
    """The settings every policy stage reads for one app; see the module docstring."""

    dedup_window: Mapping[str, float] = field(
        default_factory=lambda: dict.fromkeys(CATEGORIES, DEFAULT_DEDUP_SECONDS)
    )
    frequency_cap: Mapping[str, Cap | None] = field(
        default_factory=lambda: {
            "notification": None,
            "marketing": Cap(5, DAY_SECONDS),
            "verification": None,
        }
    )
    discard_all: bool = False
    discard_templates: frozenset[str] = frozenset()
    fail_open: frozenset[str] = frozenset()

    def with_document(self, document: Mapping[str, Any]) -> Policy:
        """This policy with the keys `document` sets replaced (see the module docstring);
        `document` is already valid (the API's and the config file's schemas check it)."""
        windows = {**self.dedup_window, **document.get("dedup_window", {})}
        caps = dict(self.frequency_cap)
        for category, cap in document.get("frequency_cap", {}).items():
            caps[category] = None if cap is None else Cap(int(cap["limit"]), float(cap["window"]))
        discard = document.get("discard")
        return Policy(
            dedup_window={c: float(s) for c, s in windows.items()},
            frequency_cap=caps,
            discard_all=self.discard_all if discard is None else bool(discard.get("all", False)),
            discard_templates=(
                self.discard_templates
                if discard is None
                else frozenset(discard.get("templates", ()))
            ),
            fail_open=frozenset(document.get("fail_open", self.fail_open)),
        )

    def document(self) -> dict[str, Any]:
        """The whole policy as `GET /v1/policy` shows it."""
        return {
            "dedup_window": {c: self.dedup_window.get(c, 0.0) for c in CATEGORIES},
            "frequency_cap": {
                c: None
                if (cap := self.frequency_cap.get(c)) is None
                else {
                    "limit": cap.limit,
                    "window": cap.window,
                }
                for c in CATEGORIES
            },
            "discard": {"all": self.discard_all, "templates": sorted(self.discard_templates)},
            "fail_open": sorted(self.fail_open),
        }


def app_overrides(connection: Connection, app_ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """app id -> its stored overrides, for those of `app_ids` that have any."""
    if not app_ids:
        return {}
    rows = connection.execute(_OVERRIDES, {"ids": list(app_ids)})
    return {app_id: overrides for app_id, overrides in rows}


def app_policies(
    connection: Connection, defaults: Policy, app_ids: Collection[str]
) -> dict[str, Policy]:
    """app id -> the policy its messages are dispatched under now, for each of `app_ids`."""
    overrides = app_overrides(connection, app_ids)
    return {
        app_id: defaults.with_document(overrides[app_id]) if app_id in overrides else defaults
        for app_id in app_ids
    }
