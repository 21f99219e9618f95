"""A retrain run's directory and its log files: where a run writes, and reading its progress back."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any


def run_dir(runs_dir: Path, run_id: int) -> Path:
    return runs_dir / f"run-{run_id}"


def tail_lines(path: Path, n: int) -> list[str]:
    """The last ``n`` lines of a text file (empty when it does not exist)."""
    if n <= 0 or not path.is_file():
        return []
    with path.open("r", encoding="utf-8", errors="replace") as f:
        return [line.rstrip("\n") for line in deque(f, maxlen=n)]


def last_progress(path: Path) -> dict[str, Any] | None:
    for line in reversed(tail_lines(path, 20)):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        return {**event, "stage": event.get("phase")}
    return None
