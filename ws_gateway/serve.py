"""`omnipush serve gateway`: the gateway under gunicorn's gevent worker, one worker per process.

Socket.IO keeps each client's state in the process that accepted it, so a process runs exactly
one worker; scale out with more processes behind a sticky load balancer, all sharing the Redis
message queue. This is the one module that knows about gevent: it makes psycopg2 cooperative
once gevent has patched the worker, so store queries never block the event loop.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import structlog
from flask import Flask

from shared.gunicorn_app import serve
from shared.settings import Settings
from ws_gateway.app import create_app, disconnect_all, socketio_of, start_message_queue

#: How often a worker told to stop checks whether it should close its sockets.
SHUTDOWN_POLL_SECONDS = 0.25
#: Concurrent connections (sockets and requests) one gateway process accepts: 10,000 sockets,
#: with room beside them for health checks and the inbox REST.
WORKER_CONNECTIONS = 12_000

log = structlog.get_logger("ws_gateway.serve")


def make_database_cooperative(database_url: str) -> bool:
    """Under gevent, make psycopg2 yield to the event loop while it waits; whether it did."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):
        return False
    if not database_url.startswith(("postgresql", "postgres")):
        # SQLite calls are short local file access; they run inline.
        return False
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()
    return True


def gateway_factory(settings: Settings) -> Flask:
    """What each gunicorn worker runs after forking (and after gevent patched it)."""
    cooperative = make_database_cooperative(settings.database_url)
    app = create_app(settings)
    start_message_queue(app)
    log.info(
        "gateway.ready",
        bind=settings.gateway_bind,
        async_mode=socketio_of(app).async_mode,
        cooperative_store=cooperative,
    )
    return app


def close_sockets_on_shutdown(worker: Any) -> None:
    """gunicorn `post_worker_init`: once the worker is told to stop, close every socket.

    gunicorn's gevent worker waits for open connections up to the graceful timeout, and a
    browser socket never ends on its own; closing them lets the worker exit at once.
    """
    app: Flask = worker.wsgi
    socketio = socketio_of(app)

    def watch() -> None:
        while worker.alive:
            socketio.sleep(SHUTDOWN_POLL_SECONDS)
        open_sockets = sum(not s.closed for s in list(socketio.server.eio.sockets.values()))
        log.info("gateway.stopping", sockets=open_sockets)
        disconnect_all(app)

    socketio.start_background_task(watch)


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """The gunicorn configuration of a gateway process."""
    return {
        "bind": settings.gateway_bind,
        "worker_class": "gevent",
        "workers": 1,
        "worker_connections": WORKER_CONNECTIONS,
        # The gevent worker's heartbeat runs beside the sockets, so hour-long sockets are fine.
        "timeout": 30,
        "post_worker_init": close_sockets_on_shutdown,
    }


def serve_gateway(settings: Settings) -> None:
    """Serve the gateway on `settings.gateway_bind` until SIGTERM/SIGINT."""
    # gunicorn's master imports ssl (gunicorn.config, gunicorn.sock) before its gevent worker
    # patches, so every gevent worker warns. The gateway opens no TLS connection through a
    # module that kept a reference to the unpatched ssl (psycopg2's TLS is libpq's own).
    warnings.filterwarnings("ignore", message="Monkey-patching ssl after ssl has already")
    serve(lambda: gateway_factory(settings), **gunicorn_options(settings))
