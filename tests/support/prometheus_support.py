"""A real Prometheus for end-to-end tests: start it on loopback, query it until it answers.

Needs the Debian package ``prometheus`` (``prometheus`` and ``promtool`` on PATH);
``scripts/install-prometheus`` installs it and ``scripts/test`` runs that first.

Prometheus listens on port 0 and logs the address it got (``msg="Listening on"
address=127.0.0.1:PORT``, at level info): the port is read from there, never picked first
(another process could take a picked port before Prometheus binds it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from waiting import wait_until

Series = list[dict[str, Any]]
"""``data.result`` of a Prometheus instant query: ``[{"metric": {...}, "value": [t, "v"]}]``."""

SCRAPE_DEADLINE = 30.0
"""Seconds Prometheus gets to start, scrape and answer; it usually takes about two."""


def tool(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``, or a failure saying how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name!r} is not on PATH: run scripts/install-prometheus "
            "(installs the Debian package prometheus) and re-run the tests",
            pytrace=False,
        )
    return path


LISTENING = re.compile(r'msg="Listening on" address=127\.0\.0\.1:(\d+)\n')
"""Prometheus's log line once its web listener is bound (the port it got; up to the line's
end, so that a line still being written is not read as a shorter port)."""


class Prometheus:
    """A running Prometheus: its web port and log, and polling queries against it."""

    def __init__(self, web: int, log_path: Path) -> None:
        self.web = web
        self.log_path = log_path

    async def query(self, client: httpx.AsyncClient, expr: str) -> Series | None:
        """One instant query; None while Prometheus is not answering yet."""
        try:
            r = await client.get("/api/v1/query", params={"query": expr})
        except httpx.TransportError:
            return None
        if r.status_code != 200:
            return None
        body = r.json()
        assert body["status"] == "success", body
        result: Series = body["data"]["result"]
        return result

    async def query_until(self, expr: str, *, value: float | None = None) -> Series:
        """Poll until ``expr`` has results (with ``value``, if given), or fail the test."""
        base = f"http://127.0.0.1:{self.web}"
        last: Series | None = None
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:

            async def answered() -> Series | None:
                nonlocal last
                last = await self.query(client, expr)
                if last and (value is None or float(last[0]["value"][1]) == value):
                    return last
                return None

            def what() -> str:
                log = self.log_path.read_text(errors="replace")
                return (
                    f"Prometheus to return {expr!r} (value {value}); last result {last!r}"
                    f"\n--- prometheus log ---\n{log[-4000:]}"
                )

            return await wait_until(answered, SCRAPE_DEADLINE, what=what, step=0.2)


@asynccontextmanager
async def running_prometheus(
    binary: str, target: str, tmp_path: Path, *, job: str = "tunnel-lb"
) -> AsyncIterator[Prometheus]:
    """Prometheus on 127.0.0.1 (port 0) scraping ``target`` every second; stopped on exit."""
    (tmp_path / "prometheus.yml").write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: {job}\n"
        "    scrape_interval: 1s\n"
        "    scrape_timeout: 1s\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    log_path = tmp_path / "prometheus.log"
    command = [
        binary,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        "--web.listen-address=127.0.0.1:0",
        "--log.level=info",  # the "Listening on" line with the port is at level info
    ]
    # A nursery of its own: leaving it (even on a failed assertion) terminates Prometheus and
    # waits for it to exit, so nothing outlives the test.
    with log_path.open("wb") as log:
        async with trio.open_nursery() as procs:
            run = partial(trio.run_process, command, stdout=subprocess.DEVNULL, stderr=log)
            process: trio.Process = await procs.start(partial(run, check=False))
            try:
                web = await _listening(process, log_path)
                yield Prometheus(web, log_path)
            finally:
                procs.cancel_scope.cancel()


async def _listening(process: trio.Process, log_path: Path) -> int:
    """The port Prometheus logged once listening; fails the test if it exits first."""

    def port() -> int | None:
        match = LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return int(match[1])
        if process.poll() is not None:
            log = log_path.read_text(errors="replace")[-4000:]
            pytest.fail(
                f"prometheus exited ({process.returncode}) before listening\n{log}",
                pytrace=False,
            )
        return None

    found: int = await wait_until(port, SCRAPE_DEADLINE, what="prometheus to listen", step=0.05)
    return found
