"""The words and bounds of a message, shared by its schema and its quick check."""

from __future__ import annotations

from shared.amqp.topology import LANES

CATEGORIES = ("notification", "marketing", "verification")
#: Each priority travels in a lane of its own between the relay and the channel workers.
PRIORITIES = LANES
MAX_RECIPIENTS = 1000
