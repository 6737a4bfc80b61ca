"""`/v1/templates`: per-channel Jinja2 parts that must compile, render in a sandbox within a
budget, per app."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from producer_api.api_keys import NewApp
from producer_api.template_schemas import PartsSchema
from producer_api.templates import load_template_parts
from shared import templating
from shared.models import Message
from shared.render_budget import MESSAGE_LIMITS, REQUEST_LIMITS, RenderBudget
from shared.runtime import Runtime
from shared.template_sandbox import MAX_VALUE
from shared.templating import (
    MAX_FIELD,
    PART_FIELDS,
    TemplateLimitError,
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
    # A template that asks for huge values only fails when rendered, never while compiling,
    # where the sandbox's caps would not apply: they refuse each of them when rendered.
    huge = {"title": "{{ 'x' * 10**9 }}", "body": "{{ 'x'|center(10**9) }}", "url": "{{ 9**9999 }}"}
    assert compile_errors({**PARTS, "web": huge}) == {}
    for field, source in huge.items():
        with pytest.raises(TemplateRenderError, match=r"at most|more than"):
            render_parts({"web": {field: source}}, {})


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
        # What would multiply a value past MAX_VALUE is refused before it runs.
        ("{% set a = 'x' * 600000 %}{{ (a ~ a)|length }}", {}, "'~' may build at most"),
        ("{% set a = 'x' * 600000 %}{{ (a + a)|length }}", {}, "'+' may build at most"),
        ("{% set a = ['x'] * 300000 %}{{ (a + a)|length }}", {}, "'+' may build at most"),
        ("{{ [a] * 1000 }}", {"a": "x" * 10000}, "'*' may build at most"),
        ("{{ ('%s' * 3) % (a, a, a) }}", {"a": "x" * 400000}, "could make more than"),
        ("{{ ('{0}' * 100).format(a) }}", {"a": "x" * 20000}, "could make more than"),
        ("{{ '{x}{x}'.format_map({'x': a}) }}", {"a": "x" * 600000}, "could make more than"),
        ("{{ ('%s' * 3)|format(a, a, a) }}", {"a": "x" * 400000}, "could make more than"),
        ("{{ ('x' * 1000)|replace('x', a) }}", {"a": "y" * 1000}, "could make more than"),
        ("{{ ('x' * 1000).replace('x', a) }}", {"a": "y" * 1000}, "could make more than"),
        ("{{ [a, a, a, a, a, a]|join }}", {"a": "x" * 200000}, "could make more than"),
        ("{{ a.join([a, a, a]) }}", {"a": "x" * 300000}, "could make more than"),
        ("{{ ('\n' * 1000)|indent(5000, blank=True) }}", {}, "could make more than"),
        ("{{ ('\t' * 1000).expandtabs(5000) }}", {}, "could make more than"),
        ("{{ ('x' * 1000).translate({120: a}) }}", {"a": "y" * 1000}, "could make more than"),
        ("{{ a|wordwrap(1, wrapstring=a) }}", {"a": "x " * 1000}, "could make more than"),
        ("{{ [a, a, a, a, a, a] }}", {"a": "x" * 200000}, "values of at most"),
        ("{{ [1]|batch(10000, a)|list }}", {"a": "x" * 1000}, "values of at most"),
        ("{{ ([[1] * 100] * 100)|sum(start=[]) }}", {}, "sum adds numbers"),
        ("{{ lipsum(10000) }}", {}, "'lipsum' is undefined"),
    ],
)
def test_render_errors_name_the_field_and_never_escape(
    source: str, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(TemplateRenderError) as raised:
        render_parts({"push": {"title": "ok", "body": source}}, params)
    assert raised.value.field == "push.body"
    assert message in raised.value.message
    assert str(raised.value) == raised.value.message


def test_ordinary_sizes_and_formats_still_work() -> None:
    source = "{{ '%-5s|%3d'|format(a, 7) }}{{ '{:>4}'.format(b) }}{{ '-' * 3 }}{{ 2**10 }}"
    assert render_parts({"sms": {"text": source}}, {"a": "ab", "b": 1}) == {
        "sms": {"text": "ab   |  7   1---1024"}
    }
    loops = (
        "{% for x in xs %}{{ loop.index }}.{{ x ~ '!' }}{% if not loop.last %} {% endif %}"
        "{% endfor %}|{% for n in tree recursive %}({{ n.v }}{{ loop(n.kids) }}){% endfor %}"
        "|{{ xs|join(', ') }}|{{ (xs + ['d'])|length }}|{{ '%s-%s' % (1, 2) }}|{{ [1, 2]|sum }}"
        "|{{ body|replace('\n', ' / ')|wordwrap(9)|indent(2) }}"
    )
    tree = [{"v": 1, "kids": [{"v": 2, "kids": []}]}, {"v": 3, "kids": []}]
    params = {"xs": ["a", "b", "c"], "tree": tree, "body": "one two\nthree"}
    assert render_parts({"sms": {"text": loops}}, params)["sms"]["text"] == (
        "1.a! 2.b! 3.c!|(1(2))(3)|a, b, c|4|1-2|3|one two /\n  three"
    )


def untimed() -> RenderBudget:
    """A request's budget of the default limits without the clock: only what is counted trips."""
    return RenderBudget(
        request=replace(REQUEST_LIMITS, seconds=3600), message=replace(MESSAGE_LIMITS, seconds=3600)
    )


