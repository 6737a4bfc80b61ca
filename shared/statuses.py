"""The message and delivery statuses of the contract, and which of them are final."""

from __future__ import annotations

MESSAGE_STATUSES = (
    "accepted",
    "scheduled",
    "queued",
    "dispatched",
    "completed",
    "failed",
    "partially_failed",
    "canceled",
    "expired",
)

DELIVERY_STATUSES = (
    "pending",
    "queued",
    "sending",
    "retrying",
    "sent",
    "delivered",
    "read",
    "failed",
    "suppressed",
    "deferred",
    "deduplicated",
    "throttled",
    "expired",
    "canceled",
)

#: Deliveries that reached their recipient.
DELIVERY_SUCCEEDED = frozenset({"sent", "delivered", "read"})
#: Deliveries a channel worker will not attempt again.
DELIVERY_FINAL = DELIVERY_SUCCEEDED | {
    "failed",
    "suppressed",
    "deduplicated",
    "throttled",
    "expired",
    "canceled",
}
#: Deliveries a channel worker may (re)claim.
DELIVERY_CLAIMABLE = frozenset({"pending", "queued", "retrying", "sending"})


def message_outcome(delivery_statuses: list[str]) -> str | None:
    """The final status of a message whose deliveries are all final, else None."""
    if not delivery_statuses or any(s not in DELIVERY_FINAL for s in delivery_statuses):
        return None
    succeeded = sum(s in DELIVERY_SUCCEEDED for s in delivery_statuses)
    if succeeded == len(delivery_statuses):
        return "completed"
    return "partially_failed" if succeeded else "failed"
