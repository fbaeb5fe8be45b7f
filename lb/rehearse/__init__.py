"""``tunnel-lb rehearse``: a scenario against real processes, beside the simulator's spread.

The simulator is only worth trusting if it can be checked.  A rehearsal runs one scenario
twice over: once for real (stand-in connectors and ``tunnel-lb run`` on loopback, real
traffic, the timeline applied to the processes: :mod:`lb.rehearse.stack`,
:mod:`lb.rehearse.drive`), and N times in the simulator with N seeds, both on the same
scaled scenario (:mod:`lb.rehearse.scale`).  The real run's report has the simulator's
shape (:mod:`lb.rehearse.real`); :mod:`lb.rehearse.compare` says where each of its values
falls in the simulated distribution.  ``docs/rehearse.md`` has the details and the limits.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from lb.rehearse.compare import OUTSIDE_LIMIT, Point, compare, outside_share
from lb.rehearse.drive import Driven, drive, unrehearsable
from lb.rehearse.real import log_lines, real_report
from lb.rehearse.scale import SpeedError, scaled_files
from lb.rehearse.stack import StartError, running
from lb.rehearse.stalls import Timeout, held, in_words, unexplained, user_timeouts
from lb.sim.report import Report
from lb.sim.run import run_scenario
from lb.sim.scenario import Scenario, load_scenario
from lb.sim.spec import seconds

__all__ = [
    "Rehearsal",
    "RehearsalError",
    "Simulate",
    "rehearse",
    "simulate_seeds",
]

Simulate = Callable[[Scenario], Report]
"""Runs one seed of a scenario (the real simulator; tests pass a wrong one on purpose)."""


class RehearsalError(RuntimeError):
    """The scenario cannot be rehearsed, or the real system did not start (one line)."""


@dataclass(frozen=True, slots=True)
class Rehearsal:
    """A finished rehearsal: the real report, the simulated ones and the comparison."""

    scenario: Scenario
    speed: float
    rate: float
    real: Report
    sims: tuple[dict[str, Any], ...]
    points: tuple[Point, ...]
    lag: float = 0.0
    """The latest a timeline event took effect after its time, in the real run (seconds)."""
    probe_duration: float = 0.0
    """The real run's slowest probe, to its histogram bucket (seconds): a cost the scaled
    simulation lacks."""
    behind: float = 0.0
    """How far behind its schedule the driver sent a request (seconds): how long the
    rehearsal's own process (the traffic) was kept from running."""
    timeouts: str = ""
    """The real run's probes and requests that timed out where the scenario does not make
    an endpoint hang, in words (:func:`lb.rehearse.stalls.unexplained`; "" when none)."""
    starved: float | None = None
    """Seconds the LB and the stand-ins waited for a CPU per second they ran, over the real
    run (None where the kernel does not say): reported, it decides nothing."""
    unexcused: str = ""
    """Those of :attr:`timeouts` the machine does not explain: no process on their path
    waited for a CPU half their own window (:func:`lb.rehearse.stalls.held`), in words."""

    @property
    def held_back(self) -> bool:
        """Whether :attr:`timeouts` are the machine's: the stack timed out where the scenario
        does not make it hang, and each time, within that timeout's own window, the LB or
        the endpoint's stand-in waited for a CPU at least half of it.  One timeout the
        machine does not explain is judged, and so is the run."""
        return bool(self.timeouts) and not self.unexcused

    @property
    def inconclusive(self) -> str | None:
        """Why the comparison says nothing of the simulator (None: it does).

        A busy machine delays what the simulator does at its instant: a configuration
        change's reload (:attr:`lag`), the traffic and the edge stand-ins' answers
        (:attr:`behind`).  The bands are widened by the lag, and a run that fell behind by
        half a report window or more is as far from its scenario as the differences the
        comparison is there to find: its points falling inside would prove nothing, and
        outside, they would blame the simulator for the machine.  The LB and the
        stand-ins, held back, show it by timing out where the scenario always answers
        (:attr:`held_back`, :mod:`lb.rehearse.stalls`), which the simulator never does."""
        late = max(self.lag, self.behind)
        window = self.scenario.report_interval
        why = []
        if late >= window / 2:
            why.append(
                f"events applied up to {self.lag:.3f} s late and requests sent up to "
                f"{self.behind:.3f} s behind schedule, at least half a {window:g} s "
                "report window"
            )
        if self.held_back:
            why.append(
                f"the real LB timed out where the scenario never makes an endpoint hang "
                f"({self.timeouts}), each time while the LB or the stand-in waited for a "
                "CPU at least half the timeout"
            )
        if not why:
            return None
        return (
            f"machine too loaded: {'; '.join(why)}; rerun on a quieter machine, or at a "
            "lower --speed or --rate"
        )

    @property
    def outside(self) -> float:
        """The share of points outside their 5-95 % band."""
        return outside_share(self.points)

    @property
    def ok(self) -> bool:
        """Conclusive, within the band often enough, and every expectation held in the real
        run."""
        return self.inconclusive is None and self.outside <= OUTSIDE_LIMIT + 1e-12 and self.real.ok

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` document (``docs/rehearse.md``)."""
        return {
            "schema": "tunnel-lb/rehearse/1",
            "scenario": self.scenario.name,
            "speed": self.speed,
            "rate": self.rate,
            "seeds": [s["seed"] for s in self.sims],
            "replay_seed": self.scenario.seed,
            "outside": round(self.outside, 4),
            "outside_limit": OUTSIDE_LIMIT,
            "timeline_lag": round(self.lag, 6),
            "probe_duration": round(self.probe_duration, 6),
            "behind": round(self.behind, 6),
            "timeouts": self.timeouts or None,
            "starved": None if self.starved is None else round(self.starved, 3),
            "unexcused": self.unexcused or None,
            "inconclusive": self.inconclusive,
            "ok": self.ok,
            "points": [p.as_json() for p in self.points],
            "real": self.real.data,
        }

    def write_json(self, path: str | Path) -> None:
        """Write :meth:`as_json` to ``path``."""
        Path(path).write_text(json.dumps(self.as_json(), indent=2) + "\n", "utf-8")

    def table(self) -> str:
        """The human summary: every point, real value against the band."""
        d = self.real.data
        lines = [
            f"rehearsal {self.scenario.name} at speed {self.speed:g}, rate x{self.rate:g}: "
            f"{seconds(self.scenario.duration)} real time, {d['requests']} requests, "
            f"{d['errors']} errors, {d['retries']} retries; {len(self.sims)} simulated seeds; "
            f"timeline events applied up to {self.lag * 1000:.0f} ms late, probes took up "
            f"to {self.probe_duration * 1000:.0f} ms, requests sent up to "
            f"{self.behind * 1000:.0f} ms behind schedule",
            "",
        ]
        rows = [("point", "real", "p5", "median", "p95", "rank", f"seed {self.scenario.seed}", "")]
        rows += [
            (
                p.name,
                _num(p.real),
                _num(p.low),
                _num(p.median),
                _num(p.high),
                f"{p.rank:.0%}",
                _num(p.replay),
                "" if p.inside else "OUTSIDE",
            )
            for p in self.points
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for n, r in enumerate(rows):
            cells = [
                r[0].ljust(widths[0]),
                *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)),
            ]
            lines.append("  ".join(cells).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        outside = sum(1 for p in self.points if not p.inside)
        lines += [
            "",
            f"{outside} of {len(self.points)} points outside the 5-95 % band "
            f"({self.outside:.1%}; at most {OUTSIDE_LIMIT:.0%} allowed)",
        ]
        for v in d["expectations"]:
            lines.append(f"{'ok  ' if v['ok'] else 'FAIL'} {v['name']}: {v['detail']}")
        if self.inconclusive is not None:
            lines += ["", f"INCONCLUSIVE: {self.inconclusive}"]
        return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    if x is None:
        return "never"
    if x != x:
        return "-"
    if x == float("inf"):
        return "never"
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def simulate_seeds(path: Path, seeds: int, simulate: Simulate) -> list[dict[str, Any]]:
    """``simulate`` the scenario at ``path`` with seeds 1..N."""
    return [simulate(load_scenario(path, seed=seed)).data for seed in range(1, seeds + 1)]


def rehearse(
    path: str | Path,
    *,
    seeds: int = 20,
    speed: float = 1.0,
    rate: float = 1.0,
    workdir: Path | None = None,
    simulate: Simulate = run_scenario,
) -> Rehearsal:
    """Rehearse the scenario at ``path`` (see the module docstring)."""
    load_scenario(path)  # every problem of the file as it was written (ConfigError, exit 2)
    with tempfile.TemporaryDirectory(prefix="tunnel-lb-rehearse-") as tmp:
        directory = workdir or Path(tmp)
        try:
            scenario_path, config_path = scaled_files(Path(path), speed, directory / "scaled", rate)
        except SpeedError as exc:
            raise RehearsalError(str(exc)) from None
        sc = load_scenario(scenario_path)
        problems = unrehearsable(sc)
        if problems:
            raise RehearsalError("cannot be rehearsed on one machine: " + "; ".join(problems))
        raw_config = json.loads(config_path.read_text("utf-8"))
        real, driven, timeouts, unexcused = trio.run(_real, sc, raw_config, directory)
        lag, cost, behind = driven.lag, driven.probe_duration, driven.behind
        sims = simulate_seeds(scenario_path, seeds, simulate)
        replay = next((s for s in sims if s["seed"] == sc.seed), None)
        if replay is None:  # the real run's seed is not among 1..N
            replay = simulate(sc).data
    pools = [p.name for p in sc.config.pools]
    points = compare(real.data, sims, pools, lag=lag, cost=cost, behind=behind, replay=replay)
    return Rehearsal(
        sc,
        speed,
        rate,
        real,
        tuple(sims),
        tuple(points),
        lag,
        cost,
        behind,
        in_words(timeouts),
        driven.starved,
        in_words(unexcused),
    )


async def _real(
    sc: Scenario, raw_config: dict[str, Any], directory: Path
) -> tuple[Report, Driven, list[Timeout], list[Timeout]]:
    """The real run: its report, what the driver measured, the timeouts the scenario does
    not explain, and those of them the machine does not explain either
    (:mod:`lb.rehearse.stalls`)."""
    try:
        async with running(sc, raw_config, directory, seed=sc.seed) as stack:
            driven = await drive(sc, stack)
            log = stack.log
            replicas = await stack.answered()
            paths = {
                f"{p.name}/{o.name}": stack.path(sc, f"{p.name}/{o.name}")
                for p in sc.config.pools
                for o in p.origins
            }
    except (StartError, RuntimeError) as exc:
        raise RehearsalError(str(exc)) from None
    except BaseExceptionGroup as group:  # from the driver's nurseries
        found, _ = group.split((StartError, RuntimeError))
        if found is None:
            raise
        first = found.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise RehearsalError(str(first)) from None
    report = real_report(sc, driven.sent, log, driven.mono, driven.probes, replicas)
    users = user_timeouts(log_lines(log), driven.mono, sc.duration)
    transitions = report.data["transitions"]
    timeouts = unexplained(sc, driven.timed_out, users, transitions)
    unexcused = [t for t in timeouts if not held(t, driven.samples, paths.get(t.endpoint, []))]
    return report, driven, timeouts, unexcused
