"""Where a Flask app of omnipush (the API or the gateway) keeps its runtime."""

from __future__ import annotations

from flask import Flask, current_app

from shared.runtime import Runtime

EXTENSION = "omnipush"


def runtime_of(app: Flask | None = None) -> Runtime:
    """The runtime attached to `app` (default: the current app)."""
    target = app if app is not None else current_app
    runtime: Runtime = target.extensions[EXTENSION]
    return runtime
