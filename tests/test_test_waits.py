"""Tests wait for events, not for time (tests/support/waiting.py): the one polling helper
behaves, and every other sleep in the suite says why it is there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio
from waiting import wait_until

TESTS = Path(__file__).resolve().parent
SLEEP = re.compile(r"\bsleep\(")


async def test_returns_the_first_truthy_value_of_a_sync_or_async_check() -> None:
    calls = []

    def sync() -> int:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    async def not_yet_then_value() -> str | None:
        await trio.lowlevel.checkpoint()
        return "ready" if len(calls) >= 3 else None

    assert await wait_until(sync) == 3
    assert await wait_until(not_yet_then_value) == "ready"


async def test_listed_exceptions_mean_not_yet() -> None:
    attempts = []

    def refused_twice() -> bool:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError
        return True

    assert await wait_until(refused_twice, ignore=(OSError,)) is True
    with pytest.raises(KeyError):
        await wait_until(lambda: {}["missing"], ignore=(OSError,))


async def test_a_timeout_fails_the_test_saying_what_it_waited_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(pytest.fail.Exception) as failed:
        await wait_until(lambda: 0, 2, what="the moon")
    assert str(failed.value) == "timed out after 2s waiting for the moon (last: 0)"
    with pytest.raises(pytest.fail.Exception) as unnamed:
        await wait_until(lambda: None, 1)
    assert f"the condition at {Path(__file__).name}:" in str(unnamed.value)


def test_every_other_sleep_says_why() -> None:
    """A sleep left in a test is the behaviour under test (a slow endpoint, paced traffic, a
    duration to outlast), and a comment on its line or the line above says so; modules that
    run in virtual time (``autojump_clock``) are exempt."""
    unexplained = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name == "waiting.py" or path == Path(__file__):
            continue
        text = path.read_text(encoding="utf-8")
        if "autojump_clock" in text:
            continue
        lines = text.splitlines()
        for number, line in enumerate(lines, 1):
            if SLEEP.search(line) and "sleep_forever" not in line:
                above = lines[number - 2].strip() if number > 1 else ""
                if "#" not in line and not above.startswith("#"):
                    unexplained.append(f"{path.relative_to(TESTS)}:{number}: {line.strip()}")
    assert not unexplained, "wait for the event (or say why it sleeps):\n" + "\n".join(unexplained)
