"""What the schemathesis tests of the API's and the gateway's OpenAPI documents share.

Each service's test generates requests from that service's `/openapi.json` (valid and invalid
ones, a bounded number per operation) and fails on any 5xx and on any response whose status,
content type, headers or body its document does not describe.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from shared.runtime import Runtime
from shared.settings import Settings

PROBLEM_JSON = "application/problem+json"
#: Generated cases per operation and generation mode: enough to find the classic bugs (NUL bytes,
#: odd Unicode, boundary lengths, wrong types), small enough for a file to run in about a minute.
#: `OPENAPI_TEST_EXAMPLES=500 OPENAPI_TEST_RANDOM=1 pytest tests/test_openapi.py` digs deeper.
MAX_EXAMPLES = int(os.environ.get("OPENAPI_TEST_EXAMPLES", "40"))
#: CI runs the same cases every time (a failure is reproducible and not someone else's surprise).
DERANDOMIZE = not os.environ.get("OPENAPI_TEST_RANDOM")


@schemathesis.check
def errors_are_problem_details(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error is `application/problem+json` (schemathesis would accept any `+json`) with the
    members of RFC 9457 and the response's own status."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.split(";")[0].strip() == PROBLEM_JSON, content_type
    body = json.loads(response.content)
    assert {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == response.status_code, body
    return True


CHECKS = [
    errors_are_problem_details,
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def load_schema(document: dict[str, Any]) -> OpenApiSchema:
    """The schemathesis schema of `document`, generating `MAX_EXAMPLES` cases per operation."""
    schema = schemathesis.openapi.from_dict(document)
    schema.config.generation.update(max_examples=MAX_EXAMPLES, database="none")
    return schema


def generated_cases() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """hypothesis's settings for the generated cases of one test."""
    return settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        # One tenant per operation is meant (function_scoped_fixture), and slow or filtered data
        # generation is schemathesis's business, not a defect of the service.
        suppress_health_check=list(HealthCheck),
        derandomize=DERANDOMIZE,
    )


def offline_document(create_app: Callable[..., Flask]) -> dict[str, Any]:
    """The OpenAPI document of the app that `create_app` builds, on settings that connect to
    nothing (only its routes are read): schemathesis needs it at collection time."""
    offline = Settings(database_url="sqlite://", secret_key="openapi-only")
    runtime = Runtime.build(offline)
    try:
        response = create_app(offline, runtime=runtime).test_client().get("/openapi.json")
        assert response.status_code == 200, response.get_data(as_text=True)
        document: dict[str, Any] = response.get_json()
        return document
    finally:
        runtime.close()
