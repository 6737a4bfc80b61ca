"""What the OpenAPI documents of every HTTP service share: the problem+json error body, its
documented response, the health endpoints, and the settings of `GET /openapi.json` and
`GET /docs` (Swagger UI from swagger-ui-dist's files, committed in
producer_api/static/swagger-ui by `make vendor`, so `/docs` loads nothing from elsewhere).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from apispec import APISpec
from flask import Flask
from flask_smorest import Api
from marshmallow import INCLUDE, Schema, fields, validate

from shared.problems import http_exception_to_problem

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


class ProblemSchema(Schema):
    """RFC 9457 problem details, the body of every error response."""

    class Meta:
        # Problem details may carry extension members (RFC 9457 section 3.2).
        unknown = INCLUDE

    type = fields.String(
        required=True,
        metadata={"format": "uri", "description": "Identifies the kind of problem."},
    )
    title = fields.String(required=True, metadata={"description": "The HTTP status phrase."})
    status = fields.Integer(
        required=True,
        validate=validate.Range(min=400, max=599),
        metadata={"description": "The HTTP status code, repeated."},
    )
    detail = fields.String(required=True, metadata={"description": "What went wrong, for humans."})
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "Per field (dotted path, e.g. `to.0.user_id`): its messages."},
    )


class ProblemApi(Api):
    """flask-smorest's Api whose errors are problem+json and documented with `ProblemSchema`;
    each service adds an apispec plugin that documents its operations' errors."""

    ERROR_SCHEMA = ProblemSchema
    # Every error status is documented explicitly, so no catch-all `default` response.
    DEFAULT_ERROR_RESPONSE_NAME = None

    def handle_http_exception(self, error: Any) -> Any:
        return http_exception_to_problem(error)


def problem_response(description: str, headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An error response documented as `application/problem+json` with the Problem schema."""
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": dict(PROBLEM_REF)}},
    }
    if headers:
        response["headers"] = {name: dict(header) for name, header in headers.items()}
    return response


def docs_config(title: str, swagger_ui_url: str) -> dict[str, Any]:
    """flask-smorest's settings for `GET /openapi.json` (OpenAPI 3.1) and `GET /docs`, with
    Swagger UI's files served at `swagger_ui_url`."""
    return {
        "API_TITLE": title,
        "API_VERSION": "v1",
        "OPENAPI_VERSION": "3.1.0",
        "OPENAPI_URL_PREFIX": "/",
        "OPENAPI_JSON_PATH": "openapi.json",
        "OPENAPI_SWAGGER_UI_PATH": "docs",
        "OPENAPI_SWAGGER_UI_URL": swagger_ui_url,
        "OPENAPI_SWAGGER_UI_CONFIG": {"validatorUrl": None, "deepLinking": True},
    }


def document_health(app: Flask, spec: APISpec) -> None:
    """Add `/healthz`, `/readyz` and `/metrics` (no API key) to the spec."""
    no_key: list[dict[str, list[str]]] = []
    ok = {"type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]}
    checks = {
        "type": "object",
        "description": "Each dependency: `ok`, or why it is not.",
        "additionalProperties": {"type": "string"},
    }
    ready = {
        "type": "object",
        "properties": {"status": {"const": "ready"}, "checks": checks},
        "required": ["status", "checks"],
    }
    not_ready = problem_response("A dependency cannot be reached; `checks` says which.")
    operations = {
        "health.healthz": {
            "summary": "The process is alive and serving.",
            "responses": {
                "200": {"description": "Alive", "content": {"application/json": {"schema": ok}}}
            },
        },
        "health.readyz": {
            "summary": "Every dependency of this service is reachable.",
            "responses": {
                "200": {"description": "Ready", "content": {"application/json": {"schema": ready}}},
                "503": not_ready,
            },
        },
        "health.metrics": {
            "summary": "Prometheus metrics of this process.",
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        },
    }
    for endpoint, operation in operations.items():
        rule = next(app.url_map.iter_rules(endpoint))
        spec.path(
            rule=rule,
            operations={"get": {**operation, "tags": ["operations"], "security": no_key}},
        )
    spec.tag({"name": "operations", "description": "Health and metrics (no API key)"})
