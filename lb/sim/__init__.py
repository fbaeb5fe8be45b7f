"""The failure simulator: the LB's own engine, steering and monitors, in virtual time.

* :mod:`lb.sim.spec` / :mod:`lb.sim.scenario`: the scenario file, parsed and resolved;
* :mod:`lb.sim.network`: how endpoints answer probes and users, per vantage point;
* :mod:`lb.sim.traffic`: users per data center, decided in batches per tick;
* :mod:`lb.sim.run`: :func:`run_scenario`;
* :mod:`lb.sim.record`, :mod:`lb.sim.expect`, :mod:`lb.sim.report`: tallies, failovers,
  expectations, JSON / CSV / table; :mod:`lb.sim.plot`: the optional chart.
"""

from lb.sim.report import Report
from lb.sim.run import run_scenario
from lb.sim.scenario import Scenario, load_scenario, parse_scenario

__all__ = ["Report", "Scenario", "load_scenario", "parse_scenario", "run_scenario"]
