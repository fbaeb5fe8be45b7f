"""Health monitors: probe drivers and pure judging of probe outcomes.

* :mod:`monitors.spec`: targets -> deduplicated probe :class:`~monitors.spec.Job` s (R4, R5, R7).
* :mod:`monitors.judge`: pure judging of a response (R1-R3).
* :mod:`monitors.reasons`: Cloudflare's failure reasons (pure).
* :mod:`monitors.failures`: the one exception -> reason mapping.
* :mod:`monitors.transport`: the transport seam (the simulator plugs in here), timeouts and
  retries (R8).
* :mod:`monitors.network`: the real transport (trio + ``SSLStream`` + h11, keep-alive).
* :mod:`monitors.scheduler`: spread, jittered, deduplicated, reloadable scheduling.
"""

from monitors.failures import classify
from monitors.network import NetworkTransport
from monitors.reasons import Reason
from monitors.scheduler import Scheduler, run_monitors
from monitors.spec import Job, Probe, jobs_for_config, plan, probe_for
from monitors.transport import (
    Exchange,
    ProbeSession,
    ProbeTransport,
    Verdict,
    probe_once,
    run_check,
)

__all__ = [
    "Exchange",
    "Job",
    "NetworkTransport",
    "Probe",
    "ProbeSession",
    "ProbeTransport",
    "Reason",
    "Scheduler",
    "Verdict",
    "classify",
    "jobs_for_config",
    "plan",
    "probe_for",
    "probe_once",
    "run_check",
    "run_monitors",
]
