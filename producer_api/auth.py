"""Bearer API-key authentication and rate limiting: every request under /v1 acts as exactly one
app, and takes a token from that app's bucket.

A request that presents a key this process knows to be good costs no store or Redis round trip
beyond the rate limiter's (see `producer_api.api_keys.ApiKeyCache`). Bad keys are remembered
too, and each client address may present only a few per minute
(`producer_api.auth_failures`).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, g, request
from werkzeug.exceptions import HTTPException

from producer_api.api_keys import ApiKeyCache, KeyOwner, hash_api_key
from producer_api.auth_failures import FailedAuthLimiter
from producer_api.rate_limit import Limit, RateLimiter
from shared.blueprint import fail
from shared.runtime import Runtime

#: Where a request's WSGI environ keeps the gate's answer: the accept path and the Flask app may
#: both ask for one request, and it must be counted (and take a token) once.
_ADMITTED = "omnipush.admitted"


class ApiKeyGate:
    """Who a request acts as (the app of its API key) and whether it may go on (its bucket)."""

    def __init__(
        self,
        runtime: Runtime,
        keys: ApiKeyCache | None = None,
        failures: FailedAuthLimiter | None = None,
    ) -> None:
        self.runtime = runtime
        self.keys = keys or ApiKeyCache()
        self.failures = failures or FailedAuthLimiter(
            runtime.best_effort_redis, runtime.settings.queue_prefix
        )
        self.limiter = RateLimiter(runtime.best_effort_redis, runtime.settings.queue_prefix)
        self.defaults = Limit(runtime.settings.api_rate_limit, runtime.settings.api_rate_burst)

    def admit(self, environ: dict[str, Any]) -> KeyOwner:
        """The app of the request's `Authorization` header, once it has taken a token; else a
        problem (401, or 429 with Retry-After) is raised as an HTTPException. Asked again for
        the same request, it gives the same answer."""
        answered = environ.get(_ADMITTED)
        if isinstance(answered, HTTPException):
            raise answered
        if isinstance(answered, KeyOwner):
            return answered
        try:
            owner = self._admit(
                environ.get("HTTP_AUTHORIZATION", ""), environ.get("REMOTE_ADDR") or "unknown"
            )
        except HTTPException as refusal:
            environ[_ADMITTED] = refusal
            raise
        environ[_ADMITTED] = owner
        return owner

    def _admit(self, authorization: str, address: str) -> KeyOwner:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            fail(401, "Send your API key as 'Authorization: Bearer <api_key>'.")
        digest = hash_api_key(key.strip())
        known = self.keys.recall(digest)
        if known is not None:
            owner = known.owner
        else:
            self._refuse_if_waiting(self.failures.retry_after(address))
            owner = self.keys.look_up(self.runtime.sessions, digest)
        if owner is None:
            self._refuse_if_waiting(self.failures.record(address))
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

    @staticmethod
    def _refuse_if_waiting(wait: int | None) -> None:
        if wait is not None:
            fail(
                429,
                f"Too many requests with a bad API key from this address; retry after {wait} s.",
                headers={"Retry-After": str(wait)},
            )


def install_api_key_auth(app: Flask, gate: ApiKeyGate) -> None:
    """Admit every /v1 request through `gate` before its view runs."""

    @app.before_request
    def authenticate() -> None:
        if request.path.startswith("/v1/"):
            g.key_owner = gate.admit(request.environ)


def current_key_owner() -> KeyOwner:
    """The app the current request authenticated as, with its own limits."""
    owner: KeyOwner = g.key_owner
    return owner


def current_app_id() -> str:
    """The app the current request authenticated as."""
    return current_key_owner().app_id
