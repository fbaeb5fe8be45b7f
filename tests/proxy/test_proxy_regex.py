"""Regular expressions in custom rules run on RE2: a crafted path cannot stall the proxy.

``^/(a+)+$`` against ``/aaaa...a!`` takes exponential time in a backtracking engine (Python's
``re`` would not finish this test before the heat death of the universe); RE2's time is linear
in the path.  The test sends that request and, at the same time, ordinary requests on other
connections, and needs every one of them answered.  The bound is only a safety net for a hang.
"""

from __future__ import annotations

import trio
from proxy_support import Certs, Client, get, start_stack

from lb.config.expressions import Fields, compile_condition
from lb.config.model import FixedResponse, Rule

PATTERN = "^/(a+)+$"


def test_regex_matches_is_linear_on_a_pathological_pattern() -> None:
    condition = compile_condition(f'http.request.uri.path matches "{PATTERN}"')
    crafted = "/" + "a" * 200_000 + "!"
    assert condition.matches(Fields(uri=crafted)) is False
    assert condition.matches(Fields(uri="/" + "a" * 200_000)) is True


async def test_regex_a_crafted_path_does_not_stall_other_connections(
    nursery: trio.Nursery, certs: Certs
) -> None:
    rule = Rule(
        condition=f'http.request.uri.path matches "{PATTERN}"',
        fixed_response=FixedResponse(status_code=403),
    )
    stack = await start_stack(nursery, certs, 1, rules=(rule,))
    crafted = "/" + "a" * 30_000 + "!"
    statuses: dict[str, int] = {}

    async def attack() -> None:
        async with await Client.connect(stack.port) as client:
            for i in range(5):
                statuses[f"crafted{i}"] = (await client.request("GET", crafted)).status

    async def ordinary(i: int) -> None:
        statuses[f"ordinary{i}"] = (await get(stack.port, "/hello")).status

    with trio.fail_after(60):  # a safety net for a hang, not a timing assertion
        async with trio.open_nursery() as inner:
            inner.start_soon(attack)
            for i in range(5):
                inner.start_soon(ordinary, i)
    assert statuses == {
        **{f"crafted{i}": 200 for i in range(5)},
        **{f"ordinary{i}": 200 for i in range(5)},
    }
    assert (await get(stack.port, "/" + "a" * 1000)).status == 403
