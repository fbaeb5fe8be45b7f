"""The report of a run: the JSON document, the CSV files and the summary table.

The JSON document is the source of truth (its schema is in ``docs/simulate.md``); the table
and the CSV files are views of it.  It is built from sorted keys and rounded times only, so
the same seed and scenario give byte-identical output.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lb.sim.expect import Failover, Verdict
from lb.sim.record import Recorder, Window
from lb.sim.scenario import Scenario
from lb.sim.spec import TimelineAction, seconds

__all__ = ["Report", "build_report"]

SCHEMA = "tunnel-lb/simulate/1"


def _sorted(d: Mapping[str, int]) -> dict[str, int]:
    return {k: d[k] for k in sorted(d) if d[k]}


def _by_pool(by_endpoint: Mapping[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, n in by_endpoint.items():
        if key:
            pool = key.split("/", 1)[0]
            out[pool] = out.get(pool, 0) + n
    return _sorted(out)


def _window(w: Window) -> dict[str, object]:
    return {
        "start": round(w.start, 6),
        "end": round(w.end, 6),
        "requests": w.requests,
        "errors": w.errors,
        "by_pool": _by_pool(w.by_endpoint),
        "by_endpoint": _sorted(w.by_endpoint),
        "errors_by_endpoint": _sorted({k: v for k, v in w.errors_by_endpoint.items() if k}),
        "by_replica": _sorted(w.by_replica),
        "by_datacenter": _sorted(w.by_datacenter),
    }


@dataclass(frozen=True, slots=True)
class Report:
    """A finished run; :attr:`data` is the JSON document."""

    data: dict[str, Any]
    verdicts: tuple[Verdict, ...]

    @property
    def ok(self) -> bool:
        """True when every expectation held."""
        return all(v.ok for v in self.verdicts)

    def to_json(self) -> str:
        """The JSON document, deterministic for one seed and scenario."""
        return json.dumps(self.data, indent=2, sort_keys=False) + "\n"

    def write_json(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path``."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    def write_csv(self, directory: str | Path) -> list[Path]:
        """``windows.csv`` (one row per window and endpoint) and ``transitions.csv``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        windows = out / "windows.csv"
        with windows.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(
                [
                    "start",
                    "end",
                    "endpoint",
                    "requests",
                    "share",
                    "window_requests",
                    "window_errors",
                ]
            )
            for win in self.data["windows"]:
                total = win["requests"]
                for key, n in win["by_endpoint"].items():
                    share = f"{n / total:.6f}" if total else "0"
                    w.writerow([win["start"], win["end"], key, n, share, total, win["errors"]])
        transitions = out / "transitions.csv"
        with transitions.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            fields = ["at", "pool", "endpoint", "vantage", "from", "to", "reason"]
            w.writerow(fields)
            for tr in self.data["transitions"]:
                w.writerow([tr[k] for k in fields])
        return [windows, transitions]

    # ------------------------------------------------------------------ the table

    def summary(self) -> str:
        """The human summary printed on stdout."""
        d = self.data
        lines = [
            f"scenario {d['scenario']}: {seconds(d['duration'])} virtual, seed {d['seed']}, "
            f"{d['requests']} requests, {d['errors']} errors, "
            f"{d['retries']} zero-downtime retries, {d['probes']} probes"
            + (f", {d['stale_retries']} stale-connection retries" if d["stale_retries"] else "")
            + (f", {d['retry_on_retries']} retry_on retries" if d["retry_on_retries"] else "")
            + (
                f", {d['retry_budget_refusals']} refused by the retry budget"
                if d["retry_budget_refusals"]
                else ""
            ),
            "",
        ]
        rows: list[tuple[str, ...]] = [("pool / endpoint", "requests", "share", "errors")]
        total = d["requests"] or 1
        for pool, n in d["by_pool"].items():
            rows.append((pool, str(n), f"{n / total:.1%}", str(d["errors_by_pool"].get(pool, 0))))
            for key, m in d["by_endpoint"].items():
                if key.split("/", 1)[0] == pool:
                    errs = d["errors_by_endpoint"].get(key, 0)
                    rows.append((f"  {key}", str(m), f"{m / total:.1%}", str(errs)))
        if d["unrouted"]:
            n = d["unrouted"]
            rows.append(("(no pool: 530)", str(n), f"{n / total:.1%}", str(n)))
        lines += _table(rows)
        if d["by_replica"]:
            lines.append("")
            rows = [("replica", "attempts", "share")]
            rtotal = sum(d["by_replica"].values()) or 1
            rows += [(k, str(n), f"{n / rtotal:.1%}") for k, n in d["by_replica"].items()]
            lines += _table(rows)
        if d["failovers"]:
            lines.append("")
            rows = [("failover", "cause", "failed", "detected", "drained")]
            for f in d["failovers"]:
                rows.append(
                    (
                        f"{f['pool']}/{f['endpoint']}",
                        f["cause"],
                        seconds(f["failed_at"]),
                        _delta(f["detected_at"], f["failed_at"]),
                        _delta(f["drained_at"], f["failed_at"]),
                    )
                )
            lines += _table(rows)
        aff = d["affinity"]
        if aff["mode"] != "none":
            lines.append("")
            lines.append(
                f"affinity {aff['mode']} (zero_downtime_failover {aff['zero_downtime_failover']}): "
                f"{aff['sessions']} sessions, {aff['broken']} broken "
                f"({aff['remapped']} remapped, {aff['rewritten']} rewritten by retry), "
                f"{aff['served_elsewhere']} served elsewhere, {aff['pinned_errors']} pinned errors"
            )
        long = d["long_sessions"]
        if long:
            by = ", ".join(f"{k} {n}" for k, n in long["dropped_by_endpoint"].items())
            lines.append("")
            lines.append(
                f"long sessions: {long['opened']} opened, {long['dropped']} dropped by failures"
                f"{f' ({by})' if by else ''}, {long['completed']} completed, "
                f"{long['open_at_end']} open at the end, {long['refused']} refused, "
                f"{long['retried']} opened after a zero-downtime retry"
            )
        health = sum(1 for t in d["transitions"] if t["vantage"] == "*")
        lines.append("")
        lines.append(f"health transitions: {health} (aggregate), {len(d['transitions'])} in all")
        if d["expectations"]:
            lines.append("")
            for v in d["expectations"]:
                mark = "ok  " if v["ok"] else "FAIL"
                lines.append(f"{mark} {v['name']}: {v['detail']}")
        return "\n".join(lines) + "\n"


