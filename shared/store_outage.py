"""Store errors that mean "the store cannot be reached right now", not "this request is wrong".

A PostgreSQL restart closes every pooled connection, and while the server is down new ones are
refused or never answered. Requests caught in that moment are answered 503 with `Retry-After`
(see `shared.problems`), never 500: nothing is wrong with them, and they can be sent again.
"""

from __future__ import annotations

from sqlalchemy import Engine, event
from sqlalchemy import exc as sa

#: What `Retry-After` tells a client caught by a store outage.
RETRY_AFTER_SECONDS = 2
#: How long opening a PostgreSQL connection may take: a server that accepts connections and
#: never answers must not hold a request for ever.
CONNECT_TIMEOUT_SECONDS = 5


def is_store_outage(error: BaseException) -> bool:
    """Whether `error` says the store is unreachable, restarting, overloaded or timing out."""
    if isinstance(error, sa.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(
        error,
        # OperationalError: refused, closed, timed out, deadlocked; InterfaceError: a closed
        # connection used; TimeoutError: no pooled connection free in time.
        sa.OperationalError | sa.InterfaceError | sa.TimeoutError | sa.DisconnectionError,
    )


def bound_connect_time(engine: Engine) -> None:
    """Make `engine`'s new PostgreSQL connections give up after `CONNECT_TIMEOUT_SECONDS`."""
    if engine.dialect.name != "postgresql":
        return  # SQLite is a file: nothing to wait for but its lock, which has its own timeout

    @event.listens_for(engine, "do_connect")
    def connect_timeout(
        _dialect: object, _record: object, _args: object, kwargs: dict[str, object]
    ) -> None:
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
