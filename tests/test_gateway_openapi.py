"""The gateway's OpenAPI document: valid, and honoured by the inbox REST (schemathesis).

schemathesis generates requests from the gateway's `/openapi.json` (valid and invalid ones, a
bounded number per operation) and sends them to an in-process gateway with a real user's browser
token; the test fails on any 5xx and on any response the document does not describe.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from flask import Flask

from shared.runtime import Runtime
from tests.conftest import new_tenant
from tests.gateway_support import add_items, new_user, token_for
from tests.openapi_support import CHECKS, generated_cases, load_schema, offline_document
from ws_gateway.app import create_app

schema = load_schema(offline_document(create_app))


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
    document = offline_document(create_app)
    assert document["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(document).validate()


@schema.parametrize()
@generated_cases()
def test_the_gateway_does_what_its_openapi_document_says(
    case: Any, gateway_app: Flask, browser_headers: dict[str, str]
) -> None:
    case.call_and_validate(app=gateway_app, headers=browser_headers, checks=CHECKS)
