"""``tunnel-lb run`` freezes what startup made, so that full collections stop walking it."""

from __future__ import annotations

import gc
import weakref

from lb.commands import run as run_command


class _Node:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_startup_garbage_is_collected_and_the_rest_frozen() -> None:
    garbage = _Node()
    ref = weakref.ref(garbage)
    del garbage
    thresholds = gc.get_threshold()
    try:
        run_command._freeze_startup_objects()
        assert ref() is None  # collected first, not kept forever in the frozen generation
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == 10_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert gc.get_freeze_count() == 0
