"""`/v1/policy`: an app's own settings of the dispatcher's policy stages (`shared.policy`).

The operator's `[policy]` is every app's default; an app's PUT stores overrides over it, as a
whole, in `app_policies`, which the dispatcher reads for each message it dispatches. GET shows
the merge (what the app's messages are dispatched under) and the overrides alone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask.views import MethodView
from sqlalchemy import delete, select

from producer_api.auth import current_app_id
from producer_api.policy_schemas import PolicyBodySchema, PolicySchema
from shared.blueprint import Blueprint
from shared.db import insert_for
from shared.flask_runtime import runtime_of
from shared.ids import utcnow
from shared.models import AppPolicy, table_of

blp = Blueprint("policy", __name__, url_prefix="/v1/policy", description="Policy")

EXAMPLE = {
    "dedup_window": {"marketing": 600},
    "frequency_cap": {"marketing": {"limit": 3, "window": 86400}, "notification": None},
    "discard": {"all": False, "templates": ["spring-sale"]},
}


def _shown(overrides: dict[str, Any], updated_at: datetime | None) -> dict[str, Any]:
    """The answer of GET and PUT: the operator's defaults with `overrides` over them."""
    defaults = runtime_of().settings.config.policy
    return {
        **defaults.with_document(overrides).document(),
        "overrides": overrides,
        "updated_at": updated_at,
    }


def _stored(body: dict[str, Any]) -> dict[str, Any]:
    """The overrides of a PUT's body as they are kept: a discarded template listed once."""
    if "discard" not in body:
        return body
    discard = body["discard"]
    return {**body, "discard": {**discard, "templates": sorted(set(discard["templates"]))}}


@blp.route("")
class PolicyResource(MethodView):
    @blp.response(200, PolicySchema())
    def get(self) -> dict[str, Any]:
        """The policy this app's messages are dispatched under, and what the app set itself."""
        with runtime_of().engine.connect() as connection:
            row = connection.execute(
                select(AppPolicy.overrides, AppPolicy.updated_at).where(
                    AppPolicy.app_id == current_app_id()
                )
            ).first()
        if row is None:
            return _shown({}, None)
        return _shown(row.overrides, row.updated_at)

    @blp.arguments(PolicyBodySchema(), example=EXAMPLE)
    @blp.response(200, PolicySchema())
    @blp.alt_response(422, description="A bad body, or one that sets `fail_open` (the operator's)")
    def put(self, body: dict[str, Any]) -> dict[str, Any]:
        """Replace this app's overrides as a whole: what the body leaves out is the operator's
        default again. Messages already dispatched are not affected."""
        app_id, now, overrides = current_app_id(), utcnow(), _stored(body)
        engine = runtime_of().engine
        upsert = insert_for(engine.dialect.name, table_of(AppPolicy)).values(
            app_id=app_id, overrides=overrides, updated_at=now
        )
        with engine.begin() as connection:
            connection.execute(
                upsert.on_conflict_do_update(
                    index_elements=["app_id"], set_={"overrides": overrides, "updated_at": now}
                )
            )
        return _shown(overrides, now)

    @blp.response(204)
    def delete(self) -> None:
        """Forget this app's overrides: its messages follow the operator's defaults again."""
        with runtime_of().engine.begin() as connection:
            connection.execute(delete(AppPolicy).where(AppPolicy.app_id == current_app_id()))
