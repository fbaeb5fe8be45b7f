"""Ending a child process for good: no child left running, none left as a zombie.

Every starter of child processes (:mod:`lb.workers`, :mod:`lb.rehearse.stack`) stops them
here, on every path: a clean stop, a child that failed to start or become ready, an exception
or a cancellation while starting.  A plain ``kill()`` is not enough: until the parent waits
for it the dead child stays in the process table, and a parent cancelled before it waited
never does.  So the waits are shielded from cancellation, and bounded so that a child stuck
in the kernel cannot hang its parent.
"""

from __future__ import annotations

import trio

__all__ = ["REAP_TIMEOUT", "reap", "stop"]

REAP_TIMEOUT = 5.0
"""Seconds the parent waits for a killed child to be gone (SIGKILL: normally at once)."""


async def reap(process: trio.Process) -> None:
    """Kill ``process`` and wait for it, even while cancelled (bounded)."""
    process.kill()  # a no-op once it has exited
    with trio.CancelScope(shield=True), trio.move_on_after(REAP_TIMEOUT):
        await process.wait()


async def stop(*processes: trio.Process, grace: float) -> None:
    """End ``processes`` together: SIGTERM, up to ``grace`` seconds to exit (a child that
    flushes its log on SIGTERM gets to), then kill whatever is left and wait for it (as
    :func:`reap`, within one ``REAP_TIMEOUT`` for all).  Shielded, so that a cancelled caller
    still ends them."""
    with trio.CancelScope(shield=True):
        try:
            for p in processes:
                if p.returncode is None:
                    p.terminate()
            with trio.move_on_after(grace):
                for p in processes:
                    await p.wait()
        finally:
            # Also on a KeyboardInterrupt, which a shield does not stop: no child outlives
            # this, even if the waits below are cut short too.
            for p in processes:
                p.kill()
            with trio.move_on_after(REAP_TIMEOUT):  # one bound for all, not one each
                for p in processes:
                    await p.wait()
