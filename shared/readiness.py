"""Readiness checks: can this process reach the store, RabbitMQ and Redis right now?

Each check opens a connection of its own (a pooled one could be stale, or hung in another
request) and gives up after `CHECK_TIMEOUT_SECONDS`, so that a dependency that accepts
connections and never answers is reported as unreachable within seconds, never as a crash.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pika
import redis
import structlog
from pika.adapters.utils.connection_workflow import AMQPConnectorException
from pika.exceptions import AMQPError
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from shared.pipeline_metrics import ConnectionMetrics
from shared.runtime import Runtime

log = structlog.get_logger(__name__)

#: How long one dependency may take to answer its check.
CHECK_TIMEOUT_SECONDS = 2.0


def check_dependencies(
    runtime: Runtime, names: Sequence[str] = ("store", "broker", "redis")
) -> dict[str, str]:
    """`{name: "ok" or why not}` for each of the named dependencies."""
    checks: dict[str, Callable[[Runtime], str]] = {
        "store": _store,
        "broker": _broker,
        "redis": _redis,
    }
    return {name: checks[name](runtime) for name in names}


def _why(error: BaseException, started: float) -> str:
    """A failed check's reason: it got no answer in time (it failed only once its time was
    about up), or this error."""
    if time.monotonic() - started >= 0.9 * CHECK_TIMEOUT_SECONDS:
        return f"no answer within {CHECK_TIMEOUT_SECONDS:g} s"
    return type(error).__name__


def _store(runtime: Runtime) -> str:
    url = runtime.engine.url
    timeout = int(CHECK_TIMEOUT_SECONDS)
    connect_args = (
        {"connect_timeout": timeout}
        if runtime.engine.dialect.name == "postgresql"
        else {"timeout": timeout}
    )
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    started = time.monotonic()
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        where = f" at {url.host}:{url.port or 5432}" if url.host else ""
        return f"unreachable{where}: {_why(error, started)}"
    finally:
        engine.dispose()
    return "ok"


def _broker(runtime: Runtime) -> str:
    params = pika.URLParameters(runtime.settings.amqp_url)
    params.socket_timeout = CHECK_TIMEOUT_SECONDS
    # The whole handshake, not only the TCP connect: a broker that accepts the connection and
    # never speaks AMQP would otherwise hold the check for pika's default 15 s.
    params.stack_timeout = CHECK_TIMEOUT_SECONDS
    params.blocked_connection_timeout = CHECK_TIMEOUT_SECONDS
    params.connection_attempts = 1
    started = time.monotonic()
    try:
        pika.BlockingConnection(params).close()
    except (AMQPError, AMQPConnectorException, OSError) as error:
        # pika raises AMQPConnectorException (not an AMQPError) when the handshake times out.
        return f"unreachable at {params.host}:{params.port}: {_why(error, started)}"
    return "ok"


def _redis(runtime: Runtime) -> str:
    client = redis.Redis.from_url(
        runtime.settings.redis_url,
        socket_timeout=CHECK_TIMEOUT_SECONDS,
        socket_connect_timeout=CHECK_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )
    kwargs = client.connection_pool.connection_kwargs
    started = time.monotonic()
    try:
        client.ping()
    except (RedisError, OSError) as error:
        where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
        return f"unreachable at {where}: {_why(error, started)}"
    finally:
        client.close()
    return "ok"


def wait_for_redis(
    client: redis.Redis,
    stop: threading.Event,
    max_backoff: float = 30.0,
    connections: ConnectionMetrics | None = None,
) -> bool:
    """Block until Redis answers (True) or `stop` is set (False), saying why while it waits;
    a wait that began with a failure counts as one outage, and its end as a reconnect."""
    backoff = 0.5
    failed = False
    while not stop.is_set():
        try:
            client.ping()
            if failed and connections is not None:
                connections.redis_back()
            return True
        except (RedisError, OSError) as error:
            if not failed and connections is not None:
                connections.redis_lost()
            failed = True
            kwargs = client.connection_pool.connection_kwargs
            where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
            log.warning(
                "redis.unreachable",
                detail=f"Redis is unreachable at {where}: {type(error).__name__}",
                retry_in_s=backoff,
            )
            stop.wait(backoff)
            backoff = min(backoff * 2, max_backoff)
    return False
