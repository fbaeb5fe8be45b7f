"""The probe scheduler: one trio task per job, spread over the interval, reloadable.

Theory of operation
===================

* **Jobs, not targets**: :func:`monitors.spec.plan` folds the (pool, endpoint) targets into
  jobs, one per (probe identity, vantage point).  Each job is probed once per interval and its
  verdict is reported to every (pool, endpoint) of its fan-out as a
  :class:`~lb.core.health.ProbeResult`, through the plain synchronous callback ``on_result``
  (the engine passes ``HealthBook.apply``, wrapped).  The scheduler imports no engine.
* **Spread from the first round**: a new job first runs at a uniformly random offset in
  ``[0, interval)`` after it starts, so 10,000 endpoints loaded at once are probed evenly over
  the first interval instead of in one burst.  Later runs are one interval apart, each
  stretched by a random jitter (default +-5 %) so that jobs started together drift apart.  The
  schedule is anchored to planned start times (a slow check does not shift the next one); a
  check that overruns its interval is followed by the next one at once, never by a backlog.
* **Start-up ramp**: a job's first check usually opens a TLS connection, which costs about
  five times a keep-alive check (``docs/monitors.md``).  ``first_round_rate`` (checks per
  second) stretches the first round of the jobs added by one :meth:`Scheduler.update` over
  ``max(interval, new_jobs / first_round_rate)``, so 10,000 endpoints at a 10 s interval do
  not demand 1,000 handshakes per second at start-up.  Default: no ramp.
* **Randomness** comes from the injected ``rng``: each job draws its own
  ``random.Random`` from it when created, in job order, so one seed gives the same schedule
  however trio interleaves tasks (the simulator relies on it).
* **Time** is ``trio.current_time()``: results carry ``at`` (check end) on the trio clock, so
  a ``MockClock`` run is virtual end to end.
* **Reload**: :meth:`Scheduler.update` may be called at any time, before or while
  :meth:`Scheduler.run` runs.  A job whose probe and vantage are unchanged keeps its task, its
  schedule and its keep-alive connection (only its fan-out is replaced); removed jobs are
  cancelled (their connection closed); new jobs start with a fresh random offset.
* **Lateness**: ``on_late(seconds)``, when given, is called with how late each check started
  against its plan: the measure of an overloaded event loop (``bench/probes.py``, metrics).
* **Isolation**: each attempt runs under ``trio.move_on_after(timeout)`` in
  :func:`monitors.transport.run_check`, so a misbehaving endpoint costs only its own task.

Usage (the engine)::

    scheduler = Scheduler(transport, on_result, rng=random.Random(seed))
    scheduler.update(jobs_for_config(config, book.targets()))
    await nursery.start(scheduler.run)
    ...
    scheduler.update(jobs_for_config(new_config, book.targets()))   # on reload
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import trio

from lb.core.health import ProbeResult
from monitors.spec import Job, Probe
from monitors.transport import ProbeTransport, run_check

__all__ = ["Scheduler", "probe_rng", "run_monitors"]

ResultCallback = Callable[[ProbeResult], object]


def probe_rng(seed: int | None) -> random.Random:
    """The random stream of the probe schedule (first-round phases, jitter) for ``seed``.

    ``tunnel-lb run --seed N`` and ``tunnel-lb simulate --seed N`` both take their
    scheduler's ``rng`` from here, so one seed is one probe schedule and a real run can be
    replayed in the simulator (``tunnel-lb rehearse`` relies on it).  None: a fresh stream.
    """
    return random.Random() if seed is None else random.Random(f"{seed}:monitors")


class _Worker:
    __slots__ = ("fanout", "first_window", "job", "rng", "scope")

    def __init__(self, job: Job, rng: random.Random, first_window: float) -> None:
        self.job = job
        self.fanout = job.fanout
        self.rng = rng
        self.first_window = first_window
        self.scope = trio.CancelScope()


class Scheduler:
    """Runs the jobs of the current configuration; see the module docstring."""

    def __init__(
        self,
        transport: ProbeTransport,
        on_result: ResultCallback,
        *,
        rng: random.Random,
        jitter: float = 0.05,
        on_late: Callable[[float], object] | None = None,
        first_round_rate: float | None = None,
    ) -> None:
        self._transport = transport
        self._on_late = on_late
        self._first_rate = first_round_rate
        self._on_result = on_result
        self._rng = rng
        self._jitter = jitter
        self._workers: dict[tuple[Probe, str], _Worker] = {}
        self._nursery: trio.Nursery | None = None

    @property
    def jobs(self) -> list[Job]:
        """The jobs in force, with their current fan-out."""
        return [
            Job(probe=p, vantage=v, fanout=w.fanout, routes=w.job.routes)
            for (p, v), w in self._workers.items()
        ]

    def update(self, jobs: Iterable[Job]) -> None:
        """Replace the job list; unchanged jobs keep their task, schedule and connection."""
        jobs = list(jobs)
        fresh = sum(1 for j in jobs if (j.probe, j.vantage) not in self._workers)
        floor = fresh / self._first_rate if self._first_rate else 0.0
        new: dict[tuple[Probe, str], _Worker] = {}
        for job in jobs:
            key = (job.probe, job.vantage)
            worker = self._workers.get(key)
            if worker is None:
                rng = random.Random(self._rng.getrandbits(64))
                worker = _Worker(job, rng, max(job.probe.interval, floor))
                if self._nursery is not None:
                    self._nursery.start_soon(self._work, worker)
            worker.fanout = job.fanout
            worker.job = job  # same probe and vantage point; new fan-out and routes
            new[key] = worker
        for key, worker in self._workers.items():
            if key not in new:
                worker.scope.cancel()
        self._workers = new

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe until cancelled; ``started()`` once every current job has its task."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for worker in self._workers.values():
                    nursery.start_soon(self._work, worker)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def _work(self, w: _Worker) -> None:
        probe, vantage = w.job.probe, w.job.vantage
        with w.scope:
            session = self._transport.open_session(probe, vantage)
            try:
                at = trio.current_time() + w.rng.random() * w.first_window
                while True:
                    await trio.sleep_until(at)
                    if self._on_late is not None:
                        self._on_late(trio.current_time() - at)
                    verdict = await run_check(session, probe)
                    now = trio.current_time()
                    reason = verdict.reason.value if verdict.reason else ""
                    for pool, endpoint, member in w.job.deliveries:
                        self._on_result(
                            ProbeResult(
                                pool=pool,
                                endpoint=endpoint,
                                vantage=vantage,
                                at=now,
                                ok=verdict.ok,
                                reason=reason,
                                status=verdict.status,
                                rtt=verdict.rtt,
                                member=member,
                            )
                        )
                    stretch = 1.0 + self._jitter * (2.0 * w.rng.random() - 1.0)
                    at = max(at + probe.interval * stretch, now)
            finally:
                with trio.CancelScope(shield=True):
                    await session.aclose()


async def run_monitors(
    jobs: Iterable[Job],
    transport: ProbeTransport,
    on_result: ResultCallback,
    *,
    rng: random.Random,
    jitter: float = 0.05,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``jobs`` until cancelled: a :class:`Scheduler` for callers that restart on reload."""
    scheduler = Scheduler(transport, on_result, rng=rng, jitter=jitter)
    scheduler.update(jobs)
    await scheduler.run(task_status=task_status)
