"""The live status page in a real browser: headless Chromium against a real `tunnel-lb run`.

Two `tunnel-lb connector` processes stand in for the tunnels of pools eu and us.  After
traffic, the eu tunnel is killed; once ``/status`` has it unhealthy, Chromium loads ``/``,
runs the page's script (which fetches ``/status`` and builds the tables), and the test reads
the rendered DOM: the eu endpoint is shown unhealthy with the reason of its transition, the
traffic share is there, and the endpoint's hostile name (``<img onerror=...>``, names come
from files) is text, not markup.  It also takes the screenshot used by ``docs/metrics.md``
(``docs/status-page.png``, refreshed when ``TUNNEL_LB_UPDATE_DOCS=1``).

Chromium comes from ``scripts/install-chromium`` (Debian's ``chromium``); without it the test
is skipped with that reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from stack_support import (
    EU,
    LB,
    US,
    connector_config,
    processes,
    start_connector_process,
    start_lb_process,
    tunnel_certs,
    two_tunnel_config,
    until_url,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

DOCS = Path(__file__).resolve().parents[2] / "docs"
HOSTILE = 'tunnel-eu <img src=x onerror="document.title=1">'
"""The eu endpoint's name: markup that would run if the page used innerHTML."""


@pytest.fixture
def chromium() -> str:
    """The browser's path; skips (with the reason) when it is not installed.  A sync fixture:
    a skip raised inside a trio test loses its reason."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed: run scripts/install-chromium (Debian: chromium)")
    return path


async def browse(browser: str, url: str, profile: Path, *extra: str) -> str:
    """Run headless Chromium on ``url`` long enough for the page's first fetch; its stdout."""
    args = [
        browser,
        "--headless",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",  # let the page fetch /status and render
        "--window-size=1280,800",
        *extra,
        url,
    ]
    with trio.fail_after(90):
        done = await trio.run_process(args, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


class Rows(HTMLParser):
    """The rendered endpoint rows: ``data-endpoint`` -> (attributes, text of each cell)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, tuple[dict[str, str], list[str]]] = {}
        self.title = ""
        self.tags: list[str] = []
        self._row: str | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        found = {k: v or "" for k, v in attrs}
        if tag == "tr" and "data-endpoint" in found:
            self._row = found["data-endpoint"]
            self.rows[self._row] = (found, [])
        elif tag == "td" and self._row is not None:
            self.rows[self._row][1].append("")
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._row is not None and self.rows[self._row][1]:
            self.rows[self._row][1][-1] += data


async def test_status_page_shows_a_failover_in_chromium(tmp_path: Path, chromium: str) -> None:
    browser = chromium
    cert, ca_file = tunnel_certs(tmp_path)
    config = tmp_path / "lb.json"
    log = tmp_path / "processes.log"
    eu_key = f"eu/{HOSTILE}"

    async with processes() as nursery, httpx.AsyncClient(timeout=5) as client:
        tunnels, ports = {}, {}
        for uuid, dc in ((EU, "FRA"), (US, "IAD")):
            path = tmp_path / f"{dc}.json"
            path.write_text(connector_config(uuid, dc, 0, cert))
            tunnels[uuid], ports[uuid] = await start_connector_process(nursery, path, uuid, log=log)
        document = json.loads(two_tunnel_config(ports, ca_file))
        document["pools"][0]["origins"][0]["name"] = HOSTILE
        config.write_text(json.dumps(document))
        lb, ready = await start_lb_process(nursery, config, log=log)
        base, admin_base = f"http://127.0.0.1:{ready.listen[0]}", f"http://127.0.0.1:{ready.admin}"
        await until_url(client, f"{admin_base}/readyz", lambda r: r.status_code == 200)
        for _ in range(12):  # eu first
            assert (await client.get(f"{base}/", headers={"Host": LB})).status_code == 200
        tunnels[EU].kill()
        for _ in range(4):  # retried into us at once
            assert (await client.get(f"{base}/", headers={"Host": LB})).status_code == 200

        def eu_down(r: httpx.Response) -> dict[str, Any] | None:
            endpoints = r.json()["activity"]["endpoints"]
            last = endpoints.get(eu_key, {}).get("last_transition")
            return last if last and last["after"] == "unhealthy" else None

        transition = await until_url(client, f"{admin_base}/status", eu_down)

        page = await browse(browser, f"{admin_base}/", tmp_path / "profile", "--dump-dom")
        parsed = Rows()
        parsed.feed(page)
        assert set(parsed.rows) == {eu_key, "us/tunnel-us"}, page[-3000:]
        attrs, cells = parsed.rows[eu_key]
        name, _address, health, change, share, requests, _in_flight = cells
        assert attrs["data-health"] == "unhealthy"
        assert health == "unhealthy"
        assert name == HOSTILE  # shown as text ...
        assert "img" not in parsed.tags  # ... never parsed as markup
        assert parsed.title == "tunnel-lb status"  # and its onerror never ran
        assert transition["reason"] and change.startswith(transition["reason"]), change
        assert share.strip().endswith("%")
        assert int(requests) == 12
        attrs, cells = parsed.rows["us/tunnel-us"]
        assert attrs["data-health"] == "healthy"
        assert int(cells[5]) >= 4

        # The screenshot for the docs (docs/metrics.md shows it): taken on every run, copied
        # into docs/ only when asked (TUNNEL_LB_UPDATE_DOCS=1), so a test run leaves the
        # work tree as it found it.
        shot = tmp_path / "status-page.png"
        await browse(browser, f"{admin_base}/", tmp_path / "profile", f"--screenshot={shot}")
        assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        if os.environ.get("TUNNEL_LB_UPDATE_DOCS"):
            os.replace(shutil.copy(shot, DOCS / "status-page.png.tmp"), DOCS / "status-page.png")
        print(f"status page screenshot: {shot}")

        lb.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await lb.wait() == 0, log.read_text()[-3000:]