NESTED_LOOPS = "{% for a in range(1000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}"


@pytest.mark.parametrize(
    ("source", "params", "message"),
    [
        (NESTED_LOOPS, {}, f"takes more than {MESSAGE_LIMITS.steps} steps"),
        (
            "{% for a in xs %}{% for b in xs %}{% for c in xs %}{% endfor %}{% endfor %}"
            "{% endfor %}",
            {"xs": list(range(1000))},
            "steps (loop iterations, calls and filters) in one message",
        ),
        ("{% for a in range(100000) if false %}{% endfor %}", {}, "steps"),
        (
            "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
            "{{ f(40) }}",
            {},
            "steps",
        ),
        (
            "{% for x in range(1000) recursive %}{% if loop.depth < 3 %}{{ loop(range(1000)) }}"
            "{% endif %}{% endfor %}",
            {},
            "steps",
        ),
        # Characters made along the way, also where they are not output (a block, a variable).
        (
            "{% set ns = namespace(s='x' * 1000) %}{% for i in range(30) %}"
            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            {},
            f"makes more than {MESSAGE_LIMITS.made} characters along the way in one message",
        ),
        ("{% for i in range(1000) %}{% set s = 'x' * 100000 %}{% endfor %}", {}, "makes more"),
        (
            "{% set s %}{% for i in range(10000) %}" + "L" * 1000 + "{% endfor %}{% endset %}",
            {},
            "makes more",
        ),
        (
            "{% set s %}{% for i in range(10000) %}{{ 'x'|center(1000) }}{% endfor %}{% endset %}",
            {},
            "makes more",
        ),
        ("{{ range(10000)|map('center', 10000)|join }}", {}, "makes more"),
        # What is output: a field's characters, a message's bytes.
        ("{{ 'x' * 1000000 }}", {}, f"renders to more than {MAX_FIELD} characters"),
        ("{% for i in range(20000) %}{{ 'x' * 100 }}{% endfor %}", {}, "more than 100000 char"),
        ("{{ '\U0001f600' * 70000 }}", {}, "renders to more than 262144 bytes in one message"),
    ],
)
def test_rendering_has_a_budget_and_says_which_limit_ran_out(
    source: str, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(TemplateLimitError) as raised:
        render_parts({"push": {"title": "ok", "body": source}}, params, budget=untimed())
    assert raised.value.field == "push.body"
    assert message in raised.value.message


def test_the_clock_is_a_limit_too() -> None:
    budget = RenderBudget(message=replace(MESSAGE_LIMITS, seconds=0))
    with pytest.raises(TemplateLimitError, match="takes more than 0 s to render in one message"):
        render_parts({"sms": {"text": "{% for i in range(10) %}{% endfor %}"}}, {}, budget=budget)


def test_a_requests_messages_share_its_budget() -> None:
    message = replace(MESSAGE_LIMITS, seconds=3600)
    loop = {"sms": {"text": "{% for i in range(40000) %}{% endfor %}"}}
    budget = RenderBudget(request=replace(message, steps=100_000), message=message)
    render_parts(loop, {}, budget=budget)
    render_parts(loop, {}, budget=budget)
    with pytest.raises(TemplateLimitError, match=r"100000 steps .* in all the request's messages"):
        render_parts(loop, {}, budget=budget)

    big = {"sms": {"text": "{{ 'x' * 90000 }}"}}
    budget = RenderBudget(request=replace(message, output=200_000), message=message)
    render_parts(big, {}, budget=budget)
    render_parts(big, {}, budget=budget)
    with pytest.raises(TemplateLimitError, match="200000 bytes in all the request's messages"):
        render_parts(big, {}, budget=budget)


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
            {"params": [f"sms.text: '*' may build at most {MAX_VALUE} items."]},
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
        # A preview is held to the budget and limits of a message.
        (
            {"sms": {"text": NESTED_LOOPS}},
            {},
            {
                "template.sms.text": [
                    f"takes more than {MESSAGE_LIMITS.steps} steps (loop iterations, calls and "
                    "filters) in one message"
                ]
            },
        ),
        (
            {"web": {"title": "x", "url": "{{ u }}"}},
            {"params": {"u": "javascript:alert(1)"}},
            {"template.web.url": ["Not a valid URL."]},
        ),
        (
            {"sms": {"text": "{{ 'x' * 1601 }}"}},
            {},
            {"template.sms.text": ["Longer than maximum length 1600."]},
        ),
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


def messages_of(runtime: Runtime, tenant: NewApp) -> int:
    with runtime.engine.connect() as connection:
        query = select(func.count()).select_from(Message).where(Message.app_id == tenant.app_id)
        return connection.execute(query).scalar_one()


def templated(code: str, **params: Any) -> dict[str, Any]:
    return {"to": [{"user_id": "u"}], "channels": ["web"], "template": code, "params": params}


@pytest.mark.parametrize(
    ("part", "params", "field", "message"),
    [
        ({"title": "Hi", "body": NESTED_LOOPS}, {}, "template.web.body", "50000 steps"),
        # What a 124-byte request once stored as 2 MB of content.
        ({"title": "Hi", "body": "{{ 'x' * 1000000 }}"}, {}, "template.web.body", "more than"),
        ({"title": "Hi", "body": "{{ 'x' * 4001 }}"}, {}, "template.web.body", "length 4000"),
        ({"title": "{{ 'x' * 201 }}"}, {}, "template.web.title", "between 1 and 200"),
        ({"title": "{{ t }}"}, {"t": None}, "template.web.title", "between 1 and 200"),
        (
            {"title": "Hi", "url": "{{ u }}"},
            {"u": "javascript:alert(1)"},
            "template.web.url",
            "URL",
        ),
        ({"title": "Hi", "url": "{{ u }}"}, {"u": "ftp://files.example/a"}, "template.web.url", ""),
    ],
)
def test_a_templated_message_over_a_limit_is_a_422_naming_the_part_and_nothing_is_stored(
    client: FlaskClient,
    tenant: NewApp,
    runtime: Runtime,
    part: dict[str, str],
    params: dict[str, Any],
    field: str,
    message: str,
) -> None:
    headers = auth(tenant)
    assert client.put("/v1/templates/t", json={"parts": {"web": part}}, headers=headers).status_code
    started = time.monotonic()
    response = client.post("/v1/messages", json=templated("t", **params), headers=headers)
    problem = assert_problem(response, 422)
    # The counted limit is what trips; the API answers at once, even on a loaded machine.
    assert time.monotonic() - started < 20
    assert list(problem["errors"]) == [field]
    assert message in problem["errors"][field][0], problem
    assert messages_of(runtime, tenant) == 0
    preview = client.post("/v1/templates/t/preview", json={"params": params}, headers=headers)
    assert assert_problem(preview, 422)["errors"] == problem["errors"]


def test_rendered_web_parts_are_held_to_the_limits_of_literal_content(
    client: FlaskClient, tenant: NewApp
) -> None:
    headers = auth(tenant)
    part = {"title": "{{ title }}", "body": "{{ body }}", "url": "{{ url }}"}
    assert client.put("/v1/templates/c", json={"parts": {"web": part}}, headers=headers).status_code
    good = {"title": "Hi", "body": "", "url": "https://shop.example/o/1"}
    for field, bad in [
        ("title", "x" * 201),
        ("body", "x" * 4001),
        ("url", "javascript:alert(1)"),
        ("url", "ftp://files.example/a"),
        ("url", "https://shop.example/" + "x" * 2000),
    ]:
        content = {**good, field: bad}
        literal = {"to": [{"user_id": "u"}], "channels": ["web"], "content": content}
        literal_errors = assert_problem(
            client.post("/v1/messages", json=literal, headers=headers), 422
        )
        rendered = client.post("/v1/messages", json=templated("c", **content), headers=headers)
        rendered_errors = assert_problem(rendered, 422)["errors"]
        assert literal_errors["errors"] == {
            f"content.{field}": rendered_errors[f"template.web.{field}"]
        }
        assert list(rendered_errors) == [f"template.web.{field}"]
    accepted = client.post("/v1/messages", json=templated("c", **good), headers=headers)
    assert accepted.status_code == 202, accepted.get_data(as_text=True)


def test_a_batch_shares_one_budget_and_the_items_past_it_are_rejected(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    headers = auth(tenant)
    per_message = REQUEST_LIMITS.steps // 5 - 5_000  # under a message's limit, 5 fit in a request
    assert per_message < MESSAGE_LIMITS.steps
    loop = f"{{% for i in range({per_message}) %}}{{% endfor %}}"
    parts = {"web": {"title": "Hi", "body": loop}}
    assert client.put("/v1/templates/busy", json={"parts": parts}, headers=headers).status_code
    batch = {"messages": [templated("busy") for _ in range(6)]}
    answer = client.post("/v1/messages/batch", json=batch, headers=headers).get_json()
    assert (answer["accepted"], answer["rejected"]) == (5, 1), answer
    error = answer["results"][5]["error"]
    assert list(error["errors"]) == ["template.web.body"]
    assert f"more than {REQUEST_LIMITS.steps} steps" in error["errors"]["template.web.body"][0]
    assert "in all the request's messages" in error["errors"]["template.web.body"][0]
    assert messages_of(runtime, tenant) == 5
