"""`/healthz`, `/readyz` and `/metrics`, the same on every HTTP service of omnipush."""

from __future__ import annotations

from collections.abc import Sequence

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.flask_runtime import runtime_of
from shared.problems import problem
from shared.readiness import check_dependencies


def health_blueprint(dependencies: Sequence[str]) -> Blueprint:
    """Health endpoints; `/readyz` checks `dependencies` (any of store, broker, redis)."""
    blp = Blueprint("health", __name__)

    @blp.get("/healthz")
    def healthz() -> Response:
        """The process is alive and serving."""
        return jsonify(status="ok")

    @blp.get("/readyz")
    def readyz() -> Response:
        """Every dependency of this service is reachable; 503 naming those that are not."""
        checks = check_dependencies(runtime_of(), dependencies)
        failing = [name for name, state in checks.items() if state != "ok"]
        if failing:
            return problem(
                503,
                "Not Ready",
                "Cannot reach: " + ", ".join(f"{name} ({checks[name]})" for name in failing),
                checks=checks,
            )
        return jsonify(status="ready", checks=checks)

    @blp.get("/metrics")
    def metrics() -> Response:
        """Prometheus metrics of this process."""
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)

    return blp
