"""The consumer runtime every queue worker builds on.

A subclass says how to handle a batch of messages; the base class owns the connection, the
prefetch, batching, error handling and a graceful stop: on SIGTERM it stops taking new messages,
finishes the ones it holds, and exits. A handler acks each message only after its work and its
records are durable. A batch that fails because the store or Redis is unreachable is kept and
retried with back-off until they are back; one that fails otherwise is requeued, and a message
that keeps failing ends in the dead queue through the queue's delivery limit. Nothing is lost.
"""

from __future__ import annotations

import queue
import threading
import time
from abc import ABC, abstractmethod

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError

from shared.amqp.link import AmqpLink, Inbound
from shared.linger import Linger
from shared.stop_signals import stop_on_signals

log = structlog.get_logger(__name__)

#: Failures of what a handler depends on (store, Redis, sockets), not of the message itself.
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
)
MAX_RETRY_PAUSE_SECONDS = 30.0


class BatchConsumer(ABC):
    """Consumes its link's queues (the lanes of one kind of work, higher lanes first) in
    batches on the calling thread; see the module docstring."""

    batch_size = 200
    batch_wait_seconds = 0.005
    error_pause_seconds = 1.0

    def __init__(self, link: AmqpLink) -> None:
        self.link = link
        self._stopping = threading.Event()
        self._linger = Linger(self.batch_wait_seconds)

    @abstractmethod
    def handle_batch(self, batch: list[Inbound]) -> None:
        """Do the work of `batch` and ack (or nack) every message in it."""

    def finish(self) -> None:  # noqa: B027 - optional hook, most consumers settle as they go
        """Called once the last batch is handled, before the link closes."""

    def stop(self) -> None:
        """Stop taking new messages; `run` returns once those already taken are handled."""
        if not self._stopping.is_set():
            self._stopping.set()
            self.link.stop_consuming()

    def install_signal_handlers(self) -> None:
        stop_on_signals(self.stop, "consumer.stopping")

    def run(self) -> None:
        """Consume until stopped, then drain what was already delivered and close."""
        self.link.start()
        while True:
            stopping = self._stopping.is_set()
            if stopping and self.link.consumer_stopped.is_set() and self.link.inbox.empty():
                break
            batch = self._next_batch(timeout=0.2)
            if batch:
                self._handle_safely(batch)
                self._linger.worked()
        self.finish()
        self.link.close()
        log.info("consumer.stopped")

    def _next_batch(self, timeout: float) -> list[Inbound]:
        try:
            first = self.link.inbox.get(timeout=timeout)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self._linger.wait_seconds()
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self.link.inbox.get(timeout=remaining)
                    if remaining > 0
                    else self.link.inbox.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    def _handle_safely(self, batch: list[Inbound]) -> None:
        backoff = self.error_pause_seconds
        down_since: float | None = None
        while True:
            try:
                self.handle_batch(batch)
                if down_since is not None:
                    log.info(
                        "consumer.dependency_back",
                        down_s=round(time.monotonic() - down_since, 1),
                    )
                return
            except DEPENDENCY_ERRORS as error:
                # The store or Redis is away: keep the batch (unacked, so nothing is lost and its
                # delivery count does not grow, and no more is taken meanwhile) and try again
                # until it is back or we stop. Said once when it begins, once when it ends.
                if self._stopping.is_set():
                    self._requeue(batch)
                    return
                detail = f"{type(error).__name__}: {error}".splitlines()[0]
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("consumer.dependency_unavailable", detail=detail, size=len(batch))
                else:
                    log.debug("consumer.still_unavailable", detail=detail, retry_in_s=backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_RETRY_PAUSE_SECONDS)
            except Exception:
                log.exception("consumer.batch_failed", size=len(batch))
                self._requeue(batch)
                self._stopping.wait(self.error_pause_seconds)
                return

    def _requeue(self, batch: list[Inbound]) -> None:
        # A message that keeps failing reaches the queue's delivery limit and is dead-lettered.
        for message in batch:
            self.link.nack(message, requeue=True)
