"""The browser inbox REST API: `GET /v1/inbox`, `POST /v1/inbox/read`, `GET /v1/inbox/unread-count`.

Requests authenticate with the same browser token as the socket (`Authorization: Bearer`), and
every query is scoped to the (app, user) it names. Answers allow any origin: a token, never a
cookie, authorizes them, so a business system's own pages may call them. Bodies are read as
JSON whatever their Content-Type, as the API reads them (shared/blueprint.py), and the
views are documented in the gateway's OpenAPI document (ws_gateway/openapi.py).
"""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, g, request
from flask_socketio import SocketIO

from shared.blueprint import Blueprint
from shared.flask_runtime import runtime_of
from shared.problems import problem
from shared.store_retry import retry_once_on_disconnect
from shared.tokens import BrowserIdentity, InvalidToken
from ws_gateway import inbox
from ws_gateway.auth import bearer_token, identify
from ws_gateway.schemas import (
    InboxPageSchema,
    InboxQuerySchema,
    ReadResultSchema,
    ReadSchema,
    StrictSchema,
    UnreadCountSchema,
)
from ws_gateway.sockets import push_unread_count, read_and_count

blp = Blueprint(
    "inbox",
    __name__,
    url_prefix="/v1/inbox",
    description="One user's inbox, for the browser (authorized by a browser token)",
)

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Max-Age": "600",
}


@blp.before_request
def authenticate() -> Response | None:
    """Every inbox request acts as the one user its token names."""
    if request.method == "OPTIONS":
        return None
    try:
        g.identity = identify(
            runtime_of().settings.secret_key, bearer_token(request.headers.get("Authorization"))
        )
    except InvalidToken:
        return problem(
            401,
            "Unauthorized",
            "Send a valid browser token as 'Authorization: Bearer <token>'.",
            headers={"WWW-Authenticate": 'Bearer realm="omnipush-inbox"'},
        )
    return None


@blp.after_request
def allow_cross_origin(response: Response) -> Response:
    """Let pages of other origins call the inbox with their token."""
    response.headers.update(CORS_HEADERS)
    response.headers["Cache-Control"] = "no-store"
    return response


def _identity() -> BrowserIdentity:
    identity: BrowserIdentity = g.identity
    return identity


@blp.route("", methods=["GET"])
@blp.arguments(InboxQuerySchema, location="query", as_kwargs=True)
@blp.response(200, InboxPageSchema)
def list_inbox(unread: bool, limit: int | None, before: str | None) -> dict[str, Any]:
    """The user's inbox, newest first.

    `unread=1` lists only unread items; `before` (the `next_before` of a page) continues after
    it. Notifications whose message has expired are not listed.
    """

    def find() -> inbox.InboxPage:
        with runtime_of().sessions() as session:
            return inbox.page(
                session,
                _identity(),
                unread_only=unread,
                limit=limit or inbox.DEFAULT_PAGE,
                before=before,
            )

    found = retry_once_on_disconnect(find)
    return {"items": found.items, "next_before": found.next_before}


@blp.route("/unread-count", methods=["GET"])
@blp.arguments(StrictSchema, location="query")
@blp.response(200, UnreadCountSchema)
def unread_count(_query: dict[str, Any]) -> dict[str, int]:
    """How many of the user's notifications are unread."""

    def count() -> int:
        with runtime_of().sessions() as session:
            return inbox.unread_count(session, _identity())

    return {"count": retry_once_on_disconnect(count)}


@blp.route("/read", methods=["POST"])
@blp.arguments(ReadSchema)
@blp.response(200, ReadResultSchema)
def mark_read(body: dict[str, Any]) -> dict[str, int]:
    """Mark the named notifications read (`{"ids": [...]}`), or all of them (`{"all": true}`).

    Every socket of the user gets the new `unread_count`.
    """
    identity = _identity()
    changed, count = read_and_count(runtime_of(), identity, body.get("ids"), via="rest")
    socketio: SocketIO = current_app.extensions["socketio"]
    push_unread_count(socketio, identity, count)
    return {"updated": len(changed), "unread_count": count}
