"""Readiness checks: can this process reach the store, RabbitMQ and Redis right now?"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import pika
import redis
import structlog
from pika.exceptions import AMQPError
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from shared.runtime import Runtime

log = structlog.get_logger(__name__)


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


def _store(runtime: Runtime) -> str:
    try:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        return f"unreachable: {type(error).__name__}"
    return "ok"


def _broker(runtime: Runtime) -> str:
    params = pika.URLParameters(runtime.settings.amqp_url)
    params.socket_timeout = 2
    params.blocked_connection_timeout = 2
    params.connection_attempts = 1
    try:
        pika.BlockingConnection(params).close()
    except (AMQPError, OSError) as error:
        return f"unreachable at {params.host}:{params.port}: {type(error).__name__}"
    return "ok"


def _redis(runtime: Runtime) -> str:
    try:
        runtime.redis.ping()
    except (RedisError, OSError) as error:
        return f"unreachable: {type(error).__name__}"
    return "ok"


def wait_for_redis(client: redis.Redis, stop: threading.Event, max_backoff: float = 30.0) -> bool:
    """Block until Redis answers (True) or `stop` is set (False), saying why while it waits."""
    backoff = 0.5
    while not stop.is_set():
        try:
            client.ping()
            return True
        except (RedisError, OSError) as error:
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
