"""`/v1/users/{user_id}/tokens`: short-lived browser tokens for the gateway."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from producer_api.auth import current_app_id
from producer_api.schemas import TokenRequestSchema, TokenSchema
from shared.blueprint import Blueprint, fail
from shared.flask_runtime import runtime_of
from shared.tokens import mint_browser_token

blp = Blueprint("tokens", __name__, url_prefix="/v1/users", description="Browser tokens")


@blp.route("/<string:user_id>/tokens")
class Tokens(MethodView):
    @blp.arguments(TokenRequestSchema(), required=False)
    @blp.response(201, TokenSchema())
    def post(self, body: dict[str, Any], user_id: str) -> dict[str, Any]:
        """Mint a token that lets one browser read this user's inbox."""
        settings = runtime_of().settings
        if not 1 <= len(user_id) <= 200:
            fail(422, "user_id must be 1 to 200 characters.")
        ttl = body.get("ttl") or settings.browser_token_ttl
        if ttl > settings.max_browser_token_ttl:
            fail(
                422,
                f"ttl may be at most {settings.max_browser_token_ttl} seconds.",
                errors={"ttl": [f"Must be at most {settings.max_browser_token_ttl}."]},
            )
        token, expires_at = mint_browser_token(settings.secret_key, current_app_id(), user_id, ttl)
        return {"token": token, "expires_at": expires_at}
