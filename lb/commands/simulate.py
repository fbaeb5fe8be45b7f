"""``tunnel-lb simulate``: run a failure scenario against an LB configuration, in virtual time.

The run uses the LB's own engine, steering and monitor scheduler (``docs/simulate.md``).  Exit
status: 0 when every expectation holds, 1 when one fails (each failure is printed with its
measured value and bound), 2 for an invalid scenario or configuration.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TextIO

from lb.sim.plot import PlotUnavailableError, require_matplotlib, write_plot
from lb.sim.run import Progress, run_scenario
from lb.sim.scenario import load_scenario

NAME = "simulate"
HELP = "Simulate failures against a configuration in virtual time; check expectations."

_SHOW_AFTER = 2.0
"""Seconds of wall time before the progress bar appears (short runs stay quiet)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("scenario", metavar="SCENARIO", help="scenario file (YAML)")
    parser.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    parser.add_argument("--csv", metavar="DIR", help="write windows.csv and transitions.csv")
    parser.add_argument("--plot", metavar="FILE.png", help="chart of traffic share over time")
    parser.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    parser.add_argument(
        "--quiet", action="store_true", help="no summary; print only failed expectations"
    )


def _eta(elapsed: float, fraction: float) -> str:
    return f"eta {elapsed * (1 - fraction) / fraction:.0f}s" if fraction > 0 else "eta ?"


def progress_bar(
    stream: TextIO, *, terminal: bool, clock: Callable[[], float] = time.monotonic
) -> Progress:
    """A progress callback on ``stream`` once the run has taken ``_SHOW_AFTER`` s.

    On a terminal, a bar redrawn in place; elsewhere (a CI log, a pipe), one line per 10 %,
    so the log shows the run is alive without a carriage-return mess.  Both show an ETA.
    """
    started = clock()
    shown = False
    last_tenth = 0

    def update(fraction: float) -> None:
        nonlocal shown, last_tenth
        elapsed = clock() - started
        if elapsed < _SHOW_AFTER and not shown:
            return
        if not terminal:
            tenth = int(fraction * 10 + 1e-9)
            if tenth > last_tenth and fraction < 1.0:
                last_tenth = tenth
                stream.write(f"simulating: {tenth * 10}% ({_eta(elapsed, fraction)})\n")
                stream.flush()
            shown = True
            return
        if fraction >= 1.0:
            if shown:
                stream.write("\r" + " " * 70 + "\r")
                stream.flush()
            return
        shown = True
        filled = int(fraction * 30)
        bar = f"[{'#' * filled}{'.' * (30 - filled)}]"
        stream.write(f"\rsimulating {bar} {fraction:4.0%} {_eta(elapsed, fraction)}   ")
        stream.flush()

    return update


def run(args: argparse.Namespace) -> int:
    """Load, simulate, write the requested outputs, print the summary; see the module doc."""
    scenario = load_scenario(args.scenario, seed=args.seed)
    for warning in scenario.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.plot:
        try:
            require_matplotlib()  # before the run, not after it
        except PlotUnavailableError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    progress = progress_bar(sys.stderr, terminal=sys.stderr.isatty())
    report = run_scenario(scenario, progress=progress)
    try:
        if args.json:
            report.write_json(args.json)
        if args.csv:
            report.write_csv(args.csv)
        if args.plot:
            write_plot(report.data, args.plot)
    except PlotUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a directory that does not exist, a read-only file system, ...
        print(f"error: cannot write {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        sys.stdout.write(report.summary())
    else:
        for v in report.verdicts:
            if not v.ok:
                print(f"FAIL {v.name}: {v.detail}")
    return 0 if report.ok else 1
