"""docs/metrics.md states the Content-Type that /metrics really sends (lb/admin.py sends
prometheus_client's CONTENT_TYPE_LATEST; a prometheus_client upgrade can change it)."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def test_the_documented_metrics_content_type_is_the_one_sent() -> None:
    (row,) = [line for line in DOC.read_text().splitlines() if line.startswith("| `GET /metrics`")]
    match = re.search(r"`Content-Type: ([^`]+)`", row)
    assert match is not None, row
    assert match.group(1) == CONTENT_TYPE_LATEST
