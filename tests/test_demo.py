"""The README's first command works: the demo starts, serves through a tunnel, and stops."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_demo_serves_through_a_tunnel_stand_in_and_stops() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lb", "demo", "--duration", "15"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tunnel-lb demo is running." in done.stdout
    assert "curl -s -H 'Host: app.localhost' http://127.0.0.1:8080/" in done.stdout
    # Failover order: pool eu (tunnel 6ff42ae2..., FRA) serves while healthy.
    assert "self-test, 10 requests: {'200 6ff42ae2-765d-4adf-8112-31c55c1551ef (FRA)': 10}" in (
        done.stdout
    )
