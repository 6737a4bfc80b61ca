"""`/v1/topics`: named audiences of an app and who is subscribed to them."""

from __future__ import annotations

import re
from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields, validate
from sqlalchemy import Connection, delete, func, select

from producer_api.auth import current_app_id, current_key_owner
from producer_api.fanout import fanout_guard
from producer_api.fields import StrictSchema
from producer_api.paging import PageQuery, cut_page, paged
from shared.blueprint import Blueprint, fail
from shared.db import insert_for
from shared.flask_runtime import runtime_of
from shared.ids import utcnow
from shared.models import Subscription, Topic, table_of

blp = Blueprint("topics", __name__, url_prefix="/v1/topics", description="Topics")

TOPIC_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
MAX_SUBSCRIBE = 1000
_SUBSCRIPTIONS = table_of(Subscription)


class TopicBodySchema(StrictSchema):
    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))


class TopicSchema(Schema):
    key = fields.String()
    name = fields.String(allow_none=True)
    subscribers = fields.Integer()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class SubscribeSchema(StrictSchema):
    user_ids = fields.List(
        fields.String(validate=validate.Length(min=1, max=200)),
        required=True,
        validate=validate.Length(min=1, max=MAX_SUBSCRIBE),
    )


class SubscribedSchema(Schema):
    subscribed = fields.Integer()


class TopicPageSchema(Schema):
    items = fields.List(fields.Nested(TopicSchema))
    next_cursor = fields.String(allow_none=True)


class SubscriberPageSchema(Schema):
    items = fields.List(fields.Dict())
    next_cursor = fields.String(allow_none=True)


def _check_key(key: str) -> None:
    if not TOPIC_KEY.fullmatch(key):
        fail(422, "A topic key is 1 to 100 of a-z, 0-9, '.', '_' and '-', starting alphanumeric.")


def _topic(connection: Connection, app_id: str, key: str, lock: bool = False) -> Any:
    query = select(Topic.key, Topic.name, Topic.created_at, Topic.updated_at).where(
        Topic.app_id == app_id, Topic.key == key
    )
    topic = connection.execute(query.with_for_update() if lock else query).first()
    if topic is None:
        fail(404, f"No topic {key} for this app.")
    return topic


def _subscribers(connection: Connection, app_id: str, key: str) -> int:
    count = connection.scalar(
        select(func.count()).where(Subscription.app_id == app_id, Subscription.topic_key == key)
    )
    return int(count or 0)


def _shown(connection: Connection, app_id: str, key: str) -> dict[str, Any]:
    topic = _topic(connection, app_id, key)
    return {**topic._asdict(), "subscribers": _subscribers(connection, app_id, key)}


_SUBSCRIBER_COUNT = (
    select(func.count())
    .where(Subscription.app_id == Topic.app_id, Subscription.topic_key == Topic.key)
    .scalar_subquery()
    .label("subscribers")
)


@blp.route("")
class Topics(MethodView):
    @blp.arguments(PageQuery(), location="query")
    @blp.response(200, TopicPageSchema())
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """This app's topics in key order, a page at a time (`cursor` = the last key seen)."""
        with runtime_of().engine.connect() as connection:
            rows = connection.execute(
                paged(
                    select(
                        Topic.key,
                        Topic.name,
                        _SUBSCRIBER_COUNT,
                        Topic.created_at,
                        Topic.updated_at,
                    ).where(Topic.app_id == current_app_id()),
                    Topic.key,
                    query,
                )
            ).all()
        page, next_cursor = cut_page(rows, query, lambda row: str(row.key))
        return {"items": [row._asdict() for row in page], "next_cursor": next_cursor}


