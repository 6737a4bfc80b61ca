"""A channel worker whose store goes away mid-batch settles each AMQP message of it once."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import make_url

from shared.amqp.link import AmqpLink, Outgoing
from shared.amqp.topology import channel_key
from shared.models import Delivery
from shared.runtime import Runtime
from shared.settings import Settings
from tests.conftest import AMQP_URL, queue_depth, service_env
from tests.fault_proxy import FaultProxy
from tests.queued import queued_delivery
from tests.stack import Service, wait_until

SETTLE_SECONDS = 30


def test_a_malformed_delivery_held_with_others_while_the_store_is_away_is_dead_lettered_once(
    settings: Settings, runtime: Runtime
) -> None:
    url = make_url(settings.database_url)
    with FaultProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=int(proxy.address.rsplit(":", 1)[1]))
        env = service_env(settings) | {
            "OMNIPUSH_DATABASE_URL": proxied.render_as_string(hide_password=False)
        }
        # Both wait in the queue before the worker starts, so that it takes them as one batch,
        # which then waits for the store.
        _message_id, delivery_id = queued_delivery(runtime, "web")
        link = AmqpLink(AMQP_URL, runtime.topology)
        link.start()
        try:
            assert link.wait_ready(10), "RabbitMQ did not answer"
            link.publish_batch([Outgoing(channel_key("web"), b"not json")])[0].result(10)
        finally:
            link.close()
        proxy.refuse()
        worker = Service(args=["serve", "worker", "--channel", "web"], env=env).start()
        try:
            worker.wait_for_log("consumer.dependency_unavailable", SETTLE_SECONDS)
            proxy.resume()
            worker.wait_for_log("consumer.dependency_back", SETTLE_SECONDS)

            def status() -> str | None:
                with runtime.engine.connect() as connection:
                    return connection.scalar(
                        select(Delivery.status).where(Delivery.id == delivery_id)
                    )

            wait_until(lambda: status() == "sent", SETTLE_SECONDS, "the delivery sent")
            dead = runtime.topology.dead_queue
            wait_until(lambda: queue_depth(dead) == 1, SETTLE_SECONDS, "the malformed one dead")
            output = worker.output()
            assert output.count("worker.malformed") == 1
            # Its batch was settled once: the broker kept the channel open.
            assert "amqp.channel_closed" not in output
        finally:
            assert worker.stop() == 0
