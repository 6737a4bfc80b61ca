"""The gateway's OpenAPI document (`GET /openapi.json`, browsable at `GET /docs`).

It documents the browser inbox REST and the health endpoints. Every inbox operation is
authorized by a browser token (`Authorization: Bearer <JWT>`), and every error is
`application/problem+json` with the shared `Problem` schema (shared/openapi.py):
`InboxDocumentation` completes each operation's security and error responses as the spec is
built, as the API's `ProblemResponses` does for the API's own. Swagger UI is served from the
API's copy of swagger-ui-dist (producer_api/static/swagger-ui, committed by `make vendor`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apispec import APISpec, BasePlugin
from flask import Blueprint, Flask

import producer_api
from shared.openapi import ProblemApi, ProblemSchema, docs_config, problem_response

SECURITY_SCHEME = "browserToken"
SWAGGER_UI_URL = "/swagger-ui/"
SWAGGER_UI_DIR = Path(producer_api.__file__).resolve().parent / "static" / "swagger-ui"

#: The inbox's error responses, by status code: (component name, description, headers).
ERRORS: dict[int, tuple[str, str, dict[str, Any]]] = {
    400: ("BadRequest", "The body is not JSON.", {}),
    401: (
        "Unauthorized",
        "Missing, bad or expired browser token: send `Authorization: Bearer <JWT>`.",
        {
            "WWW-Authenticate": {
                "description": "Always `Bearer`.",
                "required": True,
                "schema": {"type": "string"},
            }
        },
    ),
    413: ("PayloadTooLarge", "The body is over the gateway's size limit.", {}),
    422: ("UnprocessableContent", "The request is not valid; `errors` names each field.", {}),
}


class InboxDocumentation(BasePlugin):
    """Gives every `/v1` operation the browser-token security and its problem+json errors:
    401 always, 422 (query or body not valid), and 400 and 413 when it takes a body."""

    def init_spec(self, spec: APISpec) -> None:
        spec.components.schema("Problem", schema=ProblemSchema)
        for name, description, headers in ERRORS.values():
            spec.components.response(name, problem_response(description, headers), lazy=True)

    def operation_helper(
        self, path: str | None = None, operations: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if not path or not path.startswith("/v1/") or not operations:
            return
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            operation["security"] = [{SECURITY_SCHEME: []}]
            wanted = {401, 422} | ({400, 413} if "requestBody" in operation else set())
            responses = {
                str(code): doc
                for code, doc in operation.get("responses", {}).items()
                if int(code) < 400  # flask-smorest's own error references are replaced
            }
            responses.update({str(status): ERRORS[status][0] for status in wanted})
            operation["responses"] = dict(sorted(responses.items()))


def install_openapi(app: Flask) -> ProblemApi:
    """Serve `/openapi.json` and `/docs` on `app`; blueprints registered on the returned Api
    are documented."""
    app.config.update(docs_config("omnipush gateway", swagger_ui_url=SWAGGER_UI_URL))
    api = ProblemApi(app, spec_kwargs={"extra_plugins": [InboxDocumentation()]})
    api.spec.components.security_scheme(
        SECURITY_SCHEME,
        {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A browser token from the API's `POST /v1/users/{user_id}/tokens`.",
        },
    )
    app.register_blueprint(
        Blueprint(
            "swagger_ui",
            __name__,
            static_folder=SWAGGER_UI_DIR,
            static_url_path=SWAGGER_UI_URL.rstrip("/"),
        )
    )
    return api
