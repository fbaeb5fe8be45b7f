"""A real Prometheus for end-to-end tests: start it on loopback, query it until it answers.

Needs the Debian package ``prometheus`` (``prometheus`` and ``promtool`` on PATH);
``scripts/install-prometheus`` installs it and ``scripts/test`` runs that first.
"""

from __future__ import annotations

import shutil
import socket
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
    """Prometheus on 127.0.0.1 scraping ``target`` every second; stopped on exit."""
    web = free_port()
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
        f"--web.listen-address=127.0.0.1:{web}",
        "--log.level=warn",
    ]
    # A nursery of its own: leaving it (even on a failed assertion) terminates Prometheus and
    # waits for it to exit, so nothing outlives the test.
    with log_path.open("wb") as log:
        async with trio.open_nursery() as procs:
            run = partial(trio.run_process, command, stdout=subprocess.DEVNULL, stderr=log)
            await procs.start(partial(run, check=False))
            try:
                yield Prometheus(web, log_path)
            finally:
                procs.cancel_scope.cancel()
