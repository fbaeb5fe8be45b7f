"""``python -m lb``: the same as the ``tunnel-lb`` command."""

import sys

from lb.cli import main

sys.exit(main())
