"""Fixtures: private PostgreSQL databases and queue prefixes, apps, and running stacks.

Each stack gets its own database and queue prefix, so stacks never take each other's work. The
in-process tests (the API as a Flask app, consumers on threads) have a store and queues of their
own too: no running service relays, dispatches or sends what they write, so what they see does
not depend on which tests ran before. `settings`, `runtime` and `tenant` name the store a test
works on: the session stack's when the test uses `stack`, the in-process one otherwise.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager

import pika
import psycopg2
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from channels.registry import channel_names
from producer_api.api_keys import NewApp, create_app_with_key
from producer_api.app import create_app
from shared.amqp.link import AmqpLink, Outgoing
from shared.amqp.topology import Topology
from shared.migrate import upgrade
from shared.runtime import Runtime
from shared.settings import Settings
from tests.fault_proxy import FaultProxy, amqp_frames
from tests.offline_dns import offline_resolver
from tests.stack import Stack, free_port

PG_ADMIN_DSN = os.environ.get("OMNIPUSH_TEST_PG", "host=127.0.0.1 user=postgres dbname=test")
AMQP_PORT, REDIS_PORT = 5672, 6379
AMQP_URL = f"amqp://guest:guest@127.0.0.1:{AMQP_PORT}/%2F"
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"


def queue_depth(queue: str) -> int:
    """How many messages wait in `queue` right now."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        return int(declared.method.message_count)
    finally:
        connection.close()


def _admin(sql: str) -> None:
    connection = psycopg2.connect(PG_ADMIN_DSN)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(sql)
    connection.close()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database with the migrations applied, dropped afterwards."""
    name = f"omnipush_test_{uuid.uuid4().hex[:10]}"
    _admin(f"CREATE DATABASE {name}")
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def queue_prefix() -> Iterator[str]:
    """A queue prefix of its own; its queues, exchanges and Redis keys are deleted afterwards."""
    prefix = f"omnipush-test-{uuid.uuid4().hex[:10]}"
    try:
        yield prefix
    finally:
        topology = Topology(prefix=prefix, channels=channel_names())
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        topology.delete_blocking(connection.channel())
        connection.close()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()


@contextmanager
def isolated_settings() -> Iterator[Settings]:
    """Settings with their own database, queue prefix, secret and free ports."""
    with postgres_database() as database_url, queue_prefix() as prefix:
        yield Settings(
            database_url=database_url,
            amqp_url=AMQP_URL,
            redis_url=REDIS_URL,
            secret_key="test-secret-" + uuid.uuid4().hex,
            queue_prefix=prefix,
            api_bind=f"127.0.0.1:{free_port()}",
            gateway_bind=f"127.0.0.1:{free_port()}",
        )


@pytest.fixture(scope="session")
def inprocess_settings() -> Iterator[Settings]:
    """The settings of the in-process tests' store and queues, which no running service uses."""
    with isolated_settings() as built:
        yield built


@pytest.fixture(scope="session")
def inprocess_runtime(inprocess_settings: Settings) -> Iterator[Runtime]:
    built = Runtime.build(inprocess_settings)
    yield built
    built.close()


@pytest.fixture(scope="session")
def stack_settings() -> Iterator[Settings]:
    """The settings of the session `stack`: a store and queue prefix of its own."""
    with isolated_settings() as built:
        yield built


@pytest.fixture(scope="session")
def stack_runtime(stack_settings: Settings) -> Iterator[Runtime]:
    built = Runtime.build(stack_settings)
    yield built
    built.close()


def _uses_stack(request: pytest.FixtureRequest) -> bool:
    return "stack" in request.fixturenames


@pytest.fixture
def settings(request: pytest.FixtureRequest) -> Settings:
    """The settings of this test's store: the session stack's if it uses `stack`, else the
    in-process tests' (a module- or session-scoped fixture asks for `inprocess_settings`)."""
    chosen: Settings = request.getfixturevalue(
        "stack_settings" if _uses_stack(request) else "inprocess_settings"
    )
    return chosen


@pytest.fixture
def runtime(request: pytest.FixtureRequest) -> Runtime:
    """This test's store and Redis, chosen as `settings` is (or `inprocess_runtime`)."""
    chosen: Runtime = request.getfixturevalue(
        "stack_runtime" if _uses_stack(request) else "inprocess_runtime"
    )
    return chosen


@pytest.fixture
def isolated_runtime(inprocess_settings: Settings) -> Iterator[Runtime]:
    """The in-process store with queues of this test's own, for consumers the test runs."""
    with queue_prefix() as prefix:
        built = Runtime.build(inprocess_settings.with_overrides(queue_prefix=prefix))
        yield built
        built.close()


#: The dispatcher page of `paged_runtime`, in topic subscribers.
SMALL_PAGE = 3


