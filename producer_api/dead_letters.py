"""`/v1/dead-letters`: an app's deliveries that failed for good, and replaying them.

The store side (what a dead letter is, how a replay re-queues it) is shared/dead_letters.py;
this blueprint scopes it to the calling app. Like a message, a replay reaches the broker
through the outbox.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from producer_api.auth import current_app_id
from producer_api.paging import PageQuery
from shared.blueprint import Blueprint, fail
from shared.dead_letters import (
    DeadLetterFilter,
    ReplayOutcome,
    list_dead_letters,
    replay_one,
)
from shared.flask_runtime import runtime_of

blp = Blueprint("dead_letters", __name__, url_prefix="/v1/dead-letters", description="Dead letters")


class DeadLetterQuery(PageQuery):
    channel = fields.String(load_default=None, validate=validate.Length(min=1, max=32))
    replayed = fields.Boolean(
        load_default=False, metadata={"description": "Include those already replayed."}
    )


class DeadLetterSchema(Schema):
    id = fields.String()
    delivery_id = fields.String()
    message_id = fields.String()
    channel = fields.String()
    attempts = fields.Integer()
    reason = fields.String(allow_none=True)
    failed_at = fields.DateTime()
    replayed_at = fields.DateTime(allow_none=True)


class DeadLetterPageSchema(Schema):
    items = fields.List(fields.Nested(DeadLetterSchema))
    next_cursor = fields.String(allow_none=True)


class ReplayedSchema(Schema):
    id = fields.String()
    status = fields.String(metadata={"description": "`replayed`"})


@blp.route("")
class DeadLetters(MethodView):
    @blp.arguments(DeadLetterQuery(), location="query")
    @blp.response(200, DeadLetterPageSchema())
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """This app's dead letters waiting for a replay (with `replayed=true`, those replayed
        too), oldest first, a page at a time (`cursor` = the last id seen)."""
        chosen = DeadLetterFilter(app_id=current_app_id(), channel=query["channel"])
        with runtime_of().engine.connect() as connection:
            page, next_cursor = list_dead_letters(
                connection,
                chosen,
                limit=query["limit"],
                cursor=query["cursor"],
                include_replayed=query["replayed"],
            )
        return {"items": [asdict(item) for item in page], "next_cursor": next_cursor}


@blp.route("/<string:dead_id>/replay")
class Replay(MethodView):
    @blp.response(202, ReplayedSchema())
    @blp.alt_response(404, description="No such dead letter of this app")
    @blp.alt_response(409, description="The dead letter was replayed already")
    def post(self, dead_id: str) -> dict[str, Any]:
        """Send the delivery again: it goes back to `queued` with its attempts reset and is
        handed to its channel's queue through the outbox. A dead letter replays once."""
        outcome = replay_one(runtime_of().engine, dead_id, current_app_id())
        if outcome is ReplayOutcome.ALREADY_REPLAYED:
            fail(409, f"Dead letter {dead_id} was replayed already.")
        if outcome is ReplayOutcome.UNKNOWN:
            fail(404, f"No dead letter {dead_id}.")
        return {"id": dead_id, "status": "replayed"}
