"""Which delivery statuses of the contract are final, and what they make of their message."""

from __future__ import annotations

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
#: Deliveries waiting for a channel worker (one in `sending` past its claim may be retaken).
DELIVERY_WAITING = ("pending", "queued", "retrying")


def message_outcome(delivery_statuses: list[str]) -> str | None:
    """The final status of a message whose deliveries are all final, else None."""
    if not delivery_statuses or any(s not in DELIVERY_FINAL for s in delivery_statuses):
        return None
    succeeded = sum(s in DELIVERY_SUCCEEDED for s in delivery_statuses)
    if succeeded == len(delivery_statuses):
        return "completed"
    if succeeded:
        return "partially_failed"
    return "expired" if all(s == "expired" for s in delivery_statuses) else "failed"
