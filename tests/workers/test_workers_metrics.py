"""With ``engine.workers: 2`` the parent's ``/metrics`` counts what both processes did.

A real ``tunnel-lb run`` (parent + one child worker) in front of two real connector
processes.  Requests go out on fresh connections so the kernel spreads them over both
processes (the access log says which served each); the parent's request counter, its
per-endpoint duration histogram and its retries by pool must then add up to every request,
not to the parent's share.  Retries are made certain, not raced: the eu pool loses its
monitor by a reload (an unmonitored endpoint is always healthy) and then its tunnel dies,
so every request is tried on eu first and retried on us, in whichever process serves it.
Open client connections, a gauge, add up over the processes too.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from stack_support import EU, LB, US, Stack, log_events, running_stack
from waiting import wait_until

pytestmark = [pytest.mark.integration]

N = 40
K = 12


def total(text: str, sample: str, **labels: str) -> float:
    """Sum of the samples called ``sample`` whose labels include ``labels``."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    )


async def fresh_requests(base: str, n: int) -> Counter[str]:
    """``n`` requests, each on a new connection so the kernel spreads them over workers."""
    seen: Counter[str] = Counter()
    for _ in range(n):
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.get(f"{base}/", headers={"Host": LB})
        seen[f"{r.status_code} {r.json()['tunnel'] if r.status_code == 200 else ''}"] += 1
    return seen


async def until_metrics(client: httpx.AsyncClient, stack: Stack, check: Any, what: str) -> str:
    """Poll the parent's /metrics until ``check(text)`` (children report about every second)."""
    text = ""

    async def scraped() -> str | None:
        nonlocal text
        text = (await client.get(f"{stack.admin_base}/metrics")).text
        return text if check(text) else None

    found: str = await wait_until(
        scraped, what=lambda: f"{what}; /metrics has\n{text[:4000]}", step=0.2
    )
    return found


async def test_counters_cover_both_processes(tmp_path: Path) -> None:
    async with (
        running_stack(tmp_path, workers=2, access_log=True) as stack,
        httpx.AsyncClient(timeout=5) as client,
    ):
        # The child listens too (the parent's /readyz does not wait for it).
        await wait_until(lambda: log_events(stack.log, "worker_ready"), 15, what="worker_ready")

        # Client connections kept open (keep-alive after one request each), spread over
        # both processes: the parent's gauge counts them all, and forgets them once closed.
        clients = [httpx.AsyncClient(timeout=5) for _ in range(K)]
        try:
            for c in clients:
                assert (await c.get(f"{stack.base}/", headers={"Host": LB})).status_code == 200
            served = Counter(e["worker"] for e in log_events(stack.log, "request"))
            assert set(served) == {0, 1}, served
            await until_metrics(
                client, stack, lambda t: total(t, "lb_client_connections") == K, "K clients"
            )
        finally:
            for c in clients:
                await c.aclose()
        await until_metrics(
            client, stack, lambda t: total(t, "lb_client_connections") == 0, "clients closed"
        )

        assert await fresh_requests(stack.base, N) == Counter({f"200 {EU}": N})
        served = Counter(e["worker"] for e in log_events(stack.log, "request")[K:])
        assert set(served) == {0, 1}, served  # both processes served some
        eu = {"load_balancer": LB, "pool": "eu", "endpoint": "tunnel-eu"}
        # (the K requests of the clients above are counted too)
        await until_metrics(
            client,
            stack,
            lambda t: (
                total(t, "lb_request_duration_seconds_count", **eu) == N + K
                and total(t, "lb_requests_total", **eu) == N + K
            ),
            f"{N} requests in the parent's duration histogram",
        )

        # The eu pool without a monitor (always healthy), then its tunnel dies: every
        # request fails on eu and is retried on us, in both processes.
        config = json.loads(stack.config.read_text())
        for pool in config["pools"]:
            if pool["name"] == "eu":
                del pool["monitor"]
        stack.config.write_text(json.dumps(config))
        stack.lb.send_signal(signal.SIGHUP)
        await until_metrics(
            client,
            stack,
            lambda t: total(t, "lb_config_reloads_total", result="success") == 1,
            "reload applied",
        )
        stack.tunnels[EU].kill()
        await stack.tunnels[EU].wait()
        # The child gets the configuration down its pipe right after the parent applied
        # it; a request it served before would have been answered by eu, which is dead
        # now: a 200 from us with a retry is the proof either way.
        mark = len(log_events(stack.log, "request"))
        assert await fresh_requests(stack.base, N) == Counter({f"200 {US}": N})
        after = log_events(stack.log, "request")[mark:]
        assert {e["worker"] for e in after} == {0, 1}
        assert all(e["retried"] for e in after), after

        us = {"load_balancer": LB, "pool": "us", "endpoint": "tunnel-us"}
        text = await until_metrics(
            client,
            stack,
            lambda t: (
                total(t, "lb_retries_total", load_balancer=LB, pool="eu") == N
                and total(t, "lb_request_duration_seconds_count", **us) == N
            ),
            f"{N} retries of pool eu and {N} requests answered by us",
        )
        assert total(text, "lb_retries_total", pool="us") == 0
        # every request's fresh connection to the dead tunnel was refused, in either process
        refused = {"pool": "eu", "endpoint": "tunnel-eu", "kind": "refused"}
        assert total(text, "lb_upstream_errors_total", **refused) == N
        assert total(text, "lb_upstream_errors_total", pool="us") == 0
        assert total(text, "lb_steering_decisions_total", reason="retry") == N
