"""Passive health with worker processes, without processes: the parent counts its
children's attempt outcomes with its own and alone decides; children follow its ejections
and returns (lb/workers.py, ``outcomes`` and ``ejection``)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))

from core_builders import health_view, make_config, make_pool, result

from lb.config.model import Config, PassiveHealth
from lb.core.passive import Outcome
from lb.engine import Engine
from lb.metrics import Metrics
from lb.workers import (
    BATCH_SIZE,
    BATCH_WINDOW,
    FROM_CHILD,
    FROM_PARENT,
    MAX_PENDING,
    Ejection,
    Message,
    Outcomes,
    Probe,
    Restore,
    Workers,
    _apply,
    _OutcomeBatch,
    decode,
    encode,
)

ON = PassiveHealth(consecutive_5xx=5, base_ejection_time=10)
E502 = Outcome(502)


def passive_config() -> Config:
    cfg = make_config(make_pool("a", 2), make_pool("b", 1))
    return dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, passive_health=ON))


def selectable(engine: Engine, pool: str = "a") -> list[str]:
    return [e.name for e in engine.book.snapshot().pools[pool].selectable]


class Parent:
    """A parent engine with :class:`Workers` feeding one child's queue (no process)."""

    def __init__(self, config: Config) -> None:
        self.engine = Engine(config, now=trio.current_time())
        self.workers = Workers(self.engine, Metrics(), count=1, command=["false"], seeds=int)
        send, self.pipe = trio.open_memory_channel[bytes](1000)
        self.workers.slots[0].queue = send

    def sent(self) -> list[Message]:
        """What the parent queued for the child since the last call, decoded as the child
        decodes it."""
        out = []
        while True:
            try:
                line = self.pipe.receive_nowait()
            except trio.WouldBlock:
                return out
            out.append(decode(line, FROM_PARENT))

    def probe(self, endpoint: str, ok: bool, at: float) -> None:
        pool = endpoint.partition("-")[0]
        self.engine.apply(result(pool, endpoint, ok, at=at))


def child_of(config: Config) -> tuple[Engine, list[tuple[str, str, Outcome]]]:
    """A child worker's engine and the outcomes it hands on (instead of counting them)."""
    handed: list[tuple[str, str, Outcome]] = []
    engine = Engine(
        config, now=trio.current_time(), outcomes=lambda *o: handed.append((o[0], o[1], o[2]))
    )
    return engine, handed


def deliver(parent: Parent, child: Engine) -> list[Message]:
    """The parent's queued messages, applied by the child as its control loop does."""
    messages = parent.sent()
    for message in messages:
        assert _apply(child, message)
    return messages


async def test_the_parent_ejects_on_its_own_and_a_childs_outcomes_together() -> None:
    config = passive_config()
    parent = Parent(config)
    child, handed = child_of(config)
    t = trio.current_time()
    for endpoint in ("a-0", "a-1", "b-0"):
        parent.probe(endpoint, True, t)
    deliver(parent, child)
    assert health_view(child.book) == health_view(parent.engine.book) and selectable(child) == [
        "a-0",
        "a-1",
    ]

    # The child's own traffic: counted by nobody in the child, however many failures.
    for _ in range(7):
        assert child.outcome("a", "a-0", status=502, now=t + 1) == []
    assert handed == [("a", "a-0", E502)] * 7
    ejector = child.book.passive("a", "a-0")
    assert ejector is not None and not ejector.ejected and ejector.error_run == 0
    assert selectable(child) == ["a-0", "a-1"]

    # The parent saw two 502 itself, then three of the child's arrive: five in a row.
    for _ in range(2):
        assert parent.engine.outcome("a", "a-0", status=502, now=t + 1) == []
    batch = Outcomes((("a", "a-0", E502, 3),))
    message = decode(encode(batch), FROM_CHILD)
    assert message == batch
    assert isinstance(message, Outcomes)
    parent.workers.count_outcomes(message)
    decided = parent.engine.book.passive("a", "a-0")
    assert decided is not None and decided.ejected
    assert decided.reason == "passive: 5 consecutive 502"
    assert selectable(parent.engine) == ["a-1"]

    # The ejection reaches the child, which steers around it exactly as the parent does.
    (ejection,) = deliver(parent, child)
    assert isinstance(ejection, Ejection) and ejection.state.ejected
    assert health_view(child.book) == health_view(parent.engine.book) and selectable(child) == [
        "a-1"
    ]
    assert ejector.ejected and abs(ejector.until - decided.until) < 1e-3

    # A passing check before the ejection time returns nothing, in either process.
    parent.probe("a-0", True, t + 5)
    deliver(parent, child)
    assert selectable(parent.engine) == selectable(child) == ["a-1"]

    # After it, the parent returns the endpoint.  The child applies the same probe first and
    # still holds it out (it never returns one on its own), then follows the return.
    parent.probe("a-0", True, decided.until + 1)
    probe, returned = parent.sent()
    assert isinstance(probe, Probe) and isinstance(returned, Ejection)
    assert _apply(child, probe)
    assert selectable(child) == ["a-1"] and ejector.ejected
    assert _apply(child, returned)
    assert not ejector.ejected
    assert health_view(child.book) == health_view(parent.engine.book) and selectable(child) == [
        "a-0",
        "a-1",
    ]


