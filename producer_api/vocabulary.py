"""The words and bounds of a message, shared by its schema and its quick check."""

from __future__ import annotations

CATEGORIES = ("notification", "marketing", "verification")
PRIORITIES = ("high", "normal", "low")
MAX_RECIPIENTS = 1000
