"""``python -m lb`` and the ``tunnel-lb`` console script (``lb.__main__:main``).

Signals are deferred (:mod:`lb.lifecycle`) before anything else is imported: a SIGTERM or
Ctrl-C while the command modules load is recorded and handled once the command runs, never
a ``KeyboardInterrupt`` traceback out of an import.
"""

import sys

from lb.lifecycle import defer_signals

defer_signals()

from lb.cli import main  # noqa: E402

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
