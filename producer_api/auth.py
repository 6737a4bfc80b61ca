"""Bearer API-key authentication and rate limiting: every request under /v1 acts as exactly one
app, and takes a token from that app's bucket."""

from __future__ import annotations

from flask import Flask, g, request

from producer_api.api_keys import ApiKeyCache
from producer_api.blueprint import fail
from producer_api.rate_limit import Limit, RateLimiter
from shared.flask_runtime import runtime_of


def install_api_key_auth(app: Flask) -> None:
    keys = ApiKeyCache()
    runtime = runtime_of(app)
    limiter = RateLimiter(runtime.redis, runtime.settings.queue_prefix)
    defaults = Limit(runtime.settings.api_rate_limit, runtime.settings.api_rate_burst)

    @app.before_request
    def authenticate() -> None:
        if not request.path.startswith("/v1/"):
            return
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            fail(401, "Send your API key as 'Authorization: Bearer <api_key>'.")
        owner = keys.owner(runtime.sessions, key.strip())
        if owner is None:
            fail(401, "The API key is not valid.")
        g.app_id = owner.app_id
        limit = Limit(owner.rate_limit or defaults.rate, owner.rate_burst or defaults.burst)
        wait = limiter.retry_after(owner.app_id, limit)
        if wait is not None:
            fail(
                429,
                f"Over this API key's limit of {limit.rate:g} requests per second "
                f"(burst {limit.burst}); retry after {wait} s.",
                headers={"Retry-After": str(wait)},
            )


def current_app_id() -> str:
    """The app the current request authenticated as."""
    app_id: str = g.app_id
    return app_id
