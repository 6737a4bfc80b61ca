"""`/v1/templates`: an app's message templates, one Jinja2 part per channel, and their previews."""

from __future__ import annotations

from typing import Any, NoReturn

from flask.views import MethodView
from marshmallow import Schema, fields
from sqlalchemy import Connection, delete, select

from producer_api.auth import current_app_id
from producer_api.paging import PageQuery, cut_page, paged
from producer_api.rendering import Unrenderable, render_message
from producer_api.template_schemas import (
    PreviewBodySchema,
    PreviewSchema,
    TemplateBodySchema,
    TemplateSchema,
)
from shared.blueprint import Blueprint, fail
from shared.db import insert_for
from shared.flask_runtime import runtime_of
from shared.ids import utcnow
from shared.models import Template, table_of
from shared.render_budget import RenderBudget
from shared.templating import TEMPLATE_CODE

blp = Blueprint("templates", __name__, url_prefix="/v1/templates", description="Templates")

_SHOWN = (Template.code, Template.name, Template.parts, Template.created_at, Template.updated_at)


def load_template_parts(
    connection: Connection, app_id: str, code: str
) -> dict[str, dict[str, str]] | None:
    """The parts of `app_id`'s template `code`, or None if that app has no such template."""
    parts: dict[str, dict[str, str]] | None = connection.scalar(
        select(Template.parts).where(Template.app_id == app_id, Template.code == code)
    )
    return parts


CODE_RULE = "A template code is 1 to 100 of a-z, 0-9, '.', '_' and '-', starting alphanumeric."


def _check_code(code: str) -> None:
    if not TEMPLATE_CODE.match(code):
        fail(422, CODE_RULE, errors={"code": [CODE_RULE]})


def _missing(code: str) -> NoReturn:
    fail(404, f"No template {code} for this app.")


class TemplatePageSchema(Schema):
    items = fields.List(fields.Nested(TemplateSchema))
    next_cursor = fields.String(allow_none=True)


@blp.route("")
class Templates(MethodView):
    @blp.arguments(PageQuery(), location="query")
    @blp.response(200, TemplatePageSchema())
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """This app's templates, with their parts, in code order, a page at a time (`cursor` =
        the last code seen)."""
        with runtime_of().engine.connect() as connection:
            rows = connection.execute(
                paged(
                    select(*_SHOWN).where(Template.app_id == current_app_id()),
                    Template.code,
                    query,
                )
            ).all()
        page, next_cursor = cut_page(rows, query, lambda row: str(row.code))
        return {"items": [row._asdict() for row in page], "next_cursor": next_cursor}


@blp.route("/<string:code>")
class TemplateResource(MethodView):
    @blp.arguments(TemplateBodySchema())
    @blp.response(200, TemplateSchema())
    @blp.alt_response(201, schema=TemplateSchema(), description="The template was created")
    @blp.alt_response(422, description="A bad code or body, or a part that does not compile")
    def put(self, body: dict[str, Any], code: str) -> tuple[dict[str, Any], int]:
        """Create or replace a template; every part must compile (errors give the line)."""
        _check_code(code)
        app_id, now = current_app_id(), utcnow()
        values = {"name": body["name"], "parts": body["parts"]}
        with runtime_of().engine.begin() as connection:
            # As for topics: the row was created by this request exactly when its created_at is
            # this request's timestamp (a replace keeps the original one).
            row = connection.execute(
                insert_for(connection.dialect.name, table_of(Template))
                .values(app_id=app_id, code=code, created_at=now, updated_at=now, **values)
                .on_conflict_do_update(
                    index_elements=["app_id", "code"], set_={**values, "updated_at": now}
                )
                .returning(*_SHOWN)
            ).one()
        return row._asdict(), 201 if row.created_at == now else 200

    @blp.response(200, TemplateSchema())
    @blp.alt_response(404, description="No such template for this app")
    def get(self, code: str) -> dict[str, Any]:
        """A template with its parts as stored (unrendered)."""
        with runtime_of().engine.connect() as connection:
            row = connection.execute(
                select(*_SHOWN).where(Template.app_id == current_app_id(), Template.code == code)
            ).first()
        if row is None:
            _missing(code)
        return row._asdict()

    @blp.response(204)
    @blp.alt_response(404, description="No such template for this app")
    def delete(self, code: str) -> None:
        """Delete a template; messages already accepted with it keep their rendered content."""
        with runtime_of().engine.begin() as connection:
            removed = connection.execute(
                delete(Template).where(Template.app_id == current_app_id(), Template.code == code)
            )
        if not removed.rowcount:
            _missing(code)


@blp.route("/<string:code>/preview")
class TemplatePreview(MethodView):
    @blp.arguments(PreviewBodySchema(), required=False)
    @blp.response(200, PreviewSchema())
    @blp.alt_response(404, description="No such template for this app")
    @blp.alt_response(422, description="A param is missing, or a part fails or goes over a limit")
    def post(self, body: dict[str, Any], code: str) -> dict[str, Any]:
        """Render a template with `params` (all parts, or the given channels'), sending nothing."""
        with runtime_of().engine.connect() as connection:
            parts = load_template_parts(connection, current_app_id(), code)
        if parts is None:
            _missing(code)
        channels: list[str] | None = body["channels"]
        absent = [channel for channel in channels or () if channel not in parts]
        if absent:
            message = f"Template {code} has no part for: {', '.join(absent)}."
            fail(422, message, errors={"channels": [message]})
        try:
            rendered = render_message(parts, body["params"], channels, RenderBudget())
        except Unrenderable as error:
            fail(422, error.detail, errors=error.errors)
        return {"parts": rendered}
