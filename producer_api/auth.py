"""Bearer API-key authentication and rate limiting: every request under /v1 acts as exactly one
app, and takes a token from that app's bucket."""

from __future__ import annotations

from flask import Flask, g, request

from producer_api.api_keys import ApiKeyCache, KeyOwner
from producer_api.blueprint import fail
from producer_api.rate_limit import Limit, RateLimiter
from shared.runtime import Runtime


class ApiKeyGate:
    """Who a request acts as (the app of its API key) and whether it may go on (its bucket)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.keys = ApiKeyCache()
        self.limiter = RateLimiter(runtime.redis, runtime.settings.queue_prefix)
        self.defaults = Limit(runtime.settings.api_rate_limit, runtime.settings.api_rate_burst)

    def admit(self, authorization: str) -> KeyOwner:
        """The app of the `Authorization` header, once it has taken a token; else a problem
        (401, or 429 with Retry-After) is raised as an HTTPException."""
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            fail(401, "Send your API key as 'Authorization: Bearer <api_key>'.")
        owner = self.keys.owner(self.runtime.sessions, key.strip())
        if owner is None:
            fail(401, "The API key is not valid.")
        limit = Limit(
            owner.rate_limit or self.defaults.rate, owner.rate_burst or self.defaults.burst
        )
        wait = self.limiter.retry_after(owner.app_id, limit)
        if wait is not None:
            fail(
                429,
                f"Over this API key's limit of {limit.rate:g} requests per second "
                f"(burst {limit.burst}); retry after {wait} s.",
                headers={"Retry-After": str(wait)},
            )
        return owner


def install_api_key_auth(app: Flask, gate: ApiKeyGate) -> None:
    """Admit every /v1 request through `gate` before its view runs."""

    @app.before_request
    def authenticate() -> None:
        if request.path.startswith("/v1/"):
            g.app_id = gate.admit(request.headers.get("Authorization", "")).app_id


def current_app_id() -> str:
    """The app the current request authenticated as."""
    app_id: str = g.app_id
    return app_id
