"""Prometheus metrics of the HTTP requests a service answers, the same on the API and the gateway.

Requests are counted by method, route and status, and timed by method and route. The route is
the URL rule (`/v1/messages/<message_id>`), never the path, so that ids do not become label
values; a request no rule matches is counted under `UNMATCHED`. Code that answers requests
without Flask (the API's fast path) records them with `observe`.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "omnipush_http_requests_total",
    "HTTP requests answered, by method, route (URL rule) and status.",
    ["method", "route", "status"],
)
DURATION = Histogram(
    "omnipush_http_request_duration_seconds",
    "Time taken to answer HTTP requests, by method and route (URL rule).",
    ["method", "route"],
)
#: The route label of a request that matched no URL rule (a 404 or 405).
UNMATCHED = "<unmatched>"
#: Methods counted under their own name; any other a client sends is counted as `other`.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


#: Each (method, route, status)'s counter and histogram: `labels()` costs more than the rest of
#: recording a request, and the fast path answers thousands a second.
_SERIES: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def observe(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request and its duration."""
    method = method if method in _METHODS else "other"
    series = _SERIES.get((method, route, status))
    if series is None:
        series = (REQUESTS.labels(method, route, str(status)), DURATION.labels(method, route))
        _SERIES[(method, route, status)] = series
    requests, duration = series
    requests.inc()
    duration.observe(seconds)


def install_request_metrics(app: Flask) -> None:
    """Count and time every request `app` answers. Install it before any other
    `before_request` hook, so that requests those refuse are timed too."""

    @app.before_request
    def start_timing() -> None:
        g.http_metrics_started = time.perf_counter()

    @app.after_request
    def record(response: Response) -> Response:
        started: float = g.get("http_metrics_started", time.perf_counter())
        rule = request.url_rule
        observe(
            request.method,
            rule.rule if rule is not None else UNMATCHED,
            response.status_code,
            time.perf_counter() - started,
        )
        return response
