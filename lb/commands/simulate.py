"""``tunnel-lb simulate``: run a failure scenario against an LB configuration, in virtual time.

The run uses the LB's own engine, steering and monitor scheduler (``docs/simulate.md``).  Exit
status: 0 when every expectation holds, 1 when one fails (each failure is printed with its
measured value and bound), 2 for an invalid scenario or configuration.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from lb.sim.plot import PlotUnavailableError, write_plot
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


def progress_bar(stream: TextIO) -> Progress:
    """A progress callback drawing on ``stream`` once the run has taken ``_SHOW_AFTER`` s."""
    started = time.monotonic()
    shown = False

    def update(fraction: float) -> None:
        nonlocal shown
        if time.monotonic() - started < _SHOW_AFTER and not shown:
            return
        if fraction >= 1.0:
            if shown:
                stream.write("\r" + " " * 60 + "\r")
                stream.flush()
            return
        shown = True
        filled = int(fraction * 30)
        stream.write(f"\rsimulating [{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%}")
        stream.flush()

    return update


def run(args: argparse.Namespace) -> int:
    """Load, simulate, write the requested outputs, print the summary; see the module doc."""
    scenario = load_scenario(args.scenario, seed=args.seed)
    for warning in scenario.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    progress = progress_bar(sys.stderr) if sys.stderr.isatty() else None
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
