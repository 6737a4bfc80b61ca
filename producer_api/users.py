"""`/v1/users`: the recipients of one app, with their addresses, devices and wishes."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from producer_api.auth import current_app_id
from producer_api.outbound_urls import endpoint_errors, outbound_policy
from producer_api.paging import PageQuery, cut_page, paged
from producer_api.user_schemas import UserBodySchema, UserSchema
from shared.blueprint import Blueprint, fail
from shared.flask_runtime import runtime_of
from shared.ids import utcnow
from shared.masking import mask_address
from shared.models import Delivery, Device, User

blp = Blueprint("users", __name__, url_prefix="/v1/users", description="Recipients")

MAX_USER_ID = 200


class UserPageSchema(Schema):
    items = fields.List(fields.Nested(UserSchema))
    next_cursor = fields.String(allow_none=True)


def _check_user_id(user_id: str) -> None:
    if not 1 <= len(user_id) <= MAX_USER_ID:
        fail(422, f"user_id must be 1 to {MAX_USER_ID} characters.")


def _shown(user: User, devices: list[Device]) -> dict[str, Any]:
    return {
        "user_id": user.user_id,
        "email": user.email,
        "phone": user.phone,
        "timezone": user.timezone,
        "locale": user.locale,
        "devices": [
            {
                "platform": d.platform,
                **({"token": d.token} if d.token is not None else {}),
                **({"subscription": d.subscription} if d.subscription is not None else {}),
            }
            for d in devices
        ],
        "preferences": user.preferences,
        "quiet_hours": user.quiet_hours,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
    }


def _devices(session: Session, app_id: str, user_id: str) -> list[Device]:
    return list(
        session.scalars(
            select(Device)
            .where(Device.app_id == app_id, Device.user_id == user_id)
            .order_by(Device.id)
        )
    )


@blp.route("")
class Users(MethodView):
    @blp.arguments(PageQuery(), location="query")
    @blp.response(200, UserPageSchema())
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """This app's recipients, with their devices, in user id order, a page at a time
        (`cursor` = the last id seen)."""
        app_id = current_app_id()
        with runtime_of().sessions() as session:
            users = session.scalars(
                paged(select(User).where(User.app_id == app_id), User.user_id, query)
            ).all()
            page, next_cursor = cut_page(users, query, lambda user: user.user_id)
            devices: dict[str, list[Device]] = {user.user_id: [] for user in page}
            if page:
                for device in session.scalars(
                    select(Device)
                    .where(Device.app_id == app_id, Device.user_id.in_(list(devices)))
                    .order_by(Device.id)
                ):
                    devices[device.user_id].append(device)
            return {
                "items": [_shown(user, devices[user.user_id]) for user in page],
                "next_cursor": next_cursor,
            }


@blp.route("/<string:user_id>")
class UserResource(MethodView):
    @blp.arguments(UserBodySchema())
    @blp.response(200, UserSchema())
    @blp.alt_response(201, schema=UserSchema(), description="The user was created")
    def put(self, body: dict[str, Any], user_id: str) -> tuple[dict[str, Any], int]:
        """Create or replace a recipient; its devices are replaced too."""
        _check_user_id(user_id)
        refused = endpoint_errors(outbound_policy(), body["devices"])
        if refused:
            fail(422, "A Web Push endpoint is not one omnipush may call.", errors=refused)
        app_id = current_app_id()
        now = utcnow()
        with runtime_of().sessions() as session, session.begin():
            user = session.get(User, (app_id, user_id), with_for_update=True)
            created = user is None
            if user is None:
                user = User(app_id=app_id, user_id=user_id, created_at=now)
                session.add(user)
            for name in ("email", "phone", "timezone", "locale", "preferences", "quiet_hours"):
                setattr(user, name, body[name])
            user.updated_at = now
            session.flush()
            session.execute(
                delete(Device).where(Device.app_id == app_id, Device.user_id == user_id)
            )
            session.add_all(
                Device(
                    app_id=app_id,
                    user_id=user_id,
                    platform=device["platform"],
                    token=device["token"],
                    subscription=device["subscription"],
                    created_at=now,
                )
                for device in body["devices"]
            )
            session.flush()
            shown = _shown(user, _devices(session, app_id, user_id))
        return shown, 201 if created else 200

    @blp.response(200, UserSchema())
    @blp.alt_response(404, description="No such user for this app")
    def get(self, user_id: str) -> dict[str, Any]:
        """A recipient with its devices."""
        app_id = current_app_id()
        with runtime_of().sessions() as session:
            user = session.get(User, (app_id, user_id))
            if user is None:
                fail(404, f"No user {user_id} for this app.")
            return _shown(user, _devices(session, app_id, user_id))

    @blp.response(204)
    @blp.alt_response(404, description="No such user for this app")
    def delete(self, user_id: str) -> None:
        """Forget a recipient: its addresses and devices go; past deliveries stay, with the
        address they went to masked."""
        app_id = current_app_id()
        with runtime_of().sessions() as session, session.begin():
            session.execute(
                delete(Device).where(Device.app_id == app_id, Device.user_id == user_id)
            )
            addressed = session.execute(
                select(Delivery.id, Delivery.address).where(
                    Delivery.app_id == app_id,
                    Delivery.user_id == user_id,
                    Delivery.address.is_not(None),
                )
            ).all()
            if addressed:
                session.execute(
                    update(Delivery),
                    [{"id": d.id, "address": mask_address(d.address)} for d in addressed],
                )
            deleted = session.execute(
                delete(User).where(User.app_id == app_id, User.user_id == user_id)
            )
            if not getattr(deleted, "rowcount", 0):
                fail(404, f"No user {user_id} for this app.")
