"""Suite-wide setup: no test binds a fixed port (tests/support/ports_guard/fixed_ports.py),
in this process and in every Python process the tests start."""

from __future__ import annotations

import os
import sys
from pathlib import Path

GUARD = Path(__file__).resolve().parent / "support" / "ports_guard"

sys.path.insert(0, str(GUARD))
import fixed_ports  # noqa: E402

fixed_ports.install()
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(GUARD), *filter(None, [os.environ.get("PYTHONPATH")])]
)
