"""The gateway's app factory: Flask plus Flask-SocketIO over the shared Redis message queue.

`create_app` builds everything from explicit dependencies and starts nothing: no connection,
thread or greenlet exists until the app serves. The code uses no async library directly;
Socket.IO picks its async mode from the process (gevent when gevent has monkey-patched it, as
gunicorn's gevent worker does, threading otherwise) and its helpers do the rest.
"""

from __future__ import annotations

import sys

from flask import Flask
from flask_socketio import SocketIO

from shared.flask_runtime import EXTENSION
from shared.health import health_blueprint
from shared.http_metrics import install_request_metrics
from shared.notifications import socketio_channel
from shared.openapi import document_health
from shared.problems import install_problem_handlers
from shared.runtime import Runtime
from shared.settings import Settings
from ws_gateway import demo, rest
from ws_gateway.feed import LiveFeed, SentIds
from ws_gateway.openapi import install_openapi
from ws_gateway.slow_consumers import SlowConsumers
from ws_gateway.sockets import ConnectAwareRedisManager, InboxSockets
from ws_gateway.uncompressed import without_compression

#: Where the app keeps its `LiveFeed` (`app.extensions`).
LIVE_FEED = "omnipush.live_feed"
#: Where the app keeps its `InboxSockets` (`app.extensions`).
INBOX_SOCKETS = "omnipush.inbox_sockets"
#: Where the app keeps its `SlowConsumers` (`app.extensions`).
SLOW_CONSUMERS = "omnipush.slow_consumers"
#: Largest REST body (1000 ids fit in about 45 KiB).
MAX_BODY_BYTES = 128 * 1024
#: Largest Socket.IO message a browser may send.
MAX_SOCKET_MESSAGE_BYTES = 128 * 1024


def detect_async_mode() -> str:
    """`gevent` when gevent has monkey-patched this process, else `threading`.

    python-engineio's own detection picks gevent whenever it is importable, and its Redis
    manager then refuses to run in a process whose sockets are not patched (tests, scripts).
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("socket"):
        return "gevent"
    return "threading"


def create_app(
    settings: Settings | None = None,
    runtime: Runtime | None = None,
    *,
    async_mode: str | None = None,
) -> Flask:
    """Build the gateway for `runtime` (default: one built from `settings` or the environment)."""
    if runtime is None:
        runtime = Runtime.build(settings or Settings.from_env())
    settings = runtime.settings
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES)
    app.extensions[EXTENSION] = runtime
    install_problem_handlers(app)
    install_request_metrics(app)

    socketio = SocketIO()
    manager = ConnectAwareRedisManager(
        settings.redis_url, channel=socketio_channel(settings.queue_prefix)
    )
    sent = SentIds()
    slow_consumers = SlowConsumers(socketio)
    sockets = InboxSockets(socketio, runtime, sent, slow_consumers)
    sockets.register(manager)
    app.extensions[INBOX_SOCKETS] = sockets
    app.extensions[LIVE_FEED] = LiveFeed(socketio, runtime, sent, slow_consumers)
    app.extensions[SLOW_CONSUMERS] = slow_consumers
    socketio.init_app(
        app,
        async_mode=async_mode or detect_async_mode(),
        client_manager=manager,
        # A token in the handshake, never a cookie, authorizes a socket: any origin may connect.
        cors_allowed_origins="*",
        manage_session=False,
        max_http_buffer_size=MAX_SOCKET_MESSAGE_BYTES,
        logger=False,
        engineio_logger=False,
    )
    # Outside Socket.IO's middleware, so that Engine.IO's websockets get the wrapped sockets
    # and handshakes without an offer of compression.
    app.wsgi_app = without_compression(  # type: ignore[method-assign,assignment]
        slow_consumers.patient_sockets(app.wsgi_app)
    )

    api = install_openapi(app)
    api.register_blueprint(rest.blp)
    app.register_blueprint(health_blueprint(("store", "redis")))
    document_health(app, api.spec)
    app.register_blueprint(demo.blp)
    return app


def socketio_of(app: Flask) -> SocketIO:
    """The `SocketIO` bound to a gateway app."""
    socketio: SocketIO = app.extensions["socketio"]
    return socketio


def disconnect_all(app: Flask) -> None:
    """Close every client's transport, as a stopping process does; browsers reconnect elsewhere.

    This is an Engine.IO close, not a Socket.IO DISCONNECT, so clients reconnect by themselves.
    """
    socketio_of(app).server.eio.disconnect()


def start_message_queue(app: Flask) -> None:
    """Read the live feed, watch for expired tokens, overdue deliveries and sockets that stopped
    reading, and subscribe to the Socket.IO message queue now instead of at the first connection
    (python-socketio's default), so that a served gateway misses nothing published for a
    socket already connected."""
    live_feed: LiveFeed = app.extensions[LIVE_FEED]
    live_feed.start()
    slow_consumers: SlowConsumers = app.extensions[SLOW_CONSUMERS]
    socketio = socketio_of(app)
    socketio.start_background_task(slow_consumers.run)
    sockets: InboxSockets = app.extensions[INBOX_SOCKETS]
    socketio.start_background_task(sockets.expiry.run)
    socketio.start_background_task(sockets.overdue.run)
    server = socketio.server
    if not server.manager_initialized:
        server.manager_initialized = True
        server.manager.initialize()
