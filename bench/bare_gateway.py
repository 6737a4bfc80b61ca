"""The baseline server of `bench.gateway`: a bare Flask-SocketIO app, served by gunicorn with the
options `omnipush serve gateway` uses (`ws_gateway.serve.gunicorn_options`).

It accepts every socket and, on `POST /fanout`, emits one `notification` (a payload shaped as
the gateway's) to each connected socket from a background task, answering 202 at once.

    python -m bench.bare_gateway --bind 127.0.0.1:8091
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from flask import Flask, request
from flask_socketio import SocketIO

from shared.gunicorn_app import serve
from shared.settings import Settings
from ws_gateway.app import detect_async_mode
from ws_gateway.serve import gunicorn_options


def notification(n: int) -> dict[str, Any]:
    return {
        "id": f"dlv_bare_{n}",
        "message_id": f"msg_bare_{n}",
        "title": "fan-out",
        "body": None,
        "url": None,
        "data": None,
        "category": "notification",
        "created_at": "2026-01-01T00:00:00+00:00",
        "position": f"1-{n}",
    }


def create_bare_app() -> Flask:
    app = Flask(__name__)
    socketio = SocketIO(
        app,
        async_mode=detect_async_mode(),
        cors_allowed_origins="*",
        logger=False,
        engineio_logger=False,
    )
    connected: set[str] = set()

    def on_connect(_auth: Any = None) -> None:
        connected.add(request.sid)  # type: ignore[attr-defined]

    def on_disconnect(*_reason: Any) -> None:
        connected.discard(request.sid)  # type: ignore[attr-defined]

    socketio.on_event("connect", on_connect)
    socketio.on_event("disconnect", on_disconnect)

    def fan_out() -> None:
        for n, sid in enumerate(list(connected)):
            socketio.emit("notification", notification(n), to=sid)

    @app.post("/fanout")
    def fanout() -> tuple[str, int]:
        socketio.start_background_task(fan_out)
        return "", 202

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="127.0.0.1:8091")
    args = parser.parse_args()
    serve(create_bare_app, **gunicorn_options(Settings(gateway_bind=args.bind)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
