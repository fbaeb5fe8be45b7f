"""The health state machine (R11, R12, R14, R15) with example tests and property tests."""

from __future__ import annotations

import pytest
from core_builders import make_config, make_pool, result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from lb.core.book import HealthBook
from lb.core.health import Change, Check, Health, majority

FAST = settings(max_examples=150, deadline=None, derandomize=True)

H, U, K = Health.HEALTHY, Health.UNHEALTHY, Health.UNKNOWN


def run(check: Check, results: str) -> list[Health]:
    """Feed ``+`` (pass) / ``-`` (fail) results; the state after each."""
    out = []
    for c in results:
        check.observe(c == "+")
        out.append(check.state)
    return out


# --------------------------------------------------------------------------- R11


def test_r11_check_starts_unknown() -> None:
    assert Check(consecutive_up=0, consecutive_down=0).state is K


def test_r11_unknown_endpoint_is_not_eligible_nor_counted_for_minimum_origins() -> None:
    hb = HealthBook(make_config(make_pool("a", 2, minimum_origins=1)))
    view = hb.snapshot().pools["a"]
    assert [e.health for e in view.endpoints] == [K, K]
    assert view.healthy_count == 0
    assert not view.eligible
    assert view.selectable == ()
    hb.apply(result("a", "a-0", True))
    view = hb.snapshot().pools["a"]
    assert view.healthy_count == 1 and view.eligible
    assert [e.name for e in view.selectable] == ["a-0"]


# --------------------------------------------------------------------------- R12 examples


@pytest.mark.parametrize(
    ("up", "down", "results", "states"),
    [
        # consecutive_* = 0 is treated as 1: the first disagreeing result flips (question 3).
        (0, 0, "+-+", [H, U, H]),
        (1, 1, "-+-", [U, H, U]),
        # from healthy: consecutive_down=3 failures in a row
        (1, 3, "+--+---", [H, H, H, H, H, H, U]),
        # from unhealthy: consecutive_up=2 passes in a row; a failure resets the run
        (2, 1, "-+-++", [U, U, U, U, H]),
        # from unknown: whichever run completes first
        (3, 2, "++--", [K, K, K, U]),
        (2, 3, "--++", [K, K, K, H]),
        (2, 2, "+-+-+-", [K] * 6),
    ],
)
def test_r12_hysteresis(up: int, down: int, results: str, states: list[Health]) -> None:
    assert run(Check(consecutive_up=up, consecutive_down=down), results) == states


def test_r12_agreeing_result_resets_the_opposite_run() -> None:
    check = Check(consecutive_up=1, consecutive_down=2)
    run(check, "+")
    assert run(check, "-+-") == [H, H, H]  # the pass in between reset the failure run
    assert run(check, "-") == [U]


def test_r12_observe_reports_pending_and_changed() -> None:
    check = Check(consecutive_up=2, consecutive_down=1)
    assert check.observe(True) is Change.PENDING
    assert check.observe(True) is Change.CHANGED
    assert check.observe(True) is Change.UNCHANGED
    assert check.observe(False) is Change.CHANGED


# --------------------------------------------------------------------------- R12 properties


@FAST
@given(
    up=st.integers(0, 4),
    down=st.integers(0, 4),
    results=st.lists(st.booleans(), max_size=40),
)
def test_r12_state_machine_invariants(up: int, down: int, results: list[bool]) -> None:
    """Walk a Check and a one-vantage HealthBook through the same results.

    * never healthy before max(1, up) passes in a row from unknown/unhealthy (and the mirror
      for unhealthy);
    * N passes (failures) in a row with N >= max(1, up) (max(1, down)) always mean healthy
      (unhealthy);
    * ``observe`` says CHANGED, and the book emits events, exactly when the state changes.
    """
    up_needed, down_needed = max(1, up), max(1, down)
    check = Check(consecutive_up=up, consecutive_down=down)
    hb = HealthBook(make_config(make_pool("a", 1), up=up, down=down))
    passes = fails = 0
    for i, ok in enumerate(results):
        passes, fails = (passes + 1, 0) if ok else (0, fails + 1)
        before = check.state
        change = check.observe(ok)
        after = check.state
        events = hb.apply(result("a", "a-0", ok, at=float(i)))

        if before is not H and after is H:
            assert passes >= up_needed
        if before is not U and after is U:
            assert fails >= down_needed
        if passes >= up_needed:
            assert after is H
        if fails >= down_needed:
            assert after is U
        assert (change is Change.CHANGED) == (after is not before)
        if after is before:
            assert events == []
        else:
            # one per vantage point that changed, one for the aggregate (R15)
            assert [(e.vantage, e.before, e.after) for e in events] == [
                ("local", before, after),
                ("*", before, after),
            ]
        assert hb.snapshot().pools["a"].endpoints[0].health is after


