"""The benchmark's load generator: POST /v1/messages from a process of its own.

It runs apart from the Socket.IO receivers so that neither holds the other's GIL, and it uses
one keep-alive `http.client` connection per thread, the cheapest client the standard library
has, so that as much of the machine as possible is left to omnipush itself.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import uuid
from urllib.parse import urlsplit


def post_messages(
    api_url: str,
    api_key: str,
    recipients: list[list[str]],
    rate: float | None,
    threads: int = 8,
) -> tuple[int, list[tuple[str, float]]]:
    """POST one message per entry of `recipients` (each a list of user ids), paced at `rate`
    per second or as fast as the API takes them; returns this process's pid and, per message,
    its id and the monotonic time the request was sent."""
    address = urlsplit(api_url)
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    results: list[tuple[str, float]] = []
    lock = threading.Lock()
    next_index = iter(range(len(recipients)))
    started = time.monotonic()
    # Every call's contents differ from every other's: the dispatcher would deduplicate a
    # message whose content a recipient got minutes before (a warm-up's, say).
    run = uuid.uuid4().hex[:8]

    def worker() -> None:
        connection = http.client.HTTPConnection(
            address.hostname or "127.0.0.1", address.port, timeout=30
        )
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                break
            if rate is not None:
                delay = started + index / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the generator, not waiting for a result
            body = json.dumps(
                {
                    "to": [{"user_id": user} for user in recipients[index]],
                    "channels": ["web"],
                    "content": {"title": f"bench {run} {index}"},
                }
            )
            sent_at = time.monotonic()
            connection.request("POST", "/v1/messages", body, headers)
            response = connection.getresponse()
            payload = response.read()
            if response.status != 202:
                raise RuntimeError(f"POST answered {response.status}: {payload[:200]!r}")
            with lock:
                results.append((json.loads(payload)["id"], sent_at))
        connection.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return os.getpid(), results