@pytest.fixture
def paged_runtime(settings: Settings) -> Iterator[Runtime]:
    """The in-process store, queues of the test's own, and a dispatcher page of `SMALL_PAGE`
    subscribers."""
    with queue_prefix() as prefix:
        built = Runtime.build(
            settings.with_overrides(queue_prefix=prefix, dispatch_page_size=SMALL_PAGE)
        )
        yield built
        built.close()


@pytest.fixture
def broker_proxy() -> Iterator[FaultProxy]:
    """A proxy in front of RabbitMQ that can withhold the broker's publisher confirms."""
    with FaultProxy("127.0.0.1", AMQP_PORT, framing=amqp_frames) as proxy:
        yield proxy


@pytest.fixture
def link(topology: Topology) -> Iterator[AmqpLink]:
    """A started link on the requesting module's `topology` fixture, closed afterwards."""
    built = AmqpLink(AMQP_URL, topology)
    built.start()
    assert built.wait_ready(10), "the link never connected"
    yield built
    built.close()


def amqp_url_via(proxy: FaultProxy) -> str:
    return f"amqp://guest:guest@{proxy.address}/%2F"


def redis_url_via(proxy: FaultProxy) -> str:
    return f"redis://{proxy.address}/0"


def publish(runtime: Runtime, routing_key: str, body: bytes) -> None:
    """Publish one message on `runtime`'s exchange and wait for the broker's confirm."""
    link = AmqpLink(AMQP_URL, runtime.topology)
    link.start()
    try:
        assert link.wait_ready(10), "RabbitMQ did not answer"
        link.publish_batch([Outgoing(routing_key, body)])[0].result(10)
    finally:
        link.close()


def new_tenant(runtime: Runtime) -> NewApp:
    with runtime.sessions() as session, session.begin():
        return create_app_with_key(session, f"tenant-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def tenant(runtime: Runtime) -> NewApp:
    """A new app (business system) with its API key."""
    return new_tenant(runtime)


@pytest.fixture(scope="module")
def api_app(inprocess_settings: Settings, inprocess_runtime: Runtime) -> Flask:
    """The producer API in-process, on the in-process tests' store (a test that uses `stack`
    talks to the stack's API over HTTP instead), resolving no name over the network."""
    return create_app(inprocess_settings, runtime=inprocess_runtime, resolver=offline_resolver())


@pytest.fixture
def client(api_app: Flask) -> Iterator[FlaskClient]:
    """A test client of the in-process API."""
    with api_app.test_client() as test_client:
        yield test_client


def bearer(tenant: NewApp) -> dict[str, str]:
    """The Authorization header of `tenant`'s API key."""
    return {"Authorization": f"Bearer {tenant.api_key}"}


def service_env(settings: Settings) -> dict[str, str]:
    """The environment that makes `omnipush serve` use these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIPUSH_")}
    env.update(
        OMNIPUSH_DATABASE_URL=settings.database_url,
        OMNIPUSH_AMQP_URL=settings.amqp_url,
        OMNIPUSH_REDIS_URL=settings.redis_url,
        OMNIPUSH_SECRET_KEY=settings.secret_key,
        OMNIPUSH_QUEUE_PREFIX=settings.queue_prefix,
        OMNIPUSH_API_BIND=settings.api_bind,
        OMNIPUSH_GATEWAY_BIND=settings.gateway_bind,
        # Off unless a test asks for it: stacks of tests would otherwise take the default
        # metrics ports of a `make run` on the same machine (and warn when it has them).
        OMNIPUSH_METRICS_BIND=settings.metrics_bind or "off",
    )
    return env


@pytest.fixture(scope="session")
def stack(stack_settings: Settings) -> Iterator[Stack]:
    """The whole pipeline (api, relay, dispatcher, web worker, gateway) for the session."""
    running = Stack(settings=stack_settings, env=service_env(stack_settings))
    try:
        running.start_all()
        yield running
    finally:
        running.stop_all()


#: The environment that keeps every web delivery on the queue path: the web worker sends them,
#: the dispatcher none (for tests of the queue's hops and lanes).
WEB_SENDS_BY_WORKER = {"OMNIPUSH_WEB_SENDS": "worker"}

#: Builds a running stack: variables for every service, and for some services of their own.
StackBuilder = Callable[..., Stack]


@pytest.fixture
def isolated_stack() -> Iterator[StackBuilder]:
    """Builds stacks with their own store and queues, each started with `env` over the usual
    variables and `env_of` for some services by name, stopped when the test ends."""
    with ExitStack() as cleanup:

        def build(
            env: Mapping[str, str] | None = None,
            env_of: Mapping[str, Mapping[str, str]] | None = None,
        ) -> Stack:
            built_settings = cleanup.enter_context(isolated_settings())
            variables = service_env(built_settings) | dict(env or {})
            running = Stack(settings=built_settings, env=variables)
            cleanup.callback(running.stop_all)
            running.start_all(env_of)
            return running

        yield build
