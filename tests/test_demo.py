"""The README's first command works: the demo starts, serves through a tunnel, and stops.

Signals at every moment of the demo's start-up are in tests/test_lifecycle.py.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import trio
import yaml
from stack_support import until_url

from lb.config.loader import load_config
from lb.demo import _stand_in, _tunnels

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def busy_socket() -> socket.socket:
    """A listening socket on a port the kernel picked."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.integration
def test_demo_serves_through_a_tunnel_stand_in_on_free_ports_and_stops(tmp_path: Path) -> None:
    """Its configured ports are taken (by this test): the demo picks free ones, says which,
    serves through the first pool's tunnel and stops on SIGTERM with exit status 0."""
    with busy_socket() as proxy_taken, busy_socket() as admin_taken:
        taken = {proxy_taken.getsockname()[1], admin_taken.getsockname()[1]}
        doc = yaml.safe_load(QUICKSTART.read_text())
        doc["engine"]["listen"] = [{"address": "127.0.0.1", "port": min(taken)}]
        doc["engine"]["admin"] = f"127.0.0.1:{max(taken)}"
        # Probed sooner than every 10 s: the first round is spread over one interval.
        doc["engine"]["minimum_interval"] = 1
        doc["monitors"][0]["interval"] = 1
        config = tmp_path / "quickstart.yaml"
        config.write_text(yaml.safe_dump(doc))
        demo = subprocess.Popen(
            [sys.executable, "-m", "lb", "demo", str(config), "--duration", "60"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        out: list[str] = []
        assert demo.stdout is not None
        stdout = demo.stdout
        reader = threading.Thread(target=lambda: [lines.put(x) for x in stdout], daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline and demo.poll() is None:
                with contextlib.suppress(queue.Empty):
                    out.append(lines.get(timeout=0.5))
                    if out[-1].startswith("self-test"):
                        break
            text = "".join(out)
            assert "tunnel-lb demo is running." in text, text
            assert not re.search(r"\bR\d{1,2}\b", text), "an internal rule number in the banner"
            # Failover order: pool eu (tunnel 6ff42ae2..., FRA) serves while healthy.
            assert (
                "self-test, 10 requests: {'200 6ff42ae2-765d-4adf-8112-31c55c1551ef (FRA)': 10}"
                in text
            ), text
            match = re.search(r"curl -s -H 'Host: app.localhost' http://127\.0\.0\.1:(\d+)/", text)
            assert match, text
            admin = re.search(r"status   curl -s http://127\.0\.0\.1:(\d+)/status", text)
            assert admin, text
            assert int(match[1]) not in taken
            assert int(admin[1]) not in taken
            ports = sorted(taken)
            said = f"(127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]} in use: it listens on free ports"
            assert said in text, text
            # SIGHUP re-reads the file and keeps the demo's ports: it still serves through
            # the stand-in (whose port is not the one in the file).
            demo.send_signal(signal.SIGHUP)
            assert trio.run(reloaded_and_serving, int(admin[1]), int(match[1])) == (200, "FRA")
            demo.send_signal(signal.SIGTERM)
            assert demo.wait(timeout=30) == 0
            assert demo.stderr is not None
            assert "Traceback" not in demo.stderr.read()
        finally:
            if demo.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(demo.pid, signal.SIGKILL)  # the demo and its stand-ins
                demo.wait(timeout=10)
            reader.join(timeout=5)
            for stream in (demo.stdout, demo.stderr):
                if stream is not None:
                    stream.close()


@pytest.mark.integration
async def test_a_stand_in_that_cannot_start_is_an_error_not_running(
    tmp_path: Path, nursery: trio.Nursery, capfd: pytest.CaptureFixture[str]
) -> None:
    """The demo waits for each stand-in to say where it listens; one that exits instead is
    reported, and the demo does not go on as if it ran."""
    config = load_config([QUICKSTART]).config
    tunnel = _tunnels(config)[0]
    broken = tmp_path / "connector.json"
    broken.write_text('{"tunnel": "not-a-uuid", "ingress": []}')
    with trio.fail_after(60):
        assert await _stand_in(nursery, tunnel, broken) is None
    err = capfd.readouterr().err
    assert f"error: tunnel stand-in {tunnel.name} could not start (exit status 2)" in err


async def reloaded_and_serving(admin: int, proxy: int) -> tuple[int, str]:
    """Wait (bounded) for the first reload on /status, then send one request."""
    async with httpx.AsyncClient(timeout=5) as client:
        status = f"http://127.0.0.1:{admin}/status"
        await until_url(client, status, lambda r: r.json()["generation"] >= 1, seconds=30)
        answer = await client.get(f"http://127.0.0.1:{proxy}/", headers={"Host": "app.localhost"})
        return answer.status_code, answer.json()["datacenter"]
