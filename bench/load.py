"""The benchmark's load generator: POSTs from a process of its own.

It runs apart from the Socket.IO receivers so that neither holds the other's GIL, and it uses
one keep-alive `http.client` connection per thread, the cheapest client the standard library
has, so that as much of the machine as possible is left to the server it loads.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

#: One request on a thread's connection: (connection, index of the request).
Request = Callable[[http.client.HTTPConnection, int], None]


def _paced(url: str, count: int, rate: float | None, threads: int, request: Request) -> None:
    """Make `count` requests to `url`'s server from `threads` threads, paced at `rate` per
    second or as fast as the server answers."""
    address = urlsplit(url)
    lock = threading.Lock()
    next_index = iter(range(count))
    started = time.monotonic()

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
            request(connection, index)
        connection.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


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
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    results: list[tuple[str, float]] = []
    lock = threading.Lock()
    # Every call's contents differ from every other's: the dispatcher would deduplicate a
    # message whose content a recipient got minutes before (a warm-up's, say).
    run = uuid.uuid4().hex[:8]

    def post(connection: http.client.HTTPConnection, index: int) -> None:
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

    _paced(api_url, len(recipients), rate, threads, post)
    return os.getpid(), results


def post_hello(url: str, count: int, rate: float, threads: int = 8) -> int:
    """POST a small JSON body `count` times to `url` (bare hello), paced at `rate` per second
    as `post_messages` paces messages; returns this process's pid."""
    path = urlsplit(url).path or "/"
    headers = {"Content-Type": "application/json"}

    def post(connection: http.client.HTTPConnection, index: int) -> None:
        connection.request("POST", path, json.dumps({"n": index}), headers)
        response = connection.getresponse()
        payload = response.read()
        if response.status >= 300:
            raise RuntimeError(f"POST answered {response.status}: {payload[:200]!r}")

    _paced(url, count, rate, threads, post)
    return os.getpid()
