"""The producer API's app factory."""

from __future__ import annotations

from flask import Flask

from producer_api import (
    dead_letters,
    endpoints,
    messages,
    policy,
    templates,
    tokens,
    topics,
    users,
)
from producer_api.auth import ApiKeyGate, install_api_key_auth
from producer_api.chunked_body import ChunkedBody
from producer_api.fanout import FanoutGuard, install_fanout_guard
from producer_api.fast_accept import FastAccept
from producer_api.openapi import ProblemResponses
from producer_api.outbound_urls import install_outbound_policy
from shared.flask_runtime import EXTENSION
from shared.health import health_blueprint
from shared.http_metrics import install_request_metrics
from shared.openapi import ProblemApi, docs_config, document_health
from shared.outbound import OutboundPolicy, Resolver, system_resolver
from shared.problems import install_problem_handlers
from shared.runtime import Runtime
from shared.settings import Settings
from shared.store_retry import retry_reads_once_on_disconnect

MAX_BODY_BYTES = 256 * 1024


def create_app(
    settings: Settings | None = None,
    runtime: Runtime | None = None,
    resolver: Resolver = system_resolver,
) -> Flask:
    """Build the API for `settings` (default: from the environment); `resolver` looks up the
    hosts of URLs it is given to call (tests pass one that needs no network)."""
    if runtime is None:
        runtime = Runtime.build(settings or Settings.from_env())
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        # Swagger UI from this package's own static folder.
        **docs_config("omnipush", swagger_ui_url="/static/swagger-ui/"),
    )
    app.extensions[EXTENSION] = runtime
    install_outbound_policy(app, OutboundPolicy(runtime.settings.outbound_allow, resolver))
    install_problem_handlers(app)
    install_request_metrics(app)  # first, so that requests refused by the gate are timed too
    gate = ApiKeyGate(runtime)
    install_api_key_auth(app, gate)
    fanout = FanoutGuard(runtime)
    install_fanout_guard(app, fanout)
    # Chunked bodies (no Content-Length) go to the Flask app, whose limits then apply to them.
    flask_app = ChunkedBody(app.wsgi_app, messages.BATCH_MAX_BYTES)
    app.wsgi_app = FastAccept(flask_app, app.json, runtime, gate, fanout, MAX_BODY_BYTES)  # type: ignore[method-assign]
    api = ProblemApi(app, spec_kwargs={"extra_plugins": [ProblemResponses()]})
    api.spec.components.security_scheme("apiKey", {"type": "http", "scheme": "bearer"})
    api.register_blueprint(messages.blp)
    api.register_blueprint(tokens.blp)
    api.register_blueprint(users.blp)
    api.register_blueprint(topics.blp)
    api.register_blueprint(templates.blp)
    api.register_blueprint(endpoints.blp)
    api.register_blueprint(dead_letters.blp)
    api.register_blueprint(policy.blp)
    app.register_blueprint(health_blueprint(("store", "broker", "redis")))
    document_health(app, api.spec)
    retry_reads_once_on_disconnect(app)
    return app
