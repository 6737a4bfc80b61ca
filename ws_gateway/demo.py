"""`GET /demo?token=JWT`: a page showing one user's live inbox (list, unread badge, mark read)."""

from __future__ import annotations

from flask import Blueprint, Response, render_template, request

from shared.flask_runtime import runtime_of
from shared.tokens import InvalidToken
from ws_gateway.auth import identify

blp = Blueprint("demo", __name__)


def _secure(response: Response, host: str) -> Response:
    # The token is in the URL: keep it out of caches and Referer headers; scripts only from here.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self' ws://{host} wss://{host}; frame-ancestors 'none'; base-uri 'none'"
    )
    return response


@blp.get("/demo")
def demo() -> Response:
    """The live inbox of the user the token names, or a 401 page."""
    token = request.args.get("token", "")
    try:
        identity = identify(runtime_of().settings.secret_key, token)
    except InvalidToken:
        reason = "missing" if not token else "not valid or has expired"
        page = render_template("unauthorized.html", reason=reason)
        return _secure(Response(page, status=401, mimetype="text/html"), request.host)
    page = render_template(
        "demo.html", token=token, app_id=identity.app_id, user_id=identity.user_id
    )
    return _secure(Response(page, mimetype="text/html"), request.host)
