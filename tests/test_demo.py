"""The README's first command works: the demo starts, serves through a tunnel, and stops."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
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


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_demo_stops_on_a_signal_with_its_stand_ins(signum: signal.Signals) -> None:
    """Without --duration the demo runs until signalled; then it drains, stops the tunnel
    stand-ins it started and exits 0 (the signal goes to the demo's pid alone)."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "lb", "demo"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # cleanup below can kill the stand-ins too
    )
    banner: list[str] = []
    reader: threading.Thread | None = None
    try:
        assert demo.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        stdout = demo.stdout
        reader = threading.Thread(target=lambda: [lines.put(x) for x in stdout], daemon=True)
        reader.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and demo.poll() is None:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            banner.append(line)
            if "  stop: " in line:
                break
        assert any("tunnel-lb demo is running." in line for line in banner), banner
        pids = [int(m) for m in re.findall(r": pid (\d+)", "".join(banner))]
        assert len(pids) == 2, banner
        assert all(alive(pid) for pid in pids)
        demo.send_signal(signum)
        assert demo.wait(timeout=10) == 0
        # The stand-ins were terminated and waited for by the demo before it exited.
        assert not [pid for pid in pids if alive(pid)]
    finally:
        if demo.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(demo.pid, signal.SIGKILL)  # the demo and its stand-ins
            demo.wait(timeout=10)
        if reader is not None:
            reader.join(timeout=5)  # EOF once the demo and the stand-ins are gone
        if demo.stdout is not None and (reader is None or not reader.is_alive()):
            demo.stdout.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
