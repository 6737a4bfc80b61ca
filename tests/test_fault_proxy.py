"""The fault proxy that other tests put between a service and Redis, RabbitMQ or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.fault_proxy import FaultProxy


@pytest.fixture
def proxied_redis() -> Iterator[tuple[FaultProxy, redis.Redis]]:
    with FaultProxy("127.0.0.1", 6379) as proxy:
        client = redis.Redis(
            port=proxy.port,
            socket_timeout=0.3,
            socket_connect_timeout=0.3,
            retry=Retry(NoBackoff(), 0),
        )
        yield proxy, client
        client.close()


def test_it_forwards_until_told_otherwise(proxied_redis: tuple[FaultProxy, redis.Redis]) -> None:
    _, client = proxied_redis
    assert client.ping()


def test_a_hung_proxy_accepts_and_never_answers_until_resumed(
    proxied_redis: tuple[FaultProxy, redis.Redis],
) -> None:
    proxy, client = proxied_redis
    proxy.hang()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    proxy.resume()
    client.connection_pool.disconnect()
    assert client.ping()


def test_drop_closes_open_connections_and_new_ones_work(
    proxied_redis: tuple[FaultProxy, redis.Redis],
) -> None:
    proxy, client = proxied_redis
    connection = client.connection_pool.get_connection()
    connection.send_command("PING")
    assert connection.read_response() in (b"PONG", "PONG")
    proxy.drop()
    with pytest.raises((redis.ConnectionError, OSError)):
        connection.send_command("PING")
        connection.read_response()
    client.connection_pool.release(connection)
    client.connection_pool.disconnect()
    assert client.ping()


def test_a_refusing_proxy_closes_new_connections(
    proxied_redis: tuple[FaultProxy, redis.Redis],
) -> None:
    proxy, client = proxied_redis
    proxy.refuse()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    proxy.resume()
    assert client.ping()
