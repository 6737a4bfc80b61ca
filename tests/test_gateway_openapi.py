"""The gateway's OpenAPI document: valid, and honoured by the inbox REST (schemathesis).

schemathesis generates requests from the gateway's `/openapi.json` (valid and invalid ones, a
bounded number per operation) and sends them to an in-process gateway with a real user's browser
token; the test fails on any 5xx and on any response the document does not describe.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
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

from shared.runtime import Runtime
from shared.settings import Settings
from tests.conftest import new_tenant
from tests.gateway_support import add_items, new_user, token_for
from ws_gateway.app import create_app

PROBLEM_JSON = "application/problem+json"
MAX_EXAMPLES = int(os.environ.get("OPENAPI_TEST_EXAMPLES", "40"))
DERANDOMIZE = not os.environ.get("OPENAPI_TEST_RANDOM")


@schemathesis.check
def gateway_errors_are_problem_details(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error is `application/problem+json` with RFC 9457's members and its own status."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.split(";")[0].strip() == PROBLEM_JSON, content_type
    body = json.loads(response.content)
    assert {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == response.status_code, body
    return True


CHECKS = [
    gateway_errors_are_problem_details,
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _document() -> dict[str, Any]:
    """The gateway's document, built at collection time from an app that connects to nothing."""
    offline = Settings(database_url="sqlite://", secret_key="openapi-only")
    runtime = Runtime.build(offline)
    try:
        response = create_app(offline, runtime=runtime).test_client().get("/openapi.json")
        assert response.status_code == 200, response.get_data(as_text=True)
        document: dict[str, Any] = response.get_json()
        return document
    finally:
        runtime.close()


schema = schemathesis.openapi.from_dict(_document())
schema.config.generation.update(max_examples=MAX_EXAMPLES, database="none")


@pytest.fixture(scope="module")
def gateway_app(inprocess_runtime: Runtime) -> Flask:
    """The gateway in process, on the in-process tests' store."""
    return create_app(runtime=inprocess_runtime)


@pytest.fixture(scope="module")
def browser_headers(inprocess_runtime: Runtime) -> dict[str, str]:
    """The browser token of a user with unread and read items in their inbox."""
    runtime = inprocess_runtime
    app_id, user = new_tenant(runtime).app_id, new_user()
    add_items(runtime, app_id, user, 3)
    add_items(runtime, app_id, user, 2, status="read")
    return {"Authorization": f"Bearer {token_for(runtime.settings, app_id, user, ttl=3600)}"}


def test_the_document_is_valid_openapi_3_1() -> None:
    document = _document()
    assert document["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(document).validate()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=DERANDOMIZE,
)
def test_the_gateway_does_what_its_openapi_document_says(
    case: Any, gateway_app: Flask, browser_headers: dict[str, str]
) -> None:
    case.call_and_validate(app=gateway_app, headers=browser_headers, checks=CHECKS)
