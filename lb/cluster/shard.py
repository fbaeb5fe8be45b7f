"""A monitor scheduler that runs only the probes this replica owns.

:class:`ShardedScheduler` is the ordinary :class:`~monitors.scheduler.Scheduler` with one
difference: :meth:`ShardedScheduler.update` keeps the full job list and runs the subset that
``owns(job)`` accepts.  The cluster driver calls :meth:`ShardedScheduler.reshard` when the
live members of this vantage point change; the scheduler's own update keeps unchanged jobs'
tasks and connections, starts newly owned jobs at a random offset within their interval and
cancels jobs handed to a peer.  Reloads (``ReloadFn``) call ``update`` as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from monitors.scheduler import Scheduler
from monitors.spec import Job

__all__ = ["ShardedScheduler"]


class ShardedScheduler(Scheduler):
    """See the module docstring; ``owns`` defaults to every job (no cluster yet)."""

    owns: Callable[[Job], bool] = staticmethod(lambda job: True)
    _all: list[Job]

    def update(self, jobs: Iterable[Job]) -> None:
        """Keep ``jobs`` as the full list and run the owned ones."""
        self._all = list(jobs)
        super().update(j for j in self._all if self.owns(j))

    def reshard(self, owns: Callable[[Job], bool]) -> None:
        """Apply a new ownership rule to the full job list."""
        self.owns = owns
        self.update(getattr(self, "_all", []))

    @property
    def all_jobs(self) -> list[Job]:
        """Every job of the configuration, owned or not."""
        return list(getattr(self, "_all", []))
