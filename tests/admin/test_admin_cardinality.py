"""Cardinality stays bounded: request data never becomes a label value.

A real ``tunnel-lb run`` (two connector processes behind it) gets one request of every
shape first, so that each series the flood can touch exists; then a flood of distinct
Hosts, paths, queries, client addresses and countries.  ``/metrics`` must list exactly the
same series afterwards (values change, names and labels do not).
"""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest
from admin_builders import samples
from stack_support import LB, running_stack

pytestmark = [pytest.mark.integration]

FLOOD = 200
"""Distinct values of each kind; every one would be a new series if it became a label."""


def shapes(i: int, rng: random.Random) -> list[tuple[str, dict[str, str]]]:
    """Requests ``i`` of the flood: ``(path and query, headers)``, one per shape."""
    word = f"{i}-{rng.getrandbits(32):08x}"
    noise = {"X-Forwarded-For": f"198.51.100.{i % 250}", "CF-IPCountry": f"Q{chr(65 + i % 26)}"}
    return [
        (f"/{word}?q={word}", {"Host": LB, **noise}),  # a served host, any path
        (f"/{word}", {"Host": f"{word}.example.net", **noise}),  # an unknown host
        (f"/{word}", {"Host": f"{LB.upper()}:{1000 + i}", **noise}),  # a port, another case
        ("/", {"Host": f"203.0.113.{i % 250}", **noise}),  # an address for a Host
    ]


async def test_a_flood_of_hosts_and_paths_adds_no_series(tmp_path: Path) -> None:
    rng = random.Random(11)
    async with running_stack(tmp_path) as stack, httpx.AsyncClient(timeout=5) as client:

        async def send(i: int) -> set[int]:
            statuses = set()
            for target, headers in shapes(i, rng):
                r = await client.get(f"{stack.base}{target}", headers=headers)
                statuses.add(r.status_code)
            return statuses

        async def series() -> set[tuple[str, frozenset[tuple[str, str]]]]:
            return set(samples((await client.get(f"{stack.admin_base}/metrics")).content))

        warm = await send(0)
        assert warm == {200, 404}, warm  # served, and unknown hosts
        before = await series()
        for i in range(1, FLOOD + 1):
            assert await send(i) == warm
        after = await series()
        assert after - before == set(), sorted(after - before)[:10]
        assert before - after == set()
        text = (await client.get(f"{stack.admin_base}/metrics")).text
        assert "example.net" not in text and "198.51.100" not in text
        served = sum(
            value
            for (name, labels), value in samples(text).items()
            if name == "lb_requests_total" and ("load_balancer", LB) in labels
        )
        assert served >= 2 * FLOOD  # the flood did reach the counters
