"""Where a benchmark's results go: printed, and kept in var/ to compare runs by."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RESULTS = Path("var")


def record(name: str, result: Mapping[str, Any]) -> None:
    """Print `result` as JSON and write it to var/bench-`name`.json."""
    RESULTS.mkdir(exist_ok=True)
    text = json.dumps(result, indent=2)
    (RESULTS / f"bench-{name}.json").write_text(text)
    print(text)
