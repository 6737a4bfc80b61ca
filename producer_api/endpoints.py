"""`/v1/endpoints`: an app's webhooks and chat robots, reached by `{"endpoint": name}`.

An endpoint's URL is one omnipush will call, so it goes through the outbound guard here (and
again at every call, `channels.endpoint_http`). A webhook without a secret of its own keeps the
one it has, or gets a generated one; the secret in force is shown in the answer to PUT, and
never again (as Stripe does: GET says only whether there is one). An app that lost it PUTs a
new one.
"""

from __future__ import annotations

from typing import Any, NoReturn

from flask.views import MethodView
from sqlalchemy import and_, case, delete, select

from producer_api.auth import current_app_id
from producer_api.endpoint_schemas import EndpointBodySchema, EndpointPageSchema, EndpointSchema
from producer_api.outbound_urls import outbound_policy, url_errors
from producer_api.paging import PageQuery, cut_page, paged
from shared.blueprint import Blueprint, fail
from shared.db import insert_for
from shared.endpoint_kinds import NAME, NAME_RULE, WEBHOOK
from shared.flask_runtime import runtime_of
from shared.ids import utcnow
from shared.models import Endpoint, table_of
from shared.standard_webhooks import generate_secret

blp = Blueprint("endpoints", __name__, url_prefix="/v1/endpoints", description="Endpoints")

_SHOWN = (
    Endpoint.name,
    Endpoint.kind,
    Endpoint.url,
    Endpoint.secret,
    Endpoint.created_at,
    Endpoint.updated_at,
)
EXAMPLE = {"kind": "webhook", "url": "https://shop.example/hooks/omnipush"}


def _check_name(name: str) -> None:
    if NAME.fullmatch(name) is None:
        fail(422, NAME_RULE, errors={"name": [NAME_RULE]})


def _missing(name: str) -> NoReturn:
    fail(404, f"No endpoint {name} for this app.")


def _shown(row: Any) -> dict[str, Any]:
    """A row of `_SHOWN` and its secret as GET shows it: whether there is a secret, not it."""
    shown: dict[str, Any] = row._asdict()
    shown["has_secret"] = shown.pop("secret") is not None
    return shown


@blp.route("")
class Endpoints(MethodView):
    @blp.arguments(PageQuery(), location="query")
    @blp.response(200, EndpointPageSchema())
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """This app's endpoints in name order, a page at a time (`cursor` = the last name
        seen); secrets are not shown."""
        with runtime_of().engine.connect() as connection:
            rows = connection.execute(
                paged(
                    select(*_SHOWN).where(Endpoint.app_id == current_app_id()),
                    Endpoint.name,
                    query,
                )
            ).all()
        page, next_cursor = cut_page(rows, query, lambda row: str(row.name))
        return {"items": [_shown(row) for row in page], "next_cursor": next_cursor}


@blp.route("/<string:name>")
class EndpointResource(MethodView):
    @blp.arguments(EndpointBodySchema(), example=EXAMPLE)
    @blp.response(200, EndpointSchema())
    @blp.alt_response(201, schema=EndpointSchema(), description="The endpoint was created")
    @blp.alt_response(422, description="A bad name or body, or a URL omnipush may not call")
    def put(self, body: dict[str, Any], name: str) -> tuple[dict[str, Any], int]:
        """Create or replace an endpoint; the answer shows its secret (see the description of
        `secret`)."""
        _check_name(name)
        refused = url_errors(outbound_policy(), {"url": body["url"]})
        if refused:
            fail(422, "The endpoint's url is not one omnipush may call.", errors=refused)
        app_id, now = current_app_id(), utcnow()
        table = table_of(Endpoint)
        secret = body["secret"]
        generated = secret is None and body["kind"] == WEBHOOK
        values = {
            "kind": body["kind"],
            "url": body["url"],
            "secret": generate_secret() if generated else secret,
        }
        upsert = insert_for(runtime_of().engine.dialect.name, table).values(
            app_id=app_id, name=name, created_at=now, updated_at=now, **values
        )
        replaced = {**values, "updated_at": now}
        if generated:
            # A webhook that has a secret keeps it; decided in the one statement, so two PUTs at
            # once cannot each answer a secret of their own.
            keep = and_(table.c.kind == WEBHOOK, table.c.secret.is_not(None))
            replaced["secret"] = case((keep, table.c.secret), else_=upsert.excluded.secret)
        with runtime_of().engine.begin() as connection:
            # The row is new exactly when its created_at is this request's (as for templates).
            row = connection.execute(
                upsert.on_conflict_do_update(
                    index_elements=["app_id", "name"], set_=replaced
                ).returning(*_SHOWN)
            ).one()
        shown = _shown(row)
        if row.secret is not None:
            shown["secret"] = row.secret
        return shown, 201 if row.created_at == now else 200

    @blp.response(200, EndpointSchema())
    @blp.alt_response(404, description="No such endpoint for this app")
    def get(self, name: str) -> dict[str, Any]:
        """An endpoint, without its secret."""
        with runtime_of().engine.connect() as connection:
            row = connection.execute(
                select(*_SHOWN).where(Endpoint.app_id == current_app_id(), Endpoint.name == name)
            ).first()
        if row is None:
            _missing(name)
        return _shown(row)

    @blp.response(204)
    @blp.alt_response(404, description="No such endpoint for this app")
    def delete(self, name: str) -> None:
        """Delete an endpoint; deliveries to it not yet sent fail ("no endpoint")."""
        with runtime_of().engine.begin() as connection:
            removed = connection.execute(
                delete(Endpoint).where(Endpoint.app_id == current_app_id(), Endpoint.name == name)
            )
        if not removed.rowcount:
            _missing(name)