def _model_majority(states: list[Health]) -> Health:
    """R14 as the docs state it: healthy iff more than half of all vantage points are; no
    verdict until more than half have one."""
    n = len(states)
    if states.count(H) * 2 > n:
        return H
    if (n - states.count(K)) * 2 <= n:
        return K
    return U


class BookMachine(RuleBasedStateMachine):
    """Random probe results over 2 endpoints x 3 vantage points against a reference model."""

    VANTAGES = ("v1", "v2", "v3")

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = 2, 3
        self.hb = HealthBook(
            make_config(make_pool("a", 2), up=self.up, down=self.down, vantage_points=self.VANTAGES)
        )
        self.runs: dict[tuple[str, str], tuple[int, int]] = {}
        self.states: dict[tuple[str, str], Health] = {}
        self.aggregate = {"a-0": K, "a-1": K}
        self.clock = 0.0

    @rule(
        endpoint=st.sampled_from(["a-0", "a-1"]),
        vantage=st.sampled_from(VANTAGES),
        ok=st.booleans(),
    )
    def probe(self, endpoint: str, vantage: str, ok: bool) -> None:
        self.clock += 1
        key = (endpoint, vantage)
        passes, fails = self.runs.get(key, (0, 0))
        passes, fails = (passes + 1, 0) if ok else (0, fails + 1)
        before = self.states.get(key, K)
        after = before
        if ok and passes >= self.up and before is not H:
            after, passes = H, 0
        if not ok and fails >= self.down and before is not U:
            after, fails = U, 0
        self.runs[key] = (passes, fails)
        self.states[key] = after
        agg_before = self.aggregate[endpoint]
        agg_after = _model_majority([self.states.get((endpoint, v), K) for v in self.VANTAGES])
        self.aggregate[endpoint] = agg_after

        events = self.hb.apply(result("a", endpoint, ok, vantage=vantage, at=self.clock))
        expected = []
        if after is not before:
            expected.append((vantage, before, after))
            if agg_after is not agg_before:
                expected.append(("*", agg_before, agg_after))
        assert [(e.vantage, e.before, e.after) for e in events] == expected
        assert all(e.at == self.clock and e.endpoint == endpoint for e in events)

    @invariant()
    def snapshot_matches_model(self) -> None:
        view = self.hb.snapshot().pools["a"]
        for e in view.endpoints:
            assert e.health is self.aggregate[e.name]
            for v in self.VANTAGES:
                assert e.vantage_health[v] is self.states.get((e.name, v), K)
        assert view.eligible == any(h is H for h in self.aggregate.values())


BookMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
test_r12_r14_r15_book_state_machine = BookMachine.TestCase


# --------------------------------------------------------------------------- R14 majority


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([H], H),
        ([U], U),
        ([K], K),
        ([H, H, U], H),
        ([H, U, U], U),
        ([H, U], U),  # a tie is not a majority for healthy (question 6)
        ([H, K], K),
        ([H, H, K], H),
        ([U, K, K], K),
        ([H, U, K], U),  # 2 of 3 have a verdict, and healthy is not a majority of 3
        ([H, H, U, U], U),
    ],
)
def test_r14_majority(states: list[Health], expected: Health) -> None:
    assert majority(states) is expected


def test_r14_endpoint_health_is_the_majority_of_vantage_points() -> None:
    hb = HealthBook(make_config(make_pool("a", 1), vantage_points=("WEU", "ENAM", "SEAS")))
    hb.apply(result("a", "a-0", True, vantage="WEU"))
    assert hb.snapshot().pools["a"].endpoints[0].health is K  # 1 of 3: no majority yet
    hb.apply(result("a", "a-0", True, vantage="ENAM"))
    assert hb.snapshot().pools["a"].endpoints[0].health is H
    hb.apply(result("a", "a-0", False, vantage="SEAS"))
    assert hb.snapshot().pools["a"].endpoints[0].health is H  # 2 of 3 healthy
    hb.apply(result("a", "a-0", False, vantage="WEU"))
    assert hb.snapshot().pools["a"].endpoints[0].health is U  # 2 of 3 unhealthy


def test_r14_result_from_unknown_vantage_point_is_ignored() -> None:
    hb = HealthBook(make_config(make_pool("a", 1), vantage_points=("WEU",)))
    assert hb.apply(result("a", "a-0", True, vantage="MARS")) == []
    assert hb.snapshot().pools["a"].endpoints[0].health is K
