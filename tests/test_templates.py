"""`/v1/templates`: per-channel Jinja2 parts that must compile, render in a sandbox, per app."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from producer_api.api_keys import NewApp
from producer_api.template_schemas import PartsSchema
from producer_api.templates import load_template_parts
from shared import templating
from shared.runtime import Runtime
from shared.templating import (
    MAX_RENDERED,
    PART_FIELDS,
    TemplateRenderError,
    compile_errors,
    render_parts,
)
from tests.conftest import bearer as auth
from tests.conftest import new_tenant
from tests.test_api import assert_problem

PARTS = {
    "web": {
        "title": "Order {{ order_id }} shipped",
        "url": "https://shop.example/o/{{ order_id }}",
    },
    "email": {
        "subject": "Your order {{ order_id }}",
        "text": "Hello {{ name }},\nit is on its way.\n",
        "html": "<p>Hello {{ name }}</p>",
    },
    "sms": {"text": "Order {{ order_id }} shipped"},
}
PARAMS = {"order_id": 42, "name": "Ann"}


# --- shared/templating.py ---------------------------------------------------------------------


def test_the_parts_schema_has_exactly_the_channels_and_fields_of_part_fields() -> None:
    schema = PartsSchema()
    assert set(schema.fields) == set(PART_FIELDS)
    for channel, fields in PART_FIELDS.items():
        assert tuple(schema.fields[channel].schema.fields) == fields  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("Hi {{ name }", "line 1: unexpected '}'"),
        ("line one\nline two {{ name }", "line 2: unexpected '}'"),
        ("{% if x %}never closed", "line 1: Unexpected end of template."),
        ("{{ 1 +* 2 }}", "line 1: unexpected '*'"),
        ("{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}", "does not compile: RecursionError"),
    ],
)
def test_compile_errors_name_the_field_and_the_line(source: str, message: str) -> None:
    errors = compile_errors({"web": {"title": "fine", "body": source}})
    assert list(errors) == ["web.body"]
    assert errors["web.body"][0].startswith(message), errors


def test_templates_that_compile_have_no_errors_and_constants_are_not_folded() -> None:
    started = time.monotonic()
    # A template that asks for huge values only fails when rendered, never while compiling.
    errors = compile_errors(
        {
            **PARTS,
            "push": {"title": "{{ 'x' * 10**9 }}", "body": "{{ 'x'|center(10**9) }}{{ 9**9**9 }}"},
        }
    )
    assert errors == {}
    assert time.monotonic() - started < 1


def test_render_parts_renders_every_field_or_only_the_given_channels() -> None:
    assert render_parts(PARTS, PARAMS) == {
        "web": {"title": "Order 42 shipped", "url": "https://shop.example/o/42"},
        "email": {
            "subject": "Your order 42",
            "text": "Hello Ann,\nit is on its way.\n",
            "html": "<p>Hello Ann</p>",
        },
        "sms": {"text": "Order 42 shipped"},
    }
    assert render_parts(PARTS, PARAMS, ["sms", "push"]) == {"sms": {"text": "Order 42 shipped"}}
    assert render_parts(PARTS, PARAMS, []) == {}


def test_html_is_autoescaped_and_text_is_not() -> None:
    parts = {"email": {"subject": "{{ v }}", "text": "{{ v }}", "html": "<b>{{ v }}</b>"}}
    rendered = render_parts(parts, {"v": "<i>&</i>"})["email"]
    assert rendered == {
        "subject": "<i>&</i>",
        "text": "<i>&</i>",
        "html": "<b>&lt;i&gt;&amp;&lt;/i&gt;</b>",
    }
    assert render_parts({"web": {"title": "{{ v }}"}}, {"v": None}) == {"web": {"title": ""}}


@pytest.mark.parametrize(
    ("source", "params", "message"),
    [
        ("Hi {{ name }}", {}, "'name' is undefined"),
        ("{{ user.name }}", {"user": {}}, "has no attribute 'name'"),
        ("{{ ''.__class__.__mro__ }}", {}, "access to attribute '__class__' of 'str' object"),
        ("{{ cycler.__init__.__globals__ }}", {}, "is unsafe"),
        ("{{ items.append(1) }}", {"items": []}, "access to attribute 'append'"),
        ("{{ 1 / 0 }}", {}, "ZeroDivisionError: division by zero"),
        ("{{ 'x' * 10**9 }}", {}, "'*' may build at most"),
        ("{{ [0] * 10**9 }}", {}, "'*' may build at most"),
        ("{{ 2**10000 }}", {}, "'**' may build at most"),
        ("{% set n = 2**2000 %}{{ n * n * n }}", {}, "'*' may build at most 4096-bit"),
        ("{{ 'x'|center(10**9) }}", {}, "more than a template may ask for"),
        ("{{ [1]|map('center', 10**9)|list }}", {}, "more than a template may ask for"),
        ("{{ 'x'.ljust(10**9) }}", {}, "more than a template may ask for"),
        ("{{ '%999999999s' % 1 }}", {}, "format widths"),
        ("{{ '%999999999s'|format(1) }}", {}, "format widths"),
        ("{{ '{:>999999999}'.format(1) }}", {}, "format widths"),
        ("{{ range(10**9)|list }}", {}, "MAX_RANGE"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", {}, "RecursionError"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}"
            "{% endfor %}",
            {},
            f"renders to more than {MAX_RENDERED} characters",
        ),
    ],
)
def test_render_errors_name_the_field_and_never_escape(
    source: str, params: dict[str, Any], message: str
) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateRenderError) as raised:
        render_parts({"push": {"title": "ok", "body": source}}, params)
    assert raised.value.field == "push.body"
    assert message in raised.value.message
    assert str(raised.value) == raised.value.message
    assert time.monotonic() - started < 2


def test_ordinary_sizes_and_formats_still_work() -> None:
    source = "{{ '%-5s|%3d'|format(a, 7) }}{{ '{:>4}'.format(b) }}{{ '-' * 3 }}{{ 2**10 }}"
    assert render_parts({"sms": {"text": source}}, {"a": "ab", "b": 1}) == {
        "sms": {"text": "ab   |  7   1---1024"}
    }


def test_compiled_templates_are_cached_by_source() -> None:
    parts = {"sms": {"text": "cached {{ n }} " + str(time.monotonic_ns())}}
    render_parts(parts, {"n": 1})
    hits = templating._compiled.cache_info().hits
    render_parts(parts, {"n": 2})
    assert templating._compiled.cache_info().hits == hits + 1


# --- the API --------------------------------------------------------------------------------


def test_a_template_is_created_replaced_read_and_deleted(
    client: FlaskClient, tenant: NewApp
) -> None:
    created = client.put(
        "/v1/templates/order.shipped",
        json={"name": "Shipped", "parts": PARTS},
        headers=auth(tenant),
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    body = created.get_json()
    assert (body["code"], body["name"], body["parts"]) == ("order.shipped", "Shipped", PARTS)
    assert client.get("/v1/templates/order.shipped", headers=auth(tenant)).get_json() == body

    replaced = client.put(
        "/v1/templates/order.shipped",
        json={"parts": {"push": {"title": "Shipped {{ order_id }}"}}},
        headers=auth(tenant),
    )
    assert replaced.status_code == 200
    shown = replaced.get_json()
    assert (shown["name"], shown["parts"]) == (None, {"push": {"title": "Shipped {{ order_id }}"}})
    assert shown["created_at"] == body["created_at"]
    assert shown["updated_at"] > body["updated_at"]

    assert client.delete("/v1/templates/order.shipped", headers=auth(tenant)).status_code == 204
    assert_problem(client.get("/v1/templates/order.shipped", headers=auth(tenant)), 404)
    assert_problem(client.delete("/v1/templates/order.shipped", headers=auth(tenant)), 404)


def test_a_part_that_does_not_compile_is_a_422_with_its_line(
    client: FlaskClient, tenant: NewApp
) -> None:
    parts = {
        "web": {"title": "fine"},
        "email": {"subject": "ok", "html": "<p>\n  {{ name }\n</p>"},
        "sms": {"text": "{% for x in xs %}"},
    }
    response = client.put("/v1/templates/broken", json={"parts": parts}, headers=auth(tenant))
    problem = assert_problem(response, 422)
    assert problem["errors"] == {
        "parts.email.html": ["line 2: unexpected '}'"],
        "parts.sms.text": [
            "line 1: Unexpected end of template. Jinja was looking for the following tags: "
            "'endfor' or 'else'. The innermost block that needs to be closed is 'for'."
        ],
    }
    assert_problem(client.get("/v1/templates/broken", headers=auth(tenant)), 404)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "parts"),
        ({"parts": {}}, "parts"),
        ({"parts": None}, "parts"),
        ({"parts": {"fax": {"text": "x"}}}, "parts.fax"),
        ({"parts": {"web": {"title": "x", "subtitle": "y"}}}, "parts.web.subtitle"),
        ({"parts": {"web": {"title": "x"}}, "colour": "red"}, "colour"),
        ({"parts": {"web": {"body": "x"}}}, "parts.web.title"),
        ({"parts": {"web": {"title": ""}}}, "parts.web.title"),
        ({"parts": {"web": {"title": 3}}}, "parts.web.title"),
        ({"parts": {"web": {"title": "x" * 1001}}}, "parts.web.title"),
        ({"parts": {"web": "Hi"}}, "parts.web._schema"),
        ({"parts": {"email": {"text": "x"}}}, "parts.email.subject"),
        ({"parts": {"email": {"subject": "x"}}}, "parts.email.text"),
        ({"parts": {"email": {"subject": "x", "text": ""}}}, "parts.email.text"),
        ({"parts": {"sms": {}}}, "parts.sms.text"),
        ({"parts": {"push": {"body": "x"}}}, "parts.push.title"),
        ({"name": "x" * 201, "parts": {"sms": {"text": "x"}}}, "name"),
    ],
)
def test_bad_template_bodies_name_the_field(
    client: FlaskClient, tenant: NewApp, body: dict[str, Any], field: str
) -> None:
    problem = assert_problem(client.put("/v1/templates/t", json=body, headers=auth(tenant)), 422)
    assert field in problem["errors"], problem


@pytest.mark.parametrize("code", ["Bad", "-dash", "with space", "x" * 101, "é"])
def test_a_bad_template_code_is_a_422(client: FlaskClient, tenant: NewApp, code: str) -> None:
    body = {"parts": {"sms": {"text": "x"}}}
    problem = assert_problem(
        client.put(f"/v1/templates/{code}", json=body, headers=auth(tenant)), 422
    )
    assert set(problem["errors"]) == {"code"}


def test_a_preview_renders_without_sending(client: FlaskClient, tenant: NewApp) -> None:
    headers = auth(tenant)
    client.put("/v1/templates/welcome", json={"parts": PARTS}, headers=headers)
    preview = client.post("/v1/templates/welcome/preview", json={"params": PARAMS}, headers=headers)
    assert preview.status_code == 200, preview.get_data(as_text=True)
    assert preview.get_json() == {"parts": render_parts(PARTS, PARAMS)}

    only = client.post(
        "/v1/templates/welcome/preview",
        json={"params": PARAMS, "channels": ["sms"]},
        headers=headers,
    )
    assert only.get_json() == {"parts": {"sms": {"text": "Order 42 shipped"}}}

    escaped = client.post(
        "/v1/templates/welcome/preview",
        json={"params": {"order_id": "<1>", "name": "<script>"}, "channels": ["email"]},
        headers=headers,
    ).get_json()["parts"]["email"]
    assert escaped["html"] == "<p>Hello &lt;script&gt;</p>"
    assert escaped["text"] == "Hello <script>,\nit is on its way.\n"
    assert escaped["subject"] == "Your order <1>"


@pytest.mark.parametrize(
    ("parts", "body", "errors"),
    [
        (
            {"web": {"title": "Hi {{ name }}"}},
            {"params": {}},
            {"params": ["web.title: 'name' is undefined"]},
        ),
        (
            {"web": {"title": "Hi"}},
            None,
            None,
        ),
        (
            {"sms": {"text": "{{ ''.__class__.__mro__ }}"}},
            {},
            {"params": ["sms.text: access to attribute '__class__' of 'str' object is unsafe."]},
        ),
        (
            {"sms": {"text": "{{ x.__class__.__base__.__subclasses__() }}"}},
            {"params": {"x": 1}},
            {"params": ["sms.text: access to attribute '__class__' of 'int' object is unsafe."]},
        ),
        (
            {"sms": {"text": "{{ 'x' * 10**9 }}"}},
            {},
            {"params": ["sms.text: '*' may build at most 1000000 items."]},
        ),
        (
            {"sms": {"text": "Hi"}},
            {"channels": ["web"]},
            {"channels": ["Template p has no part for: web."]},
        ),
        ({"sms": {"text": "Hi"}}, {"channels": ["fax"]}, {"channels.0": None}),
        ({"sms": {"text": "Hi"}}, {"channels": []}, {"channels": None}),
        ({"sms": {"text": "Hi"}}, {"params": []}, {"params": None}),
        ({"sms": {"text": "Hi"}}, {"parameters": {}}, {"parameters": None}),
    ],
)
def test_preview_problems_name_the_field(
    client: FlaskClient,
    tenant: NewApp,
    parts: dict[str, Any],
    body: dict[str, Any] | None,
    errors: dict[str, list[str] | None] | None,
) -> None:
    headers = auth(tenant)
    assert client.put("/v1/templates/p", json={"parts": parts}, headers=headers).status_code == 201
    response = client.post("/v1/templates/p/preview", json=body, headers=headers)
    if errors is None:
        assert response.status_code == 200, response.get_data(as_text=True)
        return
    problem = assert_problem(response, 422)
    assert set(problem["errors"]) == set(errors)
    for field, messages in errors.items():
        if messages is not None:
            assert problem["errors"][field] == messages


def test_another_apps_templates_are_invisible(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    client.put("/v1/templates/private", json={"parts": PARTS}, headers=auth(tenant))
    stranger = auth(new_tenant(runtime))
    assert_problem(client.get("/v1/templates/private", headers=stranger), 404)
    assert_problem(
        client.post("/v1/templates/private/preview", json={"params": PARAMS}, headers=stranger),
        404,
    )
    assert_problem(client.delete("/v1/templates/private", headers=stranger), 404)
    # The stranger's own template of that code is a new one; the owner's is untouched.
    own = client.put(
        "/v1/templates/private", json={"parts": {"sms": {"text": "mine"}}}, headers=stranger
    )
    assert own.status_code == 201
    kept = client.get("/v1/templates/private", headers=auth(tenant)).get_json()
    assert kept["parts"] == PARTS


def test_the_endpoints_are_documented(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    item = paths["/v1/templates/{code}"]
    assert {"200", "201", "422"} <= set(item["put"]["responses"])
    assert {"200", "404"} <= set(item["get"]["responses"])
    assert {"204", "404"} <= set(item["delete"]["responses"])
    assert {"200", "404", "422"} <= set(paths["/v1/templates/{code}/preview"]["post"]["responses"])


def test_load_template_parts_is_scoped_to_the_app(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    client.put("/v1/templates/loaded", json={"parts": PARTS}, headers=auth(tenant))
    stranger = new_tenant(runtime)
    with runtime.engine.connect() as connection:
        assert load_template_parts(connection, tenant.app_id, "loaded") == PARTS
        assert load_template_parts(connection, stranger.app_id, "loaded") is None
        assert load_template_parts(connection, tenant.app_id, "missing") is None