def _delta(at: float | None, base: float) -> str:
    return "never" if at is None else f"+{seconds(at - base)}"


def fault_windows(sc: Scenario) -> list[dict[str, Any]]:
    """The timeline's faults as ``{start, end, label}`` spans, for the plot's shading.

    A fault lasts from its ``at`` to the first later ``recover`` of the same target (its own
    ``until`` or an explicit one), or to the end of the run; a ``disable`` lasts to the next
    ``enable`` of the same endpoint or pool.
    """
    spans: list[dict[str, Any]] = []
    for e in sc.events:
        if e.action == TimelineAction.RECOVER:
            continue
        same = (e.address, e.replicas, e.scope)
        end = min(
            (
                r.at
                for r in sc.events
                if r.action == TimelineAction.RECOVER
                and r.at > e.at
                and (r.address, r.replicas, r.scope) == same
            ),
            default=sc.duration,
        )
        spans.append({"start": e.at, "end": end, "label": e.label})
    for c in sc.changes:
        if c.action != TimelineAction.DISABLE:
            continue
        end = min(
            (
                r.at
                for r in sc.changes
                if r.action == TimelineAction.ENABLE
                and r.at > c.at
                and (r.pool, r.endpoint) == (c.pool, c.endpoint)
            ),
            default=sc.duration,
        )
        spans.append({"start": c.at, "end": end, "label": c.label})
    return sorted(spans, key=lambda s: (s["start"], s["end"], s["label"]))


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def build_report(
    rec: Recorder, failovers: list[Failover], verdicts: list[Verdict], probes: int
) -> Report:
    """Assemble the JSON document from the recorder's tallies."""
    sc = rec.scenario
    totals = rec.totals()
    lb = sc.config.load_balancers[0]
    attrs = lb.session_affinity_attributes
    affinity: dict[str, object] = {
        "mode": lb.affinity,
        "zero_downtime_failover": attrs.zero_downtime_failover,
    }
    for key in (
        "sessions",
        "hits",
        "broken",
        "remapped",
        "rewritten",
        "served_elsewhere",
        "pinned_errors",
        "expired",
    ):
        affinity[key] = rec.affinity.get(key, 0)
    transitions = [
        {
            "at": round(t.at, 6),
            "pool": t.pool,
            "endpoint": t.endpoint,
            "vantage": t.vantage,
            "from": t.before,
            "to": t.after,
            "reason": t.reason,
        }
        for t in rec.transitions
    ]
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "scenario": sc.name,
        "seed": sc.seed,
        "duration": sc.duration,
        "tick": sc.tick,
        "report_interval": sc.report_interval,
        "requests": totals.requests,
        "errors": totals.errors,
        "unrouted": rec.unrouted,
        "retries": rec.retries,
        "stale_retries": rec.stale_retries,
        "retry_on_retries": rec.retry_on,
        "retry_budget_refusals": rec.budget_refused,
        "statuses": {str(k): rec.statuses[k] for k in sorted(rec.statuses)},
        "by_pool": _by_pool(totals.by_endpoint),
        "by_endpoint": _sorted(totals.by_endpoint),
        "by_replica": _sorted(totals.by_replica),
        "by_datacenter": _sorted(totals.by_datacenter),
        "errors_by_pool": _by_pool(totals.errors_by_endpoint),
        "errors_by_endpoint": _sorted({k: v for k, v in totals.errors_by_endpoint.items() if k}),
        "windows": [_window(w) for w in rec.windows],
        "transitions": transitions,
        "faults": fault_windows(sc),
        "failovers": [f.as_json() for f in failovers],
        "affinity": affinity,
        "long_sessions": rec.long_sessions.as_json()
        if rec.long_sessions.opened or rec.long_sessions.refused
        else None,
        "probes": probes,
        "checks": rec.checks,
        "expectations": [v.as_json() for v in verdicts],
        "ok": all(v.ok for v in verdicts),
    }
    return Report(data=data, verdicts=tuple(verdicts))
