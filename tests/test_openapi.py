"""The OpenAPI document: complete, valid, honoured by the API (schemathesis), browsable at /docs.

schemathesis generates requests from `/openapi.json` (valid and invalid ones, a bounded number per
operation) and sends them to the in-process app with a real tenant's API key; the test fails on
any 5xx and on any response whose status, content type, headers or body the document does not
describe.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient

from producer_api.api_keys import NewApp, create_app_with_key
from producer_api.app import MAX_BODY_BYTES, create_app
from shared.runtime import Runtime
from tests.conftest import bearer
from tests.openapi_support import (
    CHECKS,
    PROBLEM_JSON,
    generated_cases,
    load_schema,
    offline_document,
)

HTTP_METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def spec(api_app: Flask) -> dict[str, Any]:
    response = api_app.test_client().get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.get_json()
    return document


schema = load_schema(offline_document(create_app))


@schema.parametrize()
@generated_cases()
def test_the_api_does_what_its_openapi_document_says(
    case: Any, api_app: Flask, tenant: NewApp
) -> None:
    # Requests go to the in-process app of the test database (the document above came from an
    # identical app on other settings).
    case.call_and_validate(app=api_app, headers=bearer(tenant), checks=CHECKS)


def test_over_the_rate_limit_every_v1_operation_answers_the_documented_429(
    api_app: Flask, runtime: Runtime
) -> None:
    with runtime.sessions() as session, session.begin():
        limited = create_app_with_key(session, "openapi-429", rate_limit=0.001, rate_burst=1)
    answered = []
    for result in schema.get_all_operations():
        operation: Any = result.ok()  # type: ignore[union-attr]
        if not operation.path.startswith("/v1/"):
            continue
        path = dict.fromkeys((p.name for p in operation.path_parameters), "x")
        case = (
            operation.Case(path_parameters=path, body={})
            if operation.body
            else operation.Case(path_parameters=path)
        )
        for _ in range(2):  # the first may take the bucket's only token
            response = case.call_and_validate(app=api_app, headers=bearer(limited), checks=CHECKS)
        answered.append(response.status_code)
    assert set(answered) == {429}, answered


def _schemas(node: Any) -> list[dict[str, Any]]:
    """Every JSON Schema in an OpenAPI document (parameters', bodies', responses', headers')."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "schema" and isinstance(value, dict):
                found.append(value)
            else:
                found.extend(_schemas(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_schemas(item))
    return found


def test_the_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(spec).validate()  # the OpenAPI 3.1 meta-schema
    dialect = "https://json-schema.org/draft/2020-12/schema"
    schemas = [*spec["components"]["schemas"].values(), *_schemas(spec["paths"])]
    schemas += _schemas(spec["components"]["responses"])
    for each in schemas:
        jsonschema_rs.meta.validate({"$schema": dialect, **each})


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


def _response(spec: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in response:
        name = response["$ref"].rsplit("/", 1)[-1]
        response = spec["components"]["responses"][name]
    return response


def test_every_v1_operation_documents_401_and_429_as_problems(spec: dict[str, Any]) -> None:
    v1 = [(m, p, o) for m, p, o in _operations(spec) if p.startswith("/v1/")]
    assert len(v1) >= 13
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for method, path, operation in v1:
        where = f"{method.upper()} {path}"
        assert operation["security"] == [{"apiKey": []}], where
        unauthorized = _response(spec, operation["responses"]["401"])
        assert unauthorized["content"] == {PROBLEM_JSON: {"schema": problem_ref}}, where
        assert unauthorized["headers"]["WWW-Authenticate"]["required"], where
        limited = _response(spec, operation["responses"]["429"])
        assert limited["content"] == {PROBLEM_JSON: {"schema": problem_ref}}, where
        assert limited["headers"]["Retry-After"]["required"], where
        for code, response in operation["responses"].items():
            if int(code) >= 400:
                content = _response(spec, response)["content"]
                assert content == {PROBLEM_JSON: {"schema": problem_ref}}, f"{where} {code}"
        takes_body = "requestBody" in operation
        takes_query = any(p["in"] == "query" for p in operation.get("parameters", []))
        expected = {"401", "429"}
        expected |= {"400", "413", "422"} if takes_body else set()
        expected |= {"422"} if takes_query else set()
        expected |= {"404"} if "{" in path else set()
        assert expected <= set(operation["responses"]), where
        assert "default" not in operation["responses"], where


def test_bodies_not_json_or_too_big_are_the_documented_400_and_413(
    spec: dict[str, Any], client: FlaskClient, tenant: NewApp
) -> None:
    # schemathesis seldom sends either; every operation with a body answers both the same way.
    # (Over every limit: a batch may be larger than MAX_BODY_BYTES.)
    too_big = b'{"x": "' + b"a" * (20 * MAX_BODY_BYTES) + b'"}'
    for method, path, operation in _operations(spec):
        if "requestBody" not in operation:
            continue
        url = re.sub(r"\{[^}]+\}", "x", path)
        for body, status in ((b"{not json", 400), (too_big, 413)):
            response = client.open(
                url,
                method=method.upper(),
                data=body,
                headers={**bearer(tenant), "Content-Type": "application/json"},
            )
            where = f"{method.upper()} {path} -> {response.status_code}"
            assert response.status_code == status, where
            assert str(status) in operation["responses"], where
            assert response.mimetype == PROBLEM_JSON, where
            assert response.get_json()["status"] == status, where


GOOD = {"to": [{"user_id": "alice"}], "channels": ["web"], "content": {"title": "Hi"}}


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "field"),
    [
        # Strings PostgreSQL cannot store (NUL, unpaired surrogates) and non-finite numbers: each
        # was a 500 before; schemathesis rarely generates them, so they are pinned here.
        ("get", "/v1/messages?cursor=%00", None, 422, "cursor"),
        ("get", "/v1/topics/t/subscribers?cursor=a%00", None, 422, "cursor"),
        ("get", "/v1/users/a%00b", None, 404, None),
        ("get", "/v1/messages/msg%00", None, 404, None),
        ("delete", "/v1/topics/t/subscribers/a%00", None, 404, None),
        ("put", "/v1/topics/t", {"name": "x\u0000"}, 422, "name"),
        ("post", "/v1/topics/t/subscribers", {"user_ids": ["a\u0000"]}, 422, "user_ids.0"),
        ("post", "/v1/messages", {**GOOD, "to": [{"user_id": "a\u0000"}]}, 422, "to.0.user_id"),
        (
            "post",
            "/v1/messages",
            {**GOOD, "content": {"title": "Hi", "data": {"k": "\u0000"}}},
            422,
            "content.data.k",
        ),
        (
            "post",
            "/v1/messages",
            '{"to": [{"user_id": "a"}], "channels": ["web"], "content": {"title": "\\ud800"}}',
            422,
            "content.title",
        ),
        (
            "post",
            "/v1/messages",
            '{"to": [{"user_id": "a"}], "channels": ["web"], '
            '"content": {"title": "Hi", "data": {"k": 1e400}}}',
            422,
            "content.data.k",
        ),
        ("put", "/v1/users/bob", {"devices": [{"platform": "fcm", "token": "\u0000"}]}, 422, None),
        # A locale longer than its column was a 500; "fr\n" passed the `^...$` pattern.
        ("put", "/v1/users/bob", {"locale": "en" + "-abcdefgh" * 10}, 422, "locale"),
        ("put", "/v1/users/bob", {"locale": "fr\n"}, 422, "locale"),
        ("put", "/v1/users/bob", {"quiet_hours": {"start": "22:00\n", "end": "07:00"}}, 422, None),
        ("put", "/v1/topics/news%0A", None, 422, None),
    ],
)
def test_input_the_store_cannot_keep_is_a_documented_4xx(
    spec: dict[str, Any],
    client: FlaskClient,
    tenant: NewApp,
    method: str,
    url: str,
    body: Any,
    status: int,
    field: str | None,
) -> None:
    sent = {"data": body} if isinstance(body, str) else {"json": body}
    response = client.open(url, method=method.upper(), headers=bearer(tenant), **sent)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM_JSON
    if field is not None:
        assert field in response.get_json()["errors"], response.get_json()
    path = next(
        p
        for p in spec["paths"]
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", p), url.split("?")[0])
    )
    assert str(status) in spec["paths"][path][method]["responses"]


def test_the_problem_schema_is_what_the_api_sends(spec: dict[str, Any], api_app: Flask) -> None:
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    assert problem["properties"]["errors"]["additionalProperties"]["items"] == {"type": "string"}
    assert spec["components"]["securitySchemes"]["apiKey"] == {"type": "http", "scheme": "bearer"}
    response = api_app.test_client().get("/v1/users/alice")
    assert response.status_code == 401
    assert response.mimetype == PROBLEM_JSON
    assert set(problem["required"]) <= set(response.get_json())


def test_operational_endpoints_are_documented_without_an_api_key(spec: dict[str, Any]) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert spec["paths"][path]["get"]["security"] == []


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


def test_docs_is_swagger_ui_from_local_files_without_an_api_key(api_app: Flask) -> None:
    client = api_app.test_client()
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assets = _Assets()
    assets.feed(html)
    assert {url.rsplit("/", 1)[-1] for url in assets.urls} >= {
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
    }
    # Nothing from another host: every asset is a path on this server, and it answers.
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", html, re.IGNORECASE)
    for url in assets.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.content_length and asset.content_length > 1000, url
        asset.close()
    assert '"/openapi.json"' in html
    assert client.get("/static/swagger-ui/favicon-32x32.png").status_code == 200
