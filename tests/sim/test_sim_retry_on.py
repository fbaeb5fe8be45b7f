"""``retry_on`` in the simulator (configs/scenarios/retry-on.yaml and variants of it).

The simulator follows the proxy's attempt policy and retry budget (``lb/core/attempts.py``,
``lb/core/budget.py``): three tunnels, the application behind one refuses for 60 s while the
health-route monitors stay green, then another resets its connections until its monitor
takes it out.  Without ``retry_on`` a third of the requests of that minute fail, and those
the resetting tunnel takes before it is noticed (Cloudflare-exact); with it none do; with a
budget of nothing, every retry is refused and the errors come back, counted as refusals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lb.sim import load_scenario, run_scenario

SCENARIO = Path(__file__).resolve().parents[2] / "configs" / "scenarios" / "retry-on.yaml"
RULE = "      retry_on: {conditions: [reset], statuses: [502]}\n"


def variant(tmp_path: Path, rule: str) -> dict[str, Any]:
    text = SCENARIO.read_text()
    assert RULE in text
    path = tmp_path / "variant.yaml"
    path.write_text(
        text.replace(RULE, rule).replace(
            "    errors: {at_most: 0}\n", "    errors: {at_most: 100000}\n"
        )
    )
    return run_scenario(load_scenario(path)).data


def test_retry_on_mends_what_cloudflare_exact_loses(tmp_path: Path) -> None:
    shipped = run_scenario(load_scenario(SCENARIO)).data
    exact = variant(tmp_path, "")
    # Cloudflare-exact: about a third of the 6,000 requests of the outage minute fail
    assert 1500 <= exact["errors"] <= 2500
    assert exact["retry_on_retries"] == exact["retry_budget_refusals"] == 0
    assert exact["statuses"] == {"502": exact["errors"]}
    # retry_on: each of them is retried once, to another tunnel, and none fails
    assert shipped["errors"] == 0
    assert 1500 <= shipped["retry_on_retries"] <= 2500
    assert shipped["retry_budget_refusals"] == 0


def test_a_spent_budget_answers_the_failure_and_counts_it(tmp_path: Path) -> None:
    nothing = "      retry_on: {statuses: [502], budget_percent: 0, min_retry_concurrency: 0}\n"
    data = variant(tmp_path, nothing)
    assert data["retry_on_retries"] == 0
    assert data["errors"] == data["retry_budget_refusals"] > 1500


def test_the_budget_counts_a_retried_request_from_its_start_to_its_final_answer(
    tmp_path: Path,
) -> None:
    """The application behind c also answers 1 s late, so each request to it waits 1 s for
    its 502 and is then retried to a or b (20 ms): as in the proxy, it is in flight for the
    whole 1.02 s and retrying only for the last 20 ms (``lb/proxy/exchange.py``).  About 36
    requests are then in flight at any moment (a third of 100 a second for 1.02 s, the rest
    for 20 ms), so 20 % of them leaves room for 7 retrying, and the one or two that are
    never fill it: no retry is refused.  Counted for its final answer's 20 ms only, as the
    simulator did, the requests in flight were about two, the cap the minimum of one, and
    most retries were refused."""
    text = SCENARIO.read_text().replace(
        "  - {at: 30, origin: c, do: refuse, until: 90}\n",
        "  - {at: 30, origin: c, do: refuse, until: 90}\n"
        "  - {at: 30, origin: c, do: latency, latency: 1, until: 90}\n",
    )
    # b's fast resets, whose 20 ms retries this small a budget does refuse, are not the point
    text = text.replace("  - {at: 100, tunnel: b, do: reset, until: 115}\n", "")
    rule = "      retry_on: {statuses: [502], budget_percent: 20, min_retry_concurrency: 1}\n"
    path = tmp_path / "slow.yaml"
    path.write_text(text.replace(RULE, rule))
    data = run_scenario(load_scenario(path)).data
    assert 1500 <= data["retry_on_retries"] <= 2500
    assert data["retry_budget_refusals"] == 0
    assert data["errors"] == 0


def test_a_pool_retry_on_overrides_the_load_balancer(tmp_path: Path) -> None:
    """The pool's own retry_on (no statuses) replaces the load balancer's: 502s stay."""
    text = SCENARIO.read_text().replace(
        "      monitor: health-route\n",
        "      monitor: health-route\n      retry_on: {conditions: [reset]}\n",
    )
    path = tmp_path / "pool.yaml"
    path.write_text(text.replace("    errors: {at_most: 0}\n", "    errors: {at_most: 100000}\n"))
    data = run_scenario(load_scenario(path)).data
    # c's 502s are answered as they are; b's resets are still retried (the pool's rule)
    assert data["statuses"] == {"502": data["errors"]} and data["errors"] > 1500
    assert 0 < data["retry_on_retries"] < 500


TRUNCATED = SCENARIO.with_name("retry-on-truncated.yaml")
BUFFER = "      retry_on: {conditions: [reset, truncated], buffer_response: 1048576}\n"


def test_buffer_response_mends_cut_responses_and_passive_health_ejects_the_cutter(
    tmp_path: Path,
) -> None:
    """configs/scenarios/retry-on-truncated.yaml: tunnel c cuts its responses mid-body for a
    minute.  Read whole, each cut is retried (0 errors) and counts as a 502 for passive
    health, which ejects c after 5: it gets the few requests of its returns, not a third of
    the minute.  Streamed (no buffer_response), the cuts reach the users, and passive health
    never sees them: the proxy had relayed a 200 head."""
    shipped = run_scenario(load_scenario(TRUNCATED)).data
    assert shipped["errors"] == 0
    assert 0 < shipped["retry_on_retries"] < 50  # a retry a cut, a cut an ejection's worth
    ejections = [
        t
        for t in shipped["transitions"]
        if t["vantage"] == "passive" and t["to"] == "unhealthy" and t["endpoint"] == "c"
    ]
    assert ejections and all("502" in t["reason"] for t in ejections)
    text = TRUNCATED.read_text()
    assert BUFFER in text
    path = tmp_path / "streamed.yaml"
    path.write_text(
        text.replace(BUFFER, "      retry_on: {conditions: [reset]}\n").replace(
            "    errors: {at_most: 0}\n", "    errors: {at_most: 100000}\n"
        )
    )
    streamed = run_scenario(load_scenario(path)).data
    assert 1500 <= streamed["errors"] <= 2500 and streamed["retry_on_retries"] == 0
    assert not any(t["vantage"] == "passive" for t in streamed["transitions"])
