"""Liveness, readiness and metrics of the API process."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.flask_runtime import runtime_of
from shared.problems import problem
from shared.readiness import check_dependencies

blp = Blueprint("health", __name__)


@blp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@blp.get("/readyz")
def readyz() -> Response:
    checks = check_dependencies(runtime_of())
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
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)
