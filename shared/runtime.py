"""What a running omnipush process holds: its settings, its connections to the store and Redis,
and the counters of how often those connections were lost.

Built once by a service's factory and passed explicitly; nothing here is created at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.amqp.topology import Topology
from shared.best_effort_redis import BestEffortRedis
from shared.db import make_engine, make_session_factory
from shared.pipeline_metrics import ConnectionMetrics
from shared.settings import Settings
from shared.store_outage import bound_connect_time


@dataclass
class Runtime:
    """Settings plus the store engine, a session factory, Redis clients and the topology.

    `redis` is for what the process cannot do without; `best_effort_redis` for what it goes on
    without when Redis fails (rate limits, in-flight locks): it gives up fast and backs off.
    `connections` counts lost and regained connections; a service that serves metrics builds it
    on its registry, anything else gets one nobody reads.
    """

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    redis: redis.Redis
    best_effort_redis: BestEffortRedis
    topology: Topology = field(default_factory=Topology)
    connections: ConnectionMetrics = field(default_factory=lambda: ConnectionMetrics("unnamed"))

    @classmethod
    def build(
        cls,
        settings: Settings,
        channels: tuple[str, ...] = ("web",),
        pool_size: int = 5,
        connections: ConnectionMetrics | None = None,
    ) -> Runtime:
        """Connect to what `settings` name; `pool_size` should cover the process's threads, or
        connections beyond it are opened and closed again on every use."""
        engine = make_engine(settings.database_url, pool_size=pool_size)
        bound_connect_time(engine)
        connections = connections or ConnectionMetrics("unnamed")
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_session_factory(engine),
            redis=redis.Redis.from_url(
                settings.redis_url, socket_connect_timeout=2, socket_timeout=5
            ),
            best_effort_redis=BestEffortRedis(settings.redis_url, connections=connections),
            topology=Topology(
                prefix=settings.queue_prefix,
                channels=channels,
                retry_delays=settings.config.retry_delays,
            ),
            connections=connections,
        )

    def close(self) -> None:
        self.redis.close()
        self.best_effort_redis.close()
        self.engine.dispose()
