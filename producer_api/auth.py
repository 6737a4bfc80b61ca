"""Bearer API-key authentication; every request under /v1 acts as exactly one app."""

from __future__ import annotations

from flask import Flask, g, request

from producer_api.api_keys import ApiKeyCache
from producer_api.blueprint import fail
from shared.flask_runtime import runtime_of


def install_api_key_auth(app: Flask) -> None:
    keys = ApiKeyCache()

    @app.before_request
    def authenticate() -> None:
        if not request.path.startswith("/v1/"):
            return
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            fail(401, "Send your API key as 'Authorization: Bearer <api_key>'.")
        app_id = keys.app_for_key(runtime_of(app).sessions, key.strip())
        if app_id is None:
            fail(401, "The API key is not valid.")
        g.app_id = app_id


def current_app_id() -> str:
    """The app the current request authenticated as."""
    app_id: str = g.app_id
    return app_id