@blp.route("/<string:key>")
class TopicResource(MethodView):
    @blp.arguments(TopicBodySchema(), required=False)
    @blp.response(200, TopicSchema())
    @blp.alt_response(201, schema=TopicSchema(), description="The topic was created")
    def put(self, body: dict[str, Any], key: str) -> tuple[dict[str, Any], int]:
        """Create a topic, or rename it."""
        _check_key(key)
        app_id, now = current_app_id(), utcnow()
        with runtime_of().engine.begin() as connection:
            # One upsert; the row it leaves was created by this request exactly when its
            # created_at is this request's timestamp (an update keeps the original one).
            created_at = connection.execute(
                insert_for(connection.dialect.name, table_of(Topic))
                .values(
                    app_id=app_id, key=key, name=body.get("name"), created_at=now, updated_at=now
                )
                .on_conflict_do_update(
                    index_elements=["app_id", "key"],
                    set_={"name": body.get("name"), "updated_at": now},
                )
                .returning(Topic.created_at)
            ).scalar_one()
            shown = _shown(connection, app_id, key)
        return shown, 201 if created_at == now else 200

    @blp.response(200, TopicSchema())
    @blp.alt_response(404, description="No such topic for this app")
    def get(self, key: str) -> dict[str, Any]:
        """A topic and how many users are subscribed to it."""
        with runtime_of().engine.connect() as connection:
            return _shown(connection, current_app_id(), key)

    @blp.response(204)
    @blp.alt_response(404, description="No such topic for this app")
    def delete(self, key: str) -> None:
        """Delete a topic and all its subscriptions; messages already accepted for it reach no
        one through it."""
        app_id = current_app_id()
        with runtime_of().engine.begin() as connection:
            connection.execute(
                delete(Subscription).where(
                    Subscription.app_id == app_id, Subscription.topic_key == key
                )
            )
            removed = connection.execute(
                delete(Topic).where(Topic.app_id == app_id, Topic.key == key)
            )
            if not removed.rowcount:
                fail(404, f"No topic {key} for this app.")


@blp.route("/<string:key>/subscribers")
class Subscribers(MethodView):
    @blp.arguments(SubscribeSchema())
    @blp.response(200, SubscribedSchema())
    @blp.alt_response(404, description="No such topic for this app")
    def post(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        """Subscribe up to 1000 users at once; users already subscribed stay as they are.

        A topic holds at most the app's limit of subscribers (422 beyond it, nobody added).
        """
        app_id, now = current_app_id(), utcnow()
        user_ids = list(dict.fromkeys(body["user_ids"]))
        with runtime_of().engine.begin() as connection:
            # Locked, so that concurrent subscribes cannot pass the limit together.
            _topic(connection, app_id, key, lock=True)
            added = connection.execute(
                insert_for(connection.dialect.name, _SUBSCRIPTIONS)
                .on_conflict_do_nothing()
                .returning(_SUBSCRIPTIONS.c.user_id),
                [
                    {"app_id": app_id, "topic_key": key, "user_id": user, "created_at": now}
                    for user in user_ids
                ],
            ).all()
            if added:
                fanout_guard().admit_subscribers(
                    current_key_owner(), key, _subscribers(connection, app_id, key)
                )
        return {"subscribed": len(added)}

    @blp.arguments(PageQuery(), location="query")
    @blp.response(200, SubscriberPageSchema())
    @blp.alt_response(404, description="No such topic for this app")
    def get(self, query: dict[str, Any], key: str) -> dict[str, Any]:
        """Subscribers in user id order, a page at a time (`cursor` = the last id seen)."""
        app_id = current_app_id()
        with runtime_of().engine.connect() as connection:
            _topic(connection, app_id, key)
            rows = connection.execute(
                paged(
                    select(Subscription.user_id, Subscription.created_at).where(
                        Subscription.app_id == app_id, Subscription.topic_key == key
                    ),
                    Subscription.user_id,
                    query,
                )
            ).all()
        page, next_cursor = cut_page(rows, query, lambda row: str(row.user_id))
        return {
            "items": [{"user_id": u, "subscribed_at": at.isoformat()} for u, at in page],
            "next_cursor": next_cursor,
        }


@blp.route("/<string:key>/subscribers/<string:user_id>")
class Subscriber(MethodView):
    @blp.response(204)
    @blp.alt_response(404, description="That user is not subscribed to that topic")
    def delete(self, key: str, user_id: str) -> None:
        """Unsubscribe one user."""
        app_id = current_app_id()
        with runtime_of().engine.begin() as connection:
            removed = connection.execute(
                delete(Subscription).where(
                    Subscription.app_id == app_id,
                    Subscription.topic_key == key,
                    Subscription.user_id == user_id,
                )
            )
            if not removed.rowcount:
                fail(404, f"{user_id} is not subscribed to {key}.")
