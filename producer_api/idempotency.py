"""`Idempotency-Key`: a retried POST gets the first answer again instead of a second message.

The first successful answer to a key is stored in the same transaction as the messages it
accepted, so either both exist or neither does. A retry with the same key and body gets that
answer again with `Idempotent-Replayed: true`; the same key with another body (or on another
endpoint) is a 422. While the first request is still running, a short Redis lock makes a
concurrent retry a 409; without Redis the store's primary key still lets only one of them
commit, and the loser replays the winner's answer. Keys are kept for `RETENTION`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import structlog
from flask import Response, g, request
from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.exc import IntegrityError

from producer_api.auth import current_app_id
from shared import json_body
from shared.best_effort_redis import BestEffortRedis
from shared.blueprint import fail
from shared.flask_runtime import runtime_of
from shared.ids import utcnow
from shared.models import IdempotencyKey, table_of

log = structlog.get_logger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
#: How long a key's first answer is replayed; older keys are purged and may be used again.
RETENTION = timedelta(hours=24)
#: How long a request may hold its key before a retry is let through (it crashed, say).
IN_FLIGHT_SECONDS = 60
#: How often expired keys are purged, by whichever request that stores a key comes first.
PURGE_SECONDS = 600
_VALID_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_KEYS = table_of(IdempotencyKey)

View = TypeVar("View", bound=Callable[..., Any])

#: The OpenAPI description of the header, for the views that honour it.
HEADER_DOC = {
    "in": "header",
    "name": HEADER,
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "Retrying with the same key and body returns the first answer again, "
    f"with `{REPLAYED_HEADER}: true`; another body is a 422, a key still in flight a 409.",
}


@dataclass(frozen=True)
class Claim:
    """A request's key, scoped to its app, and the fingerprint of what it asked."""

    app_id: str
    key: str
    fingerprint: str


def _fingerprint() -> str:
    """The endpoint and the body, canonically: key order and whitespace do not matter."""
    raw = request.get_data(cache=True)
    try:
        canonical = json.dumps(json_body.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = raw
    digest = hashlib.sha256(f"{request.method} {request.path}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


def _stored(connection: Connection, claim: Claim) -> IdempotencyKey | None:
    row = connection.execute(
        select(_KEYS).where(
            _KEYS.c.app_id == claim.app_id,
            _KEYS.c.key == claim.key,
            _KEYS.c.created_at > utcnow() - RETENTION,
        )
    ).first()
    return IdempotencyKey(**row._asdict()) if row is not None else None


def _lookup(claim: Claim) -> IdempotencyKey | None:
    with runtime_of().engine.connect() as connection:
        return _stored(connection, claim)


def _replay(stored: IdempotencyKey, claim: Claim) -> Response:
    if stored.request_hash != claim.fingerprint:
        fail(
            422,
            f"This {HEADER} was already used with another request; use a new key.",
            errors={HEADER: ["Already used with a different body or endpoint."]},
        )
    response = Response(stored.body, status=stored.status_code, mimetype="application/json")
    for name, value in stored.headers.items():
        response.headers[name] = value
    response.headers[REPLAYED_HEADER] = "true"
    return response


class _InFlightLock:
    """redis-py's lock on one key while its first request runs, never waited for. Its Redis
    calls are best effort: when Redis fails it counts as taken (the store's primary key still
    stops a second message), and one never released lapses after `IN_FLIGHT_SECONDS`."""

    def __init__(self, redis: BestEffortRedis, name: str) -> None:
        self._redis = redis
        self._lock = redis.client.lock(
            name, timeout=IN_FLIGHT_SECONDS, blocking=False, raise_on_release_error=False
        )
        self._held = False

    def acquire(self) -> bool:
        taken = self._redis.call("idempotency locks", lambda _client: self._lock.acquire(), None)
        self._held = bool(taken)
        return taken is None or self._held

    def release(self) -> None:
        if self._held:
            self._redis.call("idempotency locks", lambda _client: self._lock.release(), None)


def idempotent(view: View) -> View:
    """Honour `Idempotency-Key` on a view that calls `remember` inside its transaction."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = request.headers.get(HEADER)
        if key is None:
            return view(*args, **kwargs)
        if not _VALID_KEY.match(key):
            fail(
                400,
                f"The {HEADER} header must be 1 to 255 visible ASCII characters.",
                errors={HEADER: ["Must be 1 to 255 visible ASCII characters."]},
            )
        claim = Claim(current_app_id(), key, _fingerprint())
        stored = _lookup(claim)
        if stored is not None:
            return _replay(stored, claim)
        runtime = runtime_of()
        lock = _InFlightLock(
            runtime.best_effort_redis,
            f"{runtime.settings.queue_prefix}:idempotency:{claim.app_id}:{key}",
        )
        if not lock.acquire():
            fail(
                409,
                f"A request with this {HEADER} is still in flight; retry shortly.",
                headers={"Retry-After": "1"},
            )
        try:
            # The first request may have finished between the lookup and the lock.
            stored = _lookup(claim)
            if stored is not None:
                return _replay(stored, claim)
            g.idempotency_claim = claim
            try:
                return view(*args, **kwargs)
            except IntegrityError:
                # Another request with this key won the race (Redis was down or the lock had
                # lapsed): its answer, not a second message.
                stored = _lookup(claim)
                if stored is None:
                    raise
                return _replay(stored, claim)
        finally:
            lock.release()

    return cast(View, wrapper)


def remembering() -> bool:
    """Whether this request's answer is to be stored (it came with a key)."""
    return g.get("idempotency_claim") is not None


def remember(
    connection: Connection, status: int, body: Mapping[str, Any], headers: Mapping[str, str]
) -> None:
    """Store this answer for the request's key (if it sent one), in the caller's transaction.

    `body` must already be in its JSON form (as the response schema dumps it).
    """
    claim: Claim | None = g.get("idempotency_claim")
    if claim is None:
        return
    runtime = runtime_of()
    if _purge_now(runtime.best_effort_redis, runtime.settings.queue_prefix):
        log.info("idempotency.purged", keys=purge_expired(connection))
    # An expired key of the same name is free again.
    connection.execute(
        delete(_KEYS).where(
            _KEYS.c.app_id == claim.app_id,
            _KEYS.c.key == claim.key,
            _KEYS.c.created_at <= utcnow() - RETENTION,
        )
    )
    connection.execute(
        insert(_KEYS).values(
            app_id=claim.app_id,
            key=claim.key,
            request_hash=claim.fingerprint,
            status_code=status,
            body=json.dumps(body),
            headers=dict(headers),
            created_at=utcnow(),
        )
    )


def purge_expired(connection: Connection) -> int:
    """Delete the keys past their retention; returns how many went."""
    result = connection.execute(delete(_KEYS).where(_KEYS.c.created_at <= utcnow() - RETENTION))
    return result.rowcount


def _purge_now(redis: BestEffortRedis, prefix: str) -> bool:
    """Whether this request should purge: one API process in the cluster per interval."""
    return redis.call(
        "idempotency purges",
        lambda client: bool(
            client.set(f"{prefix}:idempotency:purge", "1", nx=True, ex=PURGE_SECONDS)
        ),
        False,
    )
