"""The URLs a request asks omnipush to call later, held to the outbound guard when they arrive.

A message's `callback_url`, an app endpoint's `url` and a Web Push device's
`subscription.endpoint` pass their schema first (a well-formed http(s) URL); here they must
also lead to an address omnipush may call (see `shared.outbound`): otherwise the request is a
422 naming the field. The check resolves
hosts, so it runs before any store transaction opens, and each host is resolved once a request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flask import Flask, current_app

from shared.outbound import OutboundPolicy, OutboundRefused

EXTENSION = "omnipush.outbound"


def install_outbound_policy(app: Flask, policy: OutboundPolicy) -> None:
    app.extensions[EXTENSION] = policy


def outbound_policy() -> OutboundPolicy:
    """The current app's policy, remembering what it resolves for the rest of the request."""
    policy: OutboundPolicy = current_app.extensions[EXTENSION]
    return policy.remembering()


def _refusal(policy: OutboundPolicy, url: str | None) -> list[str]:
    if url is None:
        return []
    try:
        policy.check_url(url)
    except OutboundRefused as refused:
        return [str(refused)]
    return []


def url_errors(policy: OutboundPolicy, urls: Mapping[str, str | None]) -> dict[str, list[str]]:
    """The field errors of URLs by their field's name (empty when all may be called)."""
    return {name: refused for name, url in urls.items() if (refused := _refusal(policy, url))}


def callback_errors(policy: OutboundPolicy, message: dict[str, Any]) -> dict[str, list[str]]:
    """The field errors of a loaded message's `callback_url` (empty when it may be called)."""
    return url_errors(policy, {"callback_url": message.get("callback_url")})


def endpoint_errors(
    policy: OutboundPolicy, devices: Sequence[dict[str, Any]]
) -> dict[str, list[str]]:
    """The field errors of loaded devices' Web Push endpoints (empty when all may be called)."""
    errors: dict[str, list[str]] = {}
    for index, device in enumerate(devices):
        subscription = device.get("subscription") or {}
        refused = _refusal(policy, subscription.get("endpoint"))
        if refused:
            errors[f"devices.{index}.subscription.endpoint"] = refused
    return errors
