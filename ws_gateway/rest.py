"""The browser inbox REST API: `GET /v1/inbox`, `POST /v1/inbox/read`, `GET /v1/inbox/unread-count`.

Requests authenticate with the same browser token as the socket (`Authorization: Bearer`), and
every query is scoped to the (app, user) it names. Answers allow any origin: a token, never a
cookie, authorizes them, so a business system's own pages may call them.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask_socketio import SocketIO
from marshmallow import ValidationError

from shared.flask_runtime import runtime_of
from shared.problems import flatten_errors, problem
from shared.tokens import BrowserIdentity, InvalidToken
from ws_gateway import inbox
from ws_gateway.auth import bearer_token, identify
from ws_gateway.schemas import InboxQuerySchema, ReadSchema, StrictSchema
from ws_gateway.sockets import push_unread_count, read_and_count

blp = Blueprint("inbox", __name__, url_prefix="/v1/inbox")

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


def _invalid(error: ValidationError) -> Response:
    return problem(
        422,
        "Unprocessable Entity",
        "The request is not valid; see errors.",
        errors=flatten_errors(error.messages),
    )


def _query(schema: StrictSchema) -> dict[str, Any]:
    loaded: dict[str, Any] = schema.load(request.args.to_dict())
    return loaded


@blp.get("")
def list_inbox() -> Response:
    """The user's inbox, newest first: `?unread=1`, `?limit=` (1 to 200), `?before=<id>`."""
    try:
        query = _query(InboxQuerySchema())
    except ValidationError as error:
        return _invalid(error)
    with runtime_of().sessions() as session:
        found = inbox.page(
            session,
            _identity(),
            unread_only=query["unread"],
            limit=query["limit"] or inbox.DEFAULT_PAGE,
            before=query["before"],
        )
    return jsonify(items=found.items, next_before=found.next_before)


@blp.get("/unread-count")
def unread_count() -> Response:
    """`{"count": N}`: how many of the user's notifications are unread."""
    try:
        _query(StrictSchema())
    except ValidationError as error:
        return _invalid(error)
    with runtime_of().sessions() as session:
        count = inbox.unread_count(session, _identity())
    return jsonify(count=count)


@blp.post("/read")
def mark_read() -> Response:
    """`{"ids": [...]}` or `{"all": true}`: mark read; every socket of the user gets the count."""
    body = request.get_json(silent=True)
    if body is None:
        return problem(400, "Bad Request", "The body must be a JSON object.")
    try:
        loaded = ReadSchema().load(body)
    except ValidationError as error:
        return _invalid(error)
    identity = _identity()
    changed, count = read_and_count(runtime_of(), identity, loaded.get("ids"), via="rest")
    socketio: SocketIO = current_app.extensions["socketio"]
    push_unread_count(socketio, identity, count)
    return jsonify(updated=len(changed), unread_count=count)
