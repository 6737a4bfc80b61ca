"""Bearer API-key authentication; every request under /v1 acts as exactly one app."""

from __future__ import annotations

from flask import Flask, g, request

from producer_api.api_keys import app_for_key
from producer_api.blueprint import fail
from shared.flask_runtime import runtime_of

PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")


def install_api_key_auth(app: Flask) -> None:
    @app.before_request
    def authenticate() -> None:
        if not request.path.startswith("/v1/"):
            return
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            fail(401, "Send your API key as 'Authorization: Bearer <api_key>'.")
        with runtime_of(app).sessions() as session:
            app_id = app_for_key(session, key.strip())
        if app_id is None:
            fail(401, "The API key is not valid.")
        g.app_id = app_id


def current_app_id() -> str:
    """The app the current request authenticated as."""
    app_id: str = g.app_id
    return app_id
