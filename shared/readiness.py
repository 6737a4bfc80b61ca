"""Readiness checks: can this process reach the store, RabbitMQ and Redis right now?"""

from __future__ import annotations

import pika
from pika.exceptions import AMQPError
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from shared.runtime import Runtime


def check_dependencies(runtime: Runtime) -> dict[str, str]:
    """`{"store"|"broker"|"redis": "ok" or why not}` for each dependency."""
    return {"store": _store(runtime), "broker": _broker(runtime), "redis": _redis(runtime)}


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