async def test_a_child_started_during_an_ejection_gets_it_in_restore() -> None:
    config = passive_config()
    parent = Parent(config)
    t = trio.current_time()
    for endpoint in ("a-0", "a-1", "b-0"):
        parent.probe(endpoint, True, t)
    for _ in range(5):
        parent.engine.outcome("a", "a-1", status=503, now=t + 1)
    assert selectable(parent.engine) == ["a-0"]
    restore = decode(encode(parent.workers._runs.restore_message(parent.engine)), FROM_PARENT)
    assert isinstance(restore, Restore) and [e.endpoint for e in restore.ejected] == ["a-1"]
    child, _ = child_of(config)
    assert _apply(child, restore)
    assert health_view(child.book) == health_view(parent.engine.book) and selectable(child) == [
        "a-0"
    ]
    ejector = child.book.passive("a", "a-1")
    assert ejector is not None and ejector.ejected
    assert ejector.reason == "passive: 5 consecutive 503"


async def test_the_parent_ignores_outcomes_for_endpoints_it_does_not_know() -> None:
    parent = Parent(passive_config())
    t = trio.current_time()
    for endpoint in ("a-0", "a-1", "b-0"):
        parent.probe(endpoint, True, t)
    parent.sent()
    parent.workers.count_outcomes(Outcomes((("a", "gone", E502, 50), ("nope", "a-0", E502, 50))))
    assert selectable(parent.engine) == ["a-0", "a-1"] and parent.sent() == []


async def test_a_child_sends_its_outcomes_in_order_in_batches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    batch = _OutcomeBatch()
    sent: list[tuple[float, Outcomes]] = []

    async def send(message: Outcomes) -> None:
        sent.append((trio.current_time(), message))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(batch.run, send)
        start = trio.current_time()
        for endpoint in ("a-0", "a-0", "a-0", "a-1", "a-0"):
            batch.add("a", endpoint, E502)
        batch.add("a", "a-0", Outcome(200))
        await trio.sleep(1)
        assert len(sent) == 1  # one message for the burst, a window after its first outcome
        at, message = sent[0]
        assert abs(at - start - BATCH_WINDOW) < 1e-9
        assert message.runs == (
            ("a", "a-0", E502, 3),
            ("a", "a-1", E502, 1),
            ("a", "a-0", E502, 1),
            ("a", "a-0", Outcome(200), 1),
        )

        start = trio.current_time()
        for _ in range(BATCH_SIZE):  # a full batch goes at once, without the window
            batch.add("a", "a-1", E502)
        await trio.testing.wait_all_tasks_blocked()
        assert len(sent) == 2 and sent[1][0] == start
        assert sent[1][1].runs == (("a", "a-1", E502, BATCH_SIZE),)
        assert batch.take() is None
        nursery.cancel_scope.cancel()


async def test_a_blocked_pipe_keeps_a_bounded_batch_and_sends_it_in_messages_of_batch_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
    batch = _OutcomeBatch()
    sent: list[Outcomes] = []
    unblock = trio.Event()

    async def send(message: Outcomes) -> None:
        await unblock.wait()  # the parent is not reading
        sent.append(message)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(batch.run, send)
        batch.add("a", "a-0", E502)
        await trio.sleep(1)  # the first message is taken and stuck in send
        for i in range(MAX_PENDING + 5):  # round robin: one run per outcome
            batch.add("a", f"a-{i % 2}", E502)
        assert batch.size == MAX_PENDING and batch.dropped == 5
        unblock.set()
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert sent[0].runs == (("a", "a-0", E502, 1),)
    assert all(sum(n for *_, n in m.runs) <= BATCH_SIZE for m in sent)
    rows = [row for m in sent[1:] for row in m.runs]
    assert [e for _, e, _, _ in rows] == [f"a-{i % 2}" for i in range(MAX_PENDING)]
    assert batch.size == 0 and batch.dropped == 0


async def test_a_long_run_is_split_over_messages_in_order() -> None:
    batch = _OutcomeBatch()
    for _ in range(BATCH_SIZE + 10):
        batch.add("a", "a-0", E502)
    batch.add("a", "a-1", Outcome(200))
    first, second = batch.take(), batch.take()
    assert first is not None and second is not None and batch.take() is None
    assert first.runs == (("a", "a-0", E502, BATCH_SIZE),)
    assert second.runs == (("a", "a-0", E502, 10), ("a", "a-1", Outcome(200), 1))
    assert not batch.queued.is_set() and not batch.full.is_set()


async def test_a_child_sends_no_outcomes_for_a_pool_without_passive_health() -> None:
    cfg = passive_config()
    off = dataclasses.replace(cfg.pools[1], passive_health=PassiveHealth(enabled=False))
    child, handed = child_of(dataclasses.replace(cfg, pools=(cfg.pools[0], off)))
    now = trio.current_time()
    child.outcome("b", "b-0", status=502, now=now)
    child.outcome("a", "a-0", status=502, now=now)
    assert handed == [("a", "a-0", E502)]
