"""``tunnel-lb rehearse``: run a scenario against real processes on loopback and show where
the real run falls in the simulator's spread (``docs/rehearse.md``).

Exit status: 0 when at most 5 % of the compared points fall outside the simulated 5-95 %
band and every expectation held in the real run; 1 otherwise, and whenever an expectation
failed in the real run, however loaded the machine (the real system did not do what the
scenario expects: a failure, not a comparison); 2 for a scenario that is invalid or cannot be
rehearsed on one machine; 3 when every expectation held but the machine was too loaded for
the comparison to say anything (``Rehearsal.inconclusive``, named on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from lb.rehearse import RehearsalError, rehearse
from lb.rehearse.plot import write_rehearsal_plot
from lb.sim.plot import PlotUnavailableError, require_matplotlib

NAME = "rehearse"
HELP = "Run a scenario against real processes on loopback; compare with the simulator."


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` above 0, else a one-line usage error."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("scenario", metavar="SCENARIO", help="scenario file (YAML)")
    parser.add_argument(
        "--seeds", type=_positive(int), default=20, help="simulated seeds (default 20)"
    )
    parser.add_argument(
        "--speed",
        type=_positive(float),
        default=1.0,
        help="divide every time of the scenario and its configuration by X (default 1)",
    )
    parser.add_argument(
        "--rate",
        type=_positive(float),
        default=1.0,
        help="multiply every traffic rate by F on both sides (default 1), for a busy machine",
    )
    parser.add_argument("--json", metavar="FILE", help="write the comparison and real report")
    parser.add_argument("--plot", metavar="FILE.png", help="chart: real values over the bands")


def run(args: argparse.Namespace) -> int:
    """Rehearse, print the table, write the requested files; see the module docstring."""
    if args.plot:
        try:
            require_matplotlib()
        except PlotUnavailableError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        result = rehearse(args.scenario, seeds=args.seeds, speed=args.speed, rate=args.rate)
    except RehearsalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        result.write_json(args.json)
    if args.plot:
        write_rehearsal_plot(result, args.plot)
    sys.stdout.write(result.table())
    if result.inconclusive is not None:
        print(f"inconclusive: {result.inconclusive}", file=sys.stderr)
        return 3 if result.real.ok else 1
    return 0 if result.ok else 1
