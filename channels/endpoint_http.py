"""POST JSON to an app's endpoint through the outbound guard, and say how it went.

Webhooks and chat robots are URLs an app gave, so every request goes through the guard's
client (`shared.outbound.outbound_client`, one keep-alive pool per host) and is vetted at call
time. The HTTP answer maps onto the worker's outcomes: 2xx sent; 429 deferred until its
`Retry-After`; 408, 5xx, timeouts, connection errors and a host that does not resolve (DNS
may be down) transient; 410 and every other 4xx permanent (the receiver will not take it), as
is a URL the guard refuses. A robot that answers
200 with an error code of its own passes `judge_ok` to read the body.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import httpx

from channels.base import Outcome, Result
from shared.outbound import OutboundRefused, Unresolvable
from shared.retry_after import retry_after_seconds

#: How long to wait when a 429 gives no (readable) Retry-After.
DEFAULT_RETRY_AFTER_SECONDS = 5.0
MAX_DETAIL = 200


def classify(response: httpx.Response) -> Result:
    """The outcome of an endpoint's HTTP answer (see the module docstring)."""
    status = response.status_code
    if 200 <= status < 300:
        return Result.sent(f"HTTP {status}")
    reason = f"HTTP {status} {response.reason_phrase}".strip()
    if status == 429:
        return Result.deferred(
            reason,
            retry_after_seconds(response.headers.get("retry-after"), DEFAULT_RETRY_AFTER_SECONDS),
        )
    if status == 408 or status >= 500:
        return Result.transient(reason)
    return Result.permanent(reason)


def post_json(
    client: httpx.Client,
    url: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    judge_ok: Callable[[httpx.Response], Result] | None = None,
) -> Result:
    """POST `body` (JSON bytes) to `url` with `headers`; never raises."""
    try:
        response = client.post(
            url, content=body, headers={"Content-Type": "application/json", **(headers or {})}
        )
    except Unresolvable as unresolved:
        return Result.transient(str(unresolved)[:MAX_DETAIL])
    except OutboundRefused as refused:
        return Result.permanent(f"refused by the outbound guard: {str(refused)[:MAX_DETAIL]}")
    except httpx.TimeoutException as error:
        return Result.transient(f"timed out: {type(error).__name__}")
    except (httpx.HTTPError, OSError) as error:
        return Result.transient(f"connection failed: {type(error).__name__}")
    result = classify(response)
    if judge_ok is not None and result.outcome is Outcome.SENT:
        return judge_ok(response)
    return result
