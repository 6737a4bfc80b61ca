"""Run a unit of store work again once when it failed only because a pooled connection was dead.

After PostgreSQL restarts, every connection in a pool is dead, and the first statement on one
fails with a disconnect error. SQLAlchemy then invalidates the whole pool, so a second attempt
checks out a fresh connection and succeeds. Engines deliberately have no pre-ping (it would cost
a round trip on every checkout of the hot paths, see shared/db.py); services whose work is not
retried as a batch anyway (the gateway's replay, inbox REST, ack and read, the API's key look-up
and its GET views) wrap it in this.

The work must open its own session or connection, so that the retry gets a new one, and must be
safe to run twice: a read, or a transaction whose statements are conditional on the current
state (an ack or a read of a delivery changes it only once, however often it runs).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from flask import Flask, request
from sqlalchemy.exc import DBAPIError

log = structlog.get_logger(__name__)

T = TypeVar("T")


def retry_once_on_disconnect(work: Callable[[], T]) -> T:
    """`work()`, run a second time if the first failed on a connection the server had closed."""
    try:
        return work()
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
        log.info("store.reconnecting", detail=str(error.orig).splitlines()[0] if error.orig else "")
    return work()


def retry_reads_once_on_disconnect(app: Flask) -> None:
    """Every GET (and HEAD) view of `app`, so far registered, runs again once if the store
    connection it used was dead: a read is safe to repeat, and the view opens its own session."""
    for endpoint, view in list(app.view_functions.items()):
        app.view_functions[endpoint] = _read_retried(view)


def _read_retried(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def retried(*args: Any, **kwargs: Any) -> Any:
        if request.method not in ("GET", "HEAD"):
            return view(*args, **kwargs)
        return retry_once_on_disconnect(lambda: view(*args, **kwargs))

    return retried
