"""``python -m lb``: the same as the ``tunnel-lb`` command."""

import sys

from lb.lifecycle import defer_signals

defer_signals()  # first: a signal during the imports below is recorded, not a traceback

from lb.cli import main  # noqa: E402

sys.exit(main())
