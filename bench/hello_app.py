"""The baseline server of `bench.api`: a bare Flask app answering "hello", served by gunicorn
exactly as `omnipush serve api` serves the producer API.

The gunicorn options are not copied here: `omnipush.services.run_api` is called as it is, with
its `serve` swapped for one that serves this app instead, so the worker class, worker count,
threads, bind and `shared.gunicorn_app.serve` defaults are whatever the real API uses today.

    python -m bench.hello_app --bind 127.0.0.1:8090 --workers 2
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from unittest import mock

from flask import Flask

from omnipush import services
from shared.gunicorn_app import serve
from shared.logging import configure_logging
from shared.settings import Settings


def create_hello_app() -> Flask:
    app = Flask(__name__)

    @app.route("/", methods=["GET", "POST"])
    def hello() -> str:
        return "hello"

    return app


def serve_hello(bind: str, workers: int | None) -> None:
    """Serve the hello app with the gunicorn options `services.run_api` passes for the API."""

    def serve_instead(_api_factory: Any, **options: Any) -> None:
        serve(create_hello_app, **options)

    with mock.patch.object(services, "serve", serve_instead):
        services.run_api(Settings(api_bind=bind), workers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="127.0.0.1:8090")
    parser.add_argument("--workers", type=int, default=None, help="as `serve api --workers`")
    args = parser.parse_args()
    configure_logging("bench-hello")  # as `omnipush serve api` does before serving
    serve_hello(args.bind, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
