"""Which delivery statuses of the contract are final, and what they make of their message."""

from __future__ import annotations

from collections.abc import Iterable

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
#: Deliveries the policy stages withheld on purpose: the message did what it should.
DELIVERY_WITHHELD = frozenset({"suppressed", "deduplicated", "throttled"})
#: Deliveries waiting for a channel worker (one in `sending` past its claim may be retaken; a
#: `deferred` one waits for the end of quiet hours first).
DELIVERY_WAITING = ("pending", "queued", "retrying")


def message_outcome(delivery_statuses: list[str]) -> str | None:
    """The final status of a message whose deliveries are all final, else None. A delivery
    withheld by policy (a preference, a dedup window, a frequency cap) counts for neither
    side: `completed` when all the others reached their recipient (or there are none),
    `partially_failed` when some did, else `expired` or `canceled` when all of them were, and
    `failed` otherwise."""
    if not delivery_statuses or any(s not in DELIVERY_FINAL for s in delivery_statuses):
        return None
    # What the stages withheld on purpose neither succeeded nor failed.
    counted = [s for s in delivery_statuses if s not in DELIVERY_WITHHELD]
    succeeded = sum(s in DELIVERY_SUCCEEDED for s in counted)
    if succeeded == len(counted):
        return "completed"
    if succeeded:
        return "partially_failed"
    for unanimous in ("expired", "canceled"):
        if all(s == unanimous for s in counted):
            return unanimous
    return "failed"


def standing(deliveries: Iterable[tuple[str, str, str | None]]) -> list[str]:
    """The statuses that make a message's outcome, of its (id, status, fallback_of) rows: a
    delivery that a fallback delivery replaced gives way to it, unless the policy withheld
    that one (then the failure it was to make up for stands)."""
    rows = list(deliveries)
    replaced = {
        fallback_of
        for _id, status, fallback_of in rows
        if fallback_of is not None and status not in DELIVERY_WITHHELD
    }
    return [status for delivery_id, status, _of in rows if delivery_id not in replaced]
