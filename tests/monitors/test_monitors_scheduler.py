"""The scheduler in virtual time (``autojump_clock``) against a fake transport.

The fake transport is the seam the simulator uses: it only says what an endpoint does, and the
scheduler's own code does the rest (spread, jitter, timeouts, retries, fan-out).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable

import trio
import trio.testing
from monitor_builders import monitor, target

from lb.core.health import ProbeResult
from monitors import Exchange, Job, Probe, Reason, Scheduler, plan

Behaviour = Callable[[Probe, str, int], Awaitable[Exchange]]


async def healthy(probe: Probe, vantage: str, n: int) -> Exchange:
    await trio.sleep(0.01)
    return Exchange(status=200, body=b"ok", rtt=0.01)


class FakeTransport:
    """Records every attempt as (time, probe, vantage)."""

    def __init__(self, behaviour: Behaviour = healthy) -> None:
        self.behaviour = behaviour
        self.calls: list[tuple[float, Probe, str]] = []
        self.opened = 0
        self.closed = 0

    def open_session(self, probe: Probe, vantage: str) -> FakeSession:
        self.opened += 1
        return FakeSession(self, probe, vantage)


class FakeSession:
    def __init__(self, transport: FakeTransport, probe: Probe, vantage: str) -> None:
        self.t, self.probe, self.vantage = transport, probe, vantage
        self.phase = "http"

    async def attempt(self) -> Exchange:
        self.t.calls.append((trio.current_time(), self.probe, self.vantage))
        n = sum(1 for c in self.t.calls if c[1] == self.probe and c[2] == self.vantage)
        return await self.t.behaviour(self.probe, self.vantage, n)

    async def aclose(self) -> None:
        self.t.closed += 1


def jobs(n: int, interval: float = 60.0, **kw: object) -> list[Job]:
    targets = [
        target(
            monitor(443, interval=interval, **kw),
            endpoint=f"e{i}",
            address=f"10.0.{i // 250}.{i % 250}",
        )  # type: ignore[arg-type]
        for i in range(n)
    ]
    return plan(targets)


async def run_for(seconds: float, scheduler: Scheduler) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()


async def test_first_round_is_spread_over_the_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeTransport()
    s = Scheduler(fake, lambda r: None, rng=random.Random(1))
    s.update(jobs(1000, interval=60))
    start = trio.current_time()
    await run_for(56.9, s)  # before any second round (>= 60 * 0.95 after the first)
    firsts = sorted(t - start for t, _, _ in fake.calls)
    assert len(firsts) > 900
    assert len(set(firsts)) == len(firsts)  # no two probes at the same instant
    assert min(b - a for a, b in itertools.pairwise(firsts)) > 0
    buckets = [0] * 10
    for t in firsts:
        buckets[int(t // 5.69)] += 1
    assert min(buckets) > 60 and max(buckets) < 140  # ~95 per 5.69 s bucket: uniform


async def test_jitter_varies_every_interval(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeTransport()
    s = Scheduler(fake, lambda r: None, rng=random.Random(2), jitter=0.05)
    s.update(jobs(1, interval=10))
    await run_for(1005, s)
    times = [t for t, _, _ in fake.calls]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 95
    assert all(9.5 - 1e-9 <= g <= 10.5 + 1e-9 for g in gaps)
    assert len({round(g, 6) for g in gaps}) > 50
    assert abs(sum(gaps) / len(gaps) - 10) < 0.2


async def test_same_seed_same_schedule(autojump_clock: trio.testing.MockClock) -> None:
    runs = []
    for _ in range(2):
        fake = FakeTransport()
        s = Scheduler(fake, lambda r: None, rng=random.Random(7))
        s.update(jobs(50, interval=30))
        start = trio.current_time()
        await run_for(100, s)
        runs.append(sorted((round(t - start, 9), p.address) for t, p, _ in fake.calls))
    assert runs[0] == runs[1]


async def test_shared_identity_is_probed_once_and_fanned_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = monitor(443, interval=10)
    shared = [target(m, pool="a", endpoint="x"), target(m, pool="b", endpoint="y")]
    other = target(m, pool="c", endpoint="z", origin_host="other.test")
    planned = plan([*shared, other], vantage_points=("v1", "v2"))
    assert len(planned) == 4  # 2 identities x 2 vantage points
    assert planned[0].fanout == (("a", "x"), ("b", "y"))
    assert planned[0].probe.user_agent.endswith("(health-check; pool: a,b)")
    results: list[ProbeResult] = []
    fake = FakeTransport()
    s = Scheduler(fake, results.append, rng=random.Random(3))
    s.update(planned)
    await run_for(25, s)
    per_probe = {(p.host, v) for _, p, v in fake.calls}
    assert per_probe == {
        ("app.test", "v1"),
        ("app.test", "v2"),
        ("other.test", "v1"),
        ("other.test", "v2"),
    }
    shared_calls = [c for c in fake.calls if c[1].host == "app.test" and c[2] == "v1"]
    got = [r for r in results if r.vantage == "v1" and r.pool in ("a", "b")]
    assert len(got) == 2 * len(shared_calls)
    assert {(r.pool, r.endpoint) for r in got} == {("a", "x"), ("b", "y")}
    r = got[0]
    assert (r.ok, r.reason, r.status, r.rtt) == (True, "", 200, 0.01)
    assert r.at == shared_calls[0][0] + 0.01


async def test_retries_after_timeouts_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def hangs_twice(probe: Probe, vantage: str, n: int) -> Exchange:
        if n <= 2:
            await trio.sleep_forever()
        return Exchange(status=200, rtt=0.0)

    results: list[ProbeResult] = []
    fake = FakeTransport(hangs_twice)
    s = Scheduler(fake, results.append, rng=random.Random(4))
    s.update(jobs(1, interval=60, timeout=5, retries=2))
    await run_for(59, s)
    t = [c[0] for c in fake.calls]
    assert [round(b - a, 9) for a, b in itertools.pairwise(t)] == [5, 5]  # immediate
    assert [(r.ok, r.reason) for r in results] == [(True, "")]


async def test_timeout_without_retries_left_fails_and_mismatch_is_not_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def behaviour(probe: Probe, vantage: str, n: int) -> Exchange:
        if probe.expected_codes == "200":
            await trio.sleep_forever()
        return Exchange(status=500)

    results: list[ProbeResult] = []
    fake = FakeTransport(behaviour)
    s = Scheduler(fake, results.append, rng=random.Random(5))
    planned = jobs(1, interval=60, timeout=2, retries=1) + plan(
        [target(monitor(443, interval=60, retries=3, expected_codes="2xx"), endpoint="m")]
    )
    s.update(planned)
    await run_for(59, s)
    by_endpoint = {r.endpoint: r for r in results}
    assert by_endpoint["e0"].reason == Reason.HTTP_TIMEOUT.value
    assert by_endpoint["m"].reason == Reason.RESPONSE_CODE_MISMATCH.value
    assert by_endpoint["m"].status == 500
    assert sum(1 for c in fake.calls if c[1].expected_codes == "2xx") == 1
    assert sum(1 for c in fake.calls if c[1].expected_codes == "200") == 2


async def test_update_keeps_unchanged_jobs_and_replaces_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    results: list[ProbeResult] = []
    fake = FakeTransport()
    s = Scheduler(fake, results.append, rng=random.Random(6))
    first = jobs(3, interval=10)
    s.update(first)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        await trio.sleep(25)
        assert fake.opened == 3
        renamed = Job(probe=first[0].probe, vantage="local", fanout=(("p", "renamed"),))
        s.update([renamed, *jobs(4, interval=10)[3:]])  # keep e0, drop e1/e2, add e3
        await trio.testing.wait_all_tasks_blocked()
        assert (fake.opened, fake.closed) == (4, 2)
        mark = len(results)
        await trio.sleep(20)
        later = {r.endpoint for r in results[mark:]}
        assert later == {"renamed", "e3"}
        nursery.cancel_scope.cancel()
    assert fake.closed == 4
    assert len(s.jobs) == 2


async def test_an_exception_in_a_transport_is_a_failure_not_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def broken(probe: Probe, vantage: str, n: int) -> Exchange:
        raise ConnectionResetError(104, "reset")

    results: list[ProbeResult] = []
    s = Scheduler(FakeTransport(broken), results.append, rng=random.Random(8))
    s.update(jobs(2, interval=10))
    await run_for(30, s)
    assert results and all(r.reason == Reason.CONNECTION_RESET.value for r in results)


async def test_first_round_rate_stretches_the_first_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeTransport()
    s = Scheduler(fake, lambda r: None, rng=random.Random(9), first_round_rate=50)
    s.update(jobs(1000, interval=10))  # 1000 jobs at <= 50 first checks/s: a 20 s first round
    start = trio.current_time()
    await run_for(20, s)
    firsts: dict[str, float] = {}
    for t, p, _ in fake.calls:
        firsts.setdefault(p.address, t - start)
    assert len(firsts) == 1000
    assert max(firsts.values()) > 19
    assert sum(1 for t in firsts.values() if t < 10) < 600


async def test_run_and_simulate_take_one_probe_schedule_per_seed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``run --seed`` and ``simulate --seed`` both draw from ``probe_rng``: one seed, one
    schedule (phases and jitter); another seed, another schedule."""
    from lb import service
    from lb.sim import run as sim_run
    from monitors.scheduler import probe_rng

    assert service.probe_rng is probe_rng and sim_run.probe_rng is probe_rng

    async def schedule(seed: int) -> list[tuple[float, str]]:
        fake = FakeTransport()
        s = Scheduler(fake, lambda r: None, rng=probe_rng(seed))
        s.update(jobs(20, interval=10))
        start = trio.current_time()
        await run_for(35, s)
        return sorted((round(t - start, 9), p.address) for t, p, _ in fake.calls)

    first = await schedule(3)
    assert first == await schedule(3)
    assert first != await schedule(4)
