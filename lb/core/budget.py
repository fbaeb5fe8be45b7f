"""The retry budget: retries may be at most a share of the requests in flight.

Why a budget
============

A retry is a second request.  When an endpoint fails for a reason another endpoint shares
(a database behind every endpoint, an overloaded pool), retrying every failure doubles the
load just when there is least capacity for it, and a per-request retry limit does not stop
that: it caps each request, not their sum.  The budget caps the sum.  Envoy's retry budgets
are the model (``budget_percent`` of active requests, at least ``min_retry_concurrency``
retries): a new retry is allowed only while the retries in flight stay below
``max(min_retry_concurrency, budget_percent% of the requests in flight)``.  While a few
requests fail, they are all retried; when most of them fail, most are answered with their
first failure instead.

A request counts once among the requests in flight from its first attempt to its answer,
and once among the retries in flight from its first retry to its answer, however many
retries it makes: the budget limits the requests that are retrying, which is what adds
load.  The proxy keeps one budget per load balancer, the simulator one per load balancer
and data center (``lb/proxy/exchange.py``, ``lb/sim/traffic.py``).

Pure: the owner calls :meth:`RetryBudget.started`, :meth:`~RetryBudget.retrying_now` and
:meth:`~RetryBudget.finished`;
:func:`lb.core.attempts.next_step` reads :meth:`allows`.
"""

from __future__ import annotations

__all__ = ["RetryBudget", "budget_cap"]


def budget_cap(active: int, percent: float, minimum: int) -> int:
    """How many requests may be retrying while ``active`` requests are in flight."""
    return max(minimum, int(active * percent / 100.0))


class RetryBudget:
    """The requests in flight on one load balancer, and how many of them are retrying."""

    __slots__ = ("active", "refused", "retrying")

    def __init__(self) -> None:
        self.active = 0
        """Requests started and not answered yet."""
        self.retrying = 0
        """Of those, the requests that made a retry."""
        self.refused = 0
        """Retries the budget refused so far (their requests got their first answer)."""

    def allows(self, percent: float, minimum: int) -> bool:
        """Whether one more request may start retrying now."""
        return self.retrying < budget_cap(self.active, percent, minimum)

    def started(self) -> None:
        """A request was sent to its first endpoint."""
        self.active += 1

    def retrying_now(self) -> None:
        """A request in flight started its first retry (the budget allowed it)."""
        self.retrying += 1

    def finished(self, retried: bool) -> None:
        """A request was answered; ``retried`` when it had counted as retrying."""
        self.active -= 1
        if retried:
            self.retrying -= 1
